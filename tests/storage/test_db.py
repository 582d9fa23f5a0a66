"""The migration runner and the connection settings of ``storage.db``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vlmserve.errors import InternalError
from vlmserve.storage.db import applied_versions, connect, load_migrations, migrate


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r[0] for r in rows} - {"sqlite_sequence"}


def test_migrations_apply_in_version_order_and_are_recorded(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            "002_add_color.sql": "ALTER TABLE things ADD COLUMN color TEXT;",
            "001_things.sql": "CREATE TABLE things (id INTEGER PRIMARY KEY, owner TEXT);",
            "README.md": "not a migration",
        },
    )
    conn = connect(tmp_path / "db.sqlite")
    assert migrate(conn, load_migrations(folder)) == [1, 2]
    assert applied_versions(conn) == {1, 2}
    conn.execute("INSERT INTO things (owner, color) VALUES ('a', 'red')")


def test_migrating_again_applies_nothing(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (owner TEXT);"})
    path = tmp_path / "db.sqlite"
    assert migrate(connect(path), load_migrations(folder)) == [1]
    # a second process start: same file, new connection
    assert migrate(connect(path), load_migrations(folder)) == []
    assert migrate(connect(path), load_migrations(folder)) == []


def test_new_migration_is_applied_on_top_of_an_old_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    first = {"001_t.sql": "CREATE TABLE t (owner TEXT);"}
    migrate(connect(path), load_migrations(write_migrations(tmp_path / "m", first)))
    second = {**first, "002_u.sql": "CREATE TABLE u (owner TEXT);"}
    conn = connect(path)
    assert migrate(conn, load_migrations(write_migrations(tmp_path / "m", second))) == [2]
    assert tables(conn) == {"schema_migrations", "t", "u"}


def test_failed_migration_leaves_no_half_applied_schema(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        {
            "001_ok.sql": "CREATE TABLE ok (owner TEXT);",
            "002_broken.sql": "CREATE TABLE half (owner TEXT);\nCREATE TABLE nonsense (;",
        },
    )
    conn = connect(tmp_path / "db.sqlite")
    with pytest.raises(InternalError, match="002_broken"):
        migrate(conn, load_migrations(folder))
    assert applied_versions(conn) == {1}
    assert "half" not in tables(conn)
    assert not conn.in_transaction


def test_gap_in_migration_numbers_is_refused(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "SELECT 1;", "003_c.sql": "SELECT 1;"})
    with pytest.raises(InternalError, match="without gaps"):
        load_migrations(folder)


def test_database_of_a_newer_vlmserve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    two = {"001_a.sql": "CREATE TABLE a (owner TEXT);", "002_b.sql": "CREATE TABLE b (x);"}
    migrate(connect(path), load_migrations(write_migrations(tmp_path / "new", two)))
    one = {"001_a.sql": "CREATE TABLE a (owner TEXT);"}
    with pytest.raises(InternalError, match="newer vlmserve"):
        migrate(connect(path), load_migrations(write_migrations(tmp_path / "old", one)))


def test_connection_uses_wal(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_every_packaged_table_has_an_owner_column(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite")
    migrate(conn, load_migrations())
    # api_keys is the table of owners itself (its id is the owner of the other rows).
    data_tables = tables(conn) - {"schema_migrations", "api_keys"}
    assert {"files", "usage"} <= data_tables
    owner_columns = {"files": "owner", "usage": "key_id"}
    for table in data_tables:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        assert owner_columns.get(table, "owner") in columns, table
