"""How long an API process acts on what it read of the database without reading it again.

The gate remembers a token's or session's answer this long, the serving layer serves a model
this long between looks at its job's row, and an event stream asks this often whether its
caller may still follow it. So a change made through another API process (a token or session
revoked, a user disabled, a model deleted) takes effect everywhere within it, and at once
through the process that made it. One constant, so the documented bound is one number. Imports
nothing, so that the serving layer, which knows nothing of HTTP, can share it."""

CACHE_SECONDS = 5.0
