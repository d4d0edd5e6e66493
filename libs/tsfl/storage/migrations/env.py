"""Alembic environment: run with a connection handed over by :mod:`tsfl.storage.migrate`."""

from alembic import context

from tsfl.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("tsfl migrations run through tsfl.storage.migrate, with a connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
