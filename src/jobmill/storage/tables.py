"""The schema. Alembic migrations under ``migrations/`` must match it (a test checks)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("type", String(64), nullable=False),
    Column("owner", String(128), nullable=False),
    Column("run_id", String(256)),
    Column("phase", String(16), nullable=False),
    Column("reason", String(64)),
    Column("parameters", JSON, nullable=False),
    Column("extra_parameters", JSON, nullable=False),
    Column("report", JSON, nullable=False),
    Column("executor", String(32), nullable=False),
    Column("native_id", String(128)),
    Column("node", String(128)),
    Column("exit_code", Integer),
    Column("error", Text),
    Column("token_hash", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("destruction_at", DateTime(timezone=True)),
    Column("execution_duration", Integer, nullable=False),
    Column("parent_id", String(36)),
    Column("log_dir", Text),
    Column("event_count", Integer, nullable=False),
    # The engine's claim: QUEUED jobs of one executor with one reason, oldest first.
    Index(None, "phase", "executor", "reason", "seq"),
    Index(None, "owner", "seq"),
    Index(None, "type", "seq"),
    # Job lists filtered by phase (UWS ``PHASE=EXECUTING&LAST=100``), newest first.
    Index(None, "type", "phase", "seq"),
    Index(None, "run_id"),
    Index(None, "created_at"),
)

# No foreign key to ``jobs``: a deleted job's events stay, closed by its ``deleted`` event (the
# audit trail outlives the job; see ``JobStore.delete``).
events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), nullable=False),
    Column("n", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("name", String(32), nullable=False),
    Column("from_phase", String(16)),
    Column("to_phase", String(16)),
    Column("actor", String(128), nullable=False),
    Column("data", JSON, nullable=False),
    UniqueConstraint("job_id", "n"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(128), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("admin", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("note", Text),
    Column("expires_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

data_conditions = Table(
    "data_conditions",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("paths", JSON, nullable=False),
    Column("mode", String(8), nullable=False),
    Column("marker", Boolean, nullable=False),
    Column("stable_seconds", Float),
    Column("timeout", Float),
    Column("deadline", DateTime(timezone=True)),
    Column("key_hash", String(64), unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
    Column("released_by", Text),
)
"""What a job waiting for data waits for (see ``storage.conditions``)."""

experiment_definitions = Table(
    "experiment_definitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment", String(32), nullable=False),
    Column("name", String(32), nullable=False),
    Column("executable", Text, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("executor", String(32), nullable=False),
    Column("autorun", Boolean, nullable=False),
    Column("autorun_by", String(128)),
    Column("autorun_at", DateTime(timezone=True)),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("experiment", "name"),
)
"""ARP batch definitions (see ``storage.experiments``)."""

experiment_runs = Table(
    "experiment_runs",
    metadata,
    Column("experiment", String(32), primary_key=True),
    Column("run", Integer, primary_key=True, autoincrement=False),
    Column("parameters", JSON, nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
)
"""Runs of experiments, as their starts and ends were posted."""

experiment_applications = Table(
    "experiment_applications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment", String(32), nullable=False),
    Column("run", Integer, nullable=False),
    Column("definition", String(32), nullable=False),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="SET NULL")),
    Column("trigger", String(16), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True)),
    Column("removed_by", String(128)),
    UniqueConstraint("experiment", "run", "definition"),
    Index(None, "job_id"),
)
"""A definition applied to a run: at most one row, hence one job, per (experiment, run,
definition); written in the transaction that creates its job."""

rules = Table(
    "rules",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("source", String(8), nullable=False),
    Column("definition", JSON),
    Column("enabled", Boolean, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
"""Rules created through the API (``source`` "api", with their definition), and the switch of
a rule declared in a rules file (``source`` "file", no definition) once it was flipped."""

rule_firings = Table(
    "rule_firings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule", String(64), nullable=False),
    Column("key", String(1024), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="SET NULL")),
    Column("error", Text),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("rule", "key"),
    Index(None, "job_id"),
)
"""Each firing of a rule: at most one row, hence one job, per (rule, key); written in the
transaction that creates its job (see ``storage.rules``)."""

rule_cursors = Table(
    "rule_cursors",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("seq", Integer, nullable=False),
)
"""How far job rules have read the events table (shared by every jobmill process)."""
