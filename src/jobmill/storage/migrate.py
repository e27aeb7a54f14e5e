"""Schema migrations through Alembic, driven from code (no alembic.ini needed).

Alembic is imported only when there is something to migrate: a server whose database is
already at the newest revision (``HEAD``, the number of the newest file under
``migrations/versions``) does not carry it in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from jobmill.storage.tables import metadata

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = max(path.name.split("_")[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))
"""The newest revision: each migration's revision id is its file's number."""


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def current(engine: Engine) -> str | None:
    """The database's revision, or None (an empty database, or one Alembic never stamped)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision``."""
    if revision in ("head", HEAD) and current(engine) == HEAD:
        return
    from alembic import command

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def pending_differences(engine: Engine) -> list[object]:
    """Differences between the models and the migrated database (empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))
