"""Persistence through SQLAlchemy 2: SQLite embedded, PostgreSQL (asyncpg) distributed."""

from tsfl.storage.states import RoundState, StoreError
from tsfl.storage.store import Store

__all__ = ["RoundState", "Store", "StoreError"]
