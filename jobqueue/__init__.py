"""The job queue: the database, its rows and the store that every state change goes through,
the lifecycle, retries, the sweeper and the artifact store."""
