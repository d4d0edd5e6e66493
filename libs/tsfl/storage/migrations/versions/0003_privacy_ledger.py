"""privacy ledger: ε spent after each released round

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("epsilon", sa.Float, nullable=False),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("mechanism", sa.String(32), nullable=False),
        sa.Column("noise_multiplier", sa.Float),
        sa.Column("sampling_rate", sa.Float, nullable=False),
        sa.Column("clip_norm", sa.Float),
        sa.Column("accountant", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.UniqueConstraint("job_id", "round", name="uq_privacy_ledger_job_round"),
    )


def downgrade() -> None:
    op.drop_table("privacy_ledger")
