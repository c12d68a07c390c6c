"""Apply the numbered SQL files in ``service/migrations`` in order, once each.

Applied versions are recorded in ``pipeline.schema_migrations``. An advisory lock makes
concurrent ``migrate`` runs (several tasks starting at once) safe: the second waits, then finds
nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import structlog

from service.db import Database

log = structlog.get_logger()

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x45444349  # "EDCI": any constant shared by every migrating process


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("service.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrate(db: Database) -> list[int]:
    """Apply pending migrations; return the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    with db.transaction() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS pipeline")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS pipeline.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM pipeline.schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for migration in available_migrations():
            if migration.version in done:
                continue
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO pipeline.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
            log.info("migrate.applied", version=migration.version, name=migration.name)
    return applied_now


def pending_migrations(db: Database) -> list[int]:
    """Versions not yet applied; the worker refuses to start while any are pending."""
    with db.transaction() as cur:
        cur.execute("SELECT to_regclass('pipeline.schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        done: set[int] = set()
        if row and row[0]:
            cur.execute("SELECT version FROM pipeline.schema_migrations")
            done = {r[0] for r in cur.fetchall()}
    return [m.version for m in available_migrations() if m.version not in done]
