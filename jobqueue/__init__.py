"""The job queue: the database, its tables and their migrations, and its verbs, a module per
concern: the job lifecycle (store), claims, counts, accounts, studies, reads and retention."""
