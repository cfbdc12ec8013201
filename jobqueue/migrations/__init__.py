"""The schema's history as Alembic revisions, numbered; `jobqueue.db.init_db` applies them."""
