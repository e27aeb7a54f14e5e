"""The Alembic migrations and the models in tables.py agree, and migrations go both ways."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Integer, MetaData, String, inspect, text

from jobmill.domain.jobs import JobFilter, NewJob, utcnow
from jobmill.storage import migrate
from jobmill.storage.db import make_engine
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import metadata

pytestmark = pytest.mark.empty_db  # these tests migrate the database themselves

TABLES = {"jobs", "events", "tokens", "data_conditions"}
TABLES |= {"experiment_definitions", "experiment_runs", "experiment_applications"}
TABLES |= {"rules", "rule_firings", "rule_cursors"}
TABLES |= {"job_tags"}
TABLES |= {"experiments"}
TABLES |= {"job_links"}
TABLES |= {"pipeline_jobs", "pipeline_events", "pipeline_nonces"}
TABLES |= {"engine_leases"}
TABLES |= {"web_sessions", "web_signin_links"}
TABLES |= {"idempotency_keys"}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    db = make_engine(db_url)
    try:
        yield db
    finally:
        db.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head(engine: Engine) -> str:
    heads = ScriptDirectory.from_config(migrate.alembic_config(engine)).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    return heads[0]


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_models_and_migrations_agree(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert current_revision(engine) == head(engine)
    assert table_names(engine) == TABLES == set(metadata.tables)
    differences = migrate.pending_differences(engine)
    assert differences == [], (
        "tables.py and the Alembic migrations differ; add a migration under "
        f"storage/migrations/versions: {differences}"
    )


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    assert current_revision(engine) == head(engine)
    assert migrate.pending_differences(engine) == []


def test_empty_database_differs_from_the_models(engine: Engine) -> None:
    differences = migrate.pending_differences(engine)
    added = {
        diff[1].name for diff in differences if isinstance(diff, tuple) and diff[0] == "add_table"
    }
    assert added == TABLES


def _models_with(change: str) -> MetaData:
    """A copy of the models with one change a migration would be needed for."""
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    jobs = changed.tables["jobs"]
    if change == "column":
        jobs.append_column(Column("priority", Integer, nullable=True))
    elif change == "table":
        from sqlalchemy import Table

        Table("notes", changed, Column("id", Integer, primary_key=True), Column("text", String(10)))
    elif change == "index":
        index = next(ix for ix in jobs.indexes if [c.name for c in ix.columns] == ["run_id"])
        jobs.indexes.discard(index)
    elif change == "type":
        jobs.c.owner.type = String(200)
    elif change == "nullable":
        jobs.c.node.nullable = False
    return changed


@pytest.mark.parametrize("change", ["column", "table", "index", "type", "nullable"])
def test_a_model_change_without_migration_is_detected(
    engine: Engine, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the agreement test catches: models changed in tables.py but not migrated."""
    migrate.upgrade(engine)
    monkeypatch.setattr(migrate, "metadata", _models_with(change))
    assert migrate.pending_differences(engine) != []


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    migrate.upgrade(engine)
    store = JobStore(engine)
    new = NewJob(
        type="t",
        owner="o",
        parameters={},
        executor="local",
        execution_duration=0,
        destruction_at=utcnow(),
        reason="capacity",
    )
    store.create([new], actor="o")
    store.tokens.add("o", "secret", admin=False)

    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert table_names(engine) == set()

    migrate.upgrade(engine)
    assert current_revision(engine) == head(engine)
    assert table_names(engine) == TABLES
    assert migrate.pending_differences(engine) == []
    assert store.count() == 0 and not store.tokens.has_any()
    store.create([new], actor="o")
    assert store.require(new.id).owner == "o"


def test_every_revision_steps_down_and_up(engine: Engine) -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config(engine))
    revisions = [rev.revision for rev in script.walk_revisions("base", "heads")][::-1]
    assert revisions, "no migrations"
    for revision in revisions:
        migrate.upgrade(engine, revision)
        assert current_revision(engine) == revision
    for revision in reversed(revisions):
        down = script.get_revision(revision).down_revision
        downgrade(engine, down if isinstance(down, str) else "base")
    assert table_names(engine) == set()
    migrate.upgrade(engine)
    assert migrate.pending_differences(engine) == []


def test_a_deleted_jobs_history_survives_and_goes_on_downgrade(engine: Engine) -> None:
    """From 0007 on, events have no foreign key to jobs: deleting a job keeps them. Going back
    to 0006 removes the history of deleted jobs, which its key cannot hold."""
    migrate.upgrade(engine)
    store = JobStore(engine)
    kept, gone = (
        NewJob(type="t", owner="o", parameters={}, executor="local", execution_duration=0,
               destruction_at=utcnow(), reason="capacity")
        for _ in range(2)
    )  # fmt: skip
    store.create([kept, gone], actor="o")
    store.delete(gone.id, actor="o")
    assert [e.name for e in store.events(gone.id)] == ["created", "deleted"]
    downgrade(engine, "0006")
    assert store.events(gone.id) == []
    assert [e.name for e in store.events(kept.id)] == ["created"]
    migrate.upgrade(engine)
    assert migrate.pending_differences(engine) == []


def test_tags_get_their_jobs_seq_on_upgrade(engine: Engine) -> None:
    """0013 copies each job's ``seq`` into its tags (the order of a list by tag)."""
    migrate.upgrade(engine, "0012")
    now = utcnow()
    with engine.begin() as conn:
        for job_id in ("a", "b", "c"):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, type, owner, phase, parameters, extra_parameters, "
                    "report, executor, created_at, updated_at, execution_duration, event_count) "
                    "VALUES (:id, 't', 'o', 'COMPLETED', '{}', '{}', '{}', 'local', :now, :now, "
                    "0, 1)"
                ),
                {"id": job_id, "now": now},
            )
        conn.execute(
            text("INSERT INTO job_tags (job_id, tag) VALUES ('a', 'x'), ('c', 'x'), ('c', 'y')")
        )
        seqs = dict(conn.execute(text("SELECT id, seq FROM jobs")).all())
    migrate.upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job_id, tag, seq FROM job_tags ORDER BY job_id, tag"))
        assert [tuple(row) for row in rows] == [
            ("a", "x", seqs["a"]),
            ("c", "x", seqs["c"]),
            ("c", "y", seqs["c"]),
        ]
    assert migrate.pending_differences(engine) == []
    assert [job.id for job in JobStore(engine).list(JobFilter(tag="x"))] == ["c", "a"]


def test_head_is_the_newest_files_number_and_a_database_at_head_needs_no_alembic(
    engine: Engine, db_url: str
) -> None:
    assert migrate.HEAD == head(engine)
    assert migrate.current(engine) is None  # empty
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.HEAD
    # A server opening a database at head does not load Alembic (about 10 MiB at rest).
    code = (
        "import sys\n"
        "from jobmill.storage import migrate\n"
        "from jobmill.storage.db import make_engine\n"
        f"migrate.upgrade(make_engine({db_url!r}))\n"
        "assert 'alembic' not in sys.modules, 'alembic was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
