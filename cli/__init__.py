"""`tricklab`: the command line, a client of the HTTP API (it never touches the database)."""
