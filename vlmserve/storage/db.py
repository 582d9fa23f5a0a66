"""SQLite for metadata: one WAL connection owned by one thread, and the migration runner.

``Database`` runs every call on its own single worker thread, so SQLite never blocks the event
loop and the writes of one process are serialized; ``BEGIN IMMEDIATE`` plus a busy timeout keeps
several processes over the same file correct. Migrations are ``migrations/NNN_name.sql``, applied
in order, each in one transaction together with its row in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TypeVar

from vlmserve.errors import InternalError

T = TypeVar("T")
MIGRATION_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")
BUSY_TIMEOUT_S = 10.0
_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, full sync."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise InternalError(f"SQLite database {path} cannot use WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock up front, so read-then-write cannot race) … COMMIT;
    ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The ``NNN_name.sql`` files of ``directory`` (default: the packaged ones), by version.

    Versions must be unique and start at 1 without gaps, so a missing file is caught here and
    not in a user's database.
    """
    folder = directory or files(__package__ or "vlmserve.storage").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise InternalError(f"migrations must be numbered 001, 002, ... without gaps: {versions}")
    return found


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    conn.execute(_BOOTSTRAP)
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not applied yet, in order; the versions applied now.

    Idempotent, and safe against another process migrating the same file at the same time: the
    version row is inserted first inside the migration's transaction, so the loser of a race
    fails on the primary key, rolls back, and skips it.
    """
    applied = applied_versions(conn)
    newer = sorted(applied - {m.version for m in migrations})
    if newer:
        raise InternalError(
            f"the database was migrated by a newer vlmserve (schema versions {newer}); "
            "upgrade vlmserve or use another data_dir"
        )
    done: list[int] = []
    for migration in migrations:
        if migration.version not in applied and _apply(conn, migration):
            done.append(migration.version)
    return done


def _apply(conn: sqlite3.Connection, migration: Migration) -> bool:
    # executescript commits any open transaction first, so BEGIN/COMMIT live inside the script.
    record = (
        f"INSERT INTO schema_migrations (version, name) "
        f"VALUES ({migration.version}, '{migration.name}');"  # both checked by MIGRATION_FILE
    )
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{record}\n{migration.sql}\n;COMMIT;")
    except sqlite3.IntegrityError:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return False  # another process applied it first
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise InternalError(
            f"migration {migration.version:03d}_{migration.name}.sql failed: {exc}"
        ) from exc
    return True


class Database:
    """One SQLite file, one connection, one thread: ``run`` hands it a function of the connection.

    The connection is opened lazily on the worker thread by the first ``run`` (and migrated
    there, then ``on_open`` runs), so constructing a ``Database`` touches no disk. If opening
    fails, the next ``run`` tries again.
    """

    def __init__(
        self,
        path: Path,
        migrations: Sequence[Migration] | None = None,
        on_open: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self._migrations = migrations
        self._on_open = on_open
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vlmserve-db")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._open()
        return fn(self._conn)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            migrate(conn, self._migrations if self._migrations is not None else load_migrations())
            if self._on_open is not None:
                self._on_open(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
