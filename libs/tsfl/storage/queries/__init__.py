"""The SQL of the store, as plain functions over a synchronous connection: one module per
table or domain (jobs, admin, rounds, participants, checkpoints, privacy_ledger, robust,
devices, audit; common holds the timestamp and row counts).

:class:`~tsfl.storage.store.Store` runs them directly on SQLite (in-process, no
thread hop) and through ``AsyncConnection.run_sync`` on PostgreSQL (asyncpg), so
both deployments execute the very same statements.
"""
