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
    # Dependencies and sub-jobs (``storage.links``): how many of the job's parents have not
    # completed, what it does when one fails, how many of its sub-jobs have not ended, and
    # which step it runs (null: its main step; "subjobs": it created sub-jobs; "epilog").
    Column("upstream_pending", Integer, nullable=False, server_default="0"),
    Column("on_parent_failure", String(8)),
    Column("children_pending", Integer, nullable=False, server_default="0"),
    Column("stage", String(8)),
    # The engine's claim: QUEUED jobs of one executor with one reason, oldest first.
    Index(None, "phase", "executor", "reason", "seq"),
    Index(None, "owner", "seq"),
    Index(None, "type", "seq"),
    # Job lists filtered by phase (UWS ``PHASE=EXECUTING&LAST=100``), newest first.
    Index(None, "type", "phase", "seq"),
    # Native lists by phase, and by phase for one user (whose lists always name the owner).
    Index(None, "phase", "seq"),
    Index(None, "owner", "phase", "seq"),
    Index(None, "run_id"),
    Index(None, "created_at"),
    Index(None, "parent_id"),  # a job's sub-jobs
    Index(None, "token_hash"),  # who a job token is (a running job creating sub-jobs)
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
    Column("attempt", Integer, nullable=False, server_default="1"),
    UniqueConstraint("experiment", "run", "definition", "attempt"),
    Index(None, "job_id"),
)
"""A definition applied to a run: one row, hence one job, per (experiment, run, definition,
attempt); written in the transaction that creates its job. Attempt 1 is the first (autorun only
ever makes that one); re-applying adds the next, and the run view shows the latest."""

experiments = Table(
    "experiments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
"""The numeric id of each experiment (ARP's ``batches_status/<experiment_id>``), given when
its first definition or run is recorded."""

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

job_links = Table(
    "job_links",
    metadata,
    Column("child", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("parent", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Index(None, "parent"),
)
"""Dependencies: ``child`` runs once ``parent`` has completed (see ``storage.links``)."""

job_tags = Table(
    "job_tags",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    # The job's ``seq`` (written with the tag): jobs with a tag (``GET /api/v1/jobs?tag=``)
    # newest first from the index, without reading ``jobs``; the key serves a job's own tags.
    Column("seq", Integer, nullable=False),
    Index(None, "tag", "seq"),
)
"""Free-form labels on jobs (``jobmill tags``; see ``storage.tags``)."""

pipeline_jobs = Table(
    "pipeline_jobs",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("curation", String(16)),
    Column("last_event", String(16), nullable=False),
    Column("token_hash", String(64)),
    Column("indexer_job", String(36)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("fingerprint", String(36)),
    Column("superseded_by", String(36)),
    Index(None, "indexer_job"),
    # One job per fingerprint: two creates of the same job racing each other cannot both win.
    Index(None, "fingerprint", unique=True),
)
"""PipelineJobs: the curation status of a job (None while its phase says its state), its last
event, the hash of its update token (None once revoked), its indexer job, and its fingerprint
(a UUID5 of what makes it the same job; handed over to a re-run, then ``superseded_by`` names
the new job; see ``storage.pipelinejobs``)."""

# No foreign key to ``jobs``, like ``events``: the history outlives a deleted job.
pipeline_events = Table(
    "pipeline_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), nullable=False),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("name", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("data", JSON, nullable=False),
    Index(None, "job_id", "seq"),
)
"""A PipelineJob's history ``{date, name, data, uuid}``, written in the transaction of its
change; the event's uuid is unique, so a delivery repeated is recorded once."""

pipeline_nonces = Table(
    "pipeline_nonces",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("nonce_hash", String(64), nullable=False, unique=True),
    Column("events", JSON, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Index(None, "job_id"),
)
"""Nonces: URL credentials (``x-nonce``) for one PipelineJob's listed events, until they
expire or are revoked; stored hashed (see ``storage.pipelinejobs``)."""

engine_leases = Table(
    "engine_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(256), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("acquired_at", Float, nullable=False),
)
"""Which process runs the engine of each executor (``engine:<executor>``): the holder renews
its row before ``expires_at`` (seconds since the epoch); another takes it over once it has
expired, or at once when the holder is a dead process of its own host (``storage.leases``)."""

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("token_id", Integer, ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False),
    Column("user", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index(None, "expires_at"),
    Index(None, "token_id"),
)
"""Signed-in browsers of the web pages, shared by every process of a site: the SHA-256 of the
cookie's random id, and the token row it was opened with (never the token); times in seconds
since the epoch (see ``storage.web_sessions``)."""

web_signin_links = Table(
    "web_signin_links",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("token_id", Integer, ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", Float, nullable=False),
    Index(None, "expires_at"),
)
"""Unused one-time sign-in links (``jobmill serve`` prints one): the SHA-256 of the code and
the token row it signs in with; a redeem deletes the row, so one request wins."""

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("owner", String(128), nullable=False),
    Column("key", String(200), nullable=False),
    Column("job_id", String(36), nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("job_ids", Text),  # a batch's: every id, as a JSON list, in order
    UniqueConstraint("owner", "key"),
    Index(None, "created_at"),
)
"""The ``Idempotency-Key`` of a job creation: (owner, key) names the job it created (a batch:
its first job, and every one in ``job_ids``) and the SHA-256 of the request; written in the
jobs' own transaction, kept 24 hours; times in seconds since the epoch (see
``storage.idempotency``)."""
