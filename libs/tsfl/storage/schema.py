"""Table definitions (the live model; migrations in ``migrations/versions`` create them)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("spec_sha256", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Column("layout", JSON),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    Column("enrollment_hash", String(64)),
    Column("owner", String(128)),  # the admin identity that submitted it (0007)
)

rounds = Table(
    "rounds", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("model_version", Integer, nullable=False),
    Column("cohort_size", Integer, nullable=False, server_default="0"),
    Column("accepted", Integer, nullable=False, server_default="0"),
    Column("rejected", Integer, nullable=False, server_default="0"),
    Column("metrics", JSON),
    Column("population", Integer),  # devices the cohort was sampled from (0006)
    Column("opened_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
    UniqueConstraint("job_id", "number", name="uq_rounds_job_number"),
)

participants = Table(
    "participants", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("client_id", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("num_examples", BigInteger),
    Column("bytes_up", BigInteger),
    Column("score", Float),
    Column("metrics", JSON),
    Column("updated_at", String(40), nullable=False),
    UniqueConstraint("job_id", "round", "client_id", name="uq_participants_job_round_client"),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("layout_digest", String(32), nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("strategy_state", LargeBinary),
    Column("created_at", String(40), nullable=False),
    Column("sealed", LargeBinary),  # HE: the encrypted coordinates' sum (0005)
    Column("outcome", JSON),  # accepted / rejected / examples / loss: operators only (0006)
    UniqueConstraint("job_id", "version", name="uq_checkpoints_job_version"),
)

audit_events = Table(
    "audit_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("job_id", "seq", name="uq_audit_job_seq"),
)

devices = Table(
    "devices", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", String(256), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("traits", JSON),
    Column("registered_at", String(40), nullable=False),
    Column("last_seen", String(40), nullable=False),
    UniqueConstraint("job_id", "device_id", name="uq_devices_job_device"),
)

robust_state = Table(
    "robust_state", metadata,
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("round", Integer, nullable=False),  # the round this state is the input to
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", String(40), nullable=False),
)

privacy_ledger = Table(
    "privacy_ledger", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("round", Integer, nullable=False),
    Column("epsilon", Float, nullable=False),  # cumulative, after this round
    Column("delta", Float, nullable=False),
    Column("mechanism", String(32), nullable=False),
    Column("noise_multiplier", Float),
    Column("sampling_rate", Float, nullable=False),
    Column("clip_norm", Float),
    Column("accountant", String(16), nullable=False),
    Column("details", JSON),
    Column("created_at", String(40), nullable=False),
    UniqueConstraint("job_id", "round", name="uq_privacy_ledger_job_round"),
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),  # viewer | submitter | operator
    Column("salt", String(64), nullable=False),
    Column("hash", String(128), nullable=False),  # scrypt(secret, salt), hex
    Column("created_at", String(40), nullable=False),
    Column("revoked_at", String(40)),
)
