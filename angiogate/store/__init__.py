"""What the gate keeps: the verdict log in SQL and the durable spool on disk.

schema: the tables (the one place they are defined); db: connecting,
migrating, telling an outage from a refusal; ledger: every read and write
of the log the roles make; spool: received files, written durably, named
safely; migrations: Alembic.
"""
