"""Secret cohorts: a round's outcome stays in the database (never in a released model
frame), and each round keeps the population its cohort was sampled from (the ledger's
sampling rate)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("outcome", sa.JSON, nullable=True))
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("population", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("population")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("outcome")
