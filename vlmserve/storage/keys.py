"""``KeyStore``: API keys as rows, of which only the key's SHA-256 is ever written.

A key is ``sk-`` followed by 43 URL-safe characters: 256 random bits from ``secrets``. A plain
SHA-256 is the right hash for it. Slow, salted password hashes (bcrypt, argon2) exist because
human passwords are guessable; a 256-bit random key is not, so inverting its SHA-256 means a 2^256
search whatever the hash's speed. A fast hash lets the server check a key on every request in a
microsecond and find it by an index lookup (a per-row salt would forbid that).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from vlmserve.errors import InvalidRequestError, NotFoundError
from vlmserve.storage.db import Database, transaction

KEY_PREFIX = "sk-"
ID_PREFIX = "key_"
_COLUMNS = "id, name, key_hint, tier, quota_tokens, is_admin, created_at, last_used_at, revoked_at"


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str  # the key's public id: owner of its files, prompt-cache tenant, ledger key
    name: str
    hint: str  # the first and last characters, to recognise a key in a list
    tier: str | None  # None: the configured default tier
    quota_tokens: int | None  # None: no quota
    is_admin: bool
    created_at: int  # Unix seconds
    last_used_at: int | None = None
    revoked_at: int | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 32 bytes = 256 bits


def _hint(key: str) -> str:
    return f"{key[:7]}...{key[-4:]}"


def _record(row: tuple[object, ...]) -> ApiKeyRecord:
    id_, name, hint, tier, quota, admin, created, used, revoked = row
    return ApiKeyRecord(
        str(id_),
        str(name),
        str(hint),
        None if tier is None else str(tier),
        None if quota is None else int(str(quota)),
        bool(admin),
        int(str(created)),
        None if used is None else int(str(used)),
        None if revoked is None else int(str(revoked)),
    )


class KeyStore:
    """The ``api_keys`` table of the storage database (shared with files and usage)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def at(cls, data_dir: Path) -> KeyStore:
        return cls(Database(data_dir.expanduser() / "vlmserve.db"))

    @property
    def db(self) -> Database:
        return self._db

    async def create(
        self,
        name: str,
        tier: str | None = None,
        quota_tokens: int | None = None,
        is_admin: bool = False,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key: its record and the key itself (shown once: only its hash is stored)."""
        if not name.strip():
            raise InvalidRequestError("a key needs a non-empty --name", param="name")
        key = new_key()
        record = ApiKeyRecord(
            ID_PREFIX + secrets.token_hex(8),
            name.strip(),
            _hint(key),
            tier,
            quota_tokens,
            is_admin,
            int(time.time()),
        )

        def insert(conn: sqlite3.Connection) -> None:
            try:
                with transaction(conn):
                    conn.execute(
                        "INSERT INTO api_keys (id, name, key_hash, key_hint, tier, quota_tokens,"
                        " is_admin, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record.id,
                            record.name,
                            hash_key(key),
                            record.hint,
                            tier,
                            quota_tokens,
                            int(is_admin),
                            record.created_at,
                        ),
                    )
            except sqlite3.IntegrityError:
                raise InvalidRequestError(
                    f"a live key named {record.name!r} exists; revoke it or pick another name",
                    param="name",
                ) from None

        await self._db.run(insert)
        return record, key

    async def list(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"

        def select(conn: sqlite3.Connection) -> list[ApiKeyRecord]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at")
            return [_record(row) for row in rows]

        return await self._db.run(select)

    async def live_by_hash(self) -> dict[str, ApiKeyRecord]:
        """Every live key by its hash (the server's in-memory index)."""

        def select(conn: sqlite3.Connection) -> dict[str, ApiKeyRecord]:
            rows = conn.execute(
                f"SELECT key_hash, {_COLUMNS} FROM api_keys WHERE revoked_at IS NULL"
            )
            return {str(row[0]): _record(row[1:]) for row in rows}

        return await self._db.run(select)

    async def revoke(self, name_or_id: str) -> ApiKeyRecord:
        """Revoke the live key with this name or id; raises ``NotFoundError`` if none."""

        def update(conn: sqlite3.Connection) -> ApiKeyRecord:
            with transaction(conn):
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM api_keys WHERE (name = ? OR id = ?)"
                    " AND revoked_at IS NULL",
                    (name_or_id, name_or_id),
                ).fetchone()
                if row is None:
                    raise NotFoundError(f"no live key named {name_or_id!r}")
                now = int(time.time())
                conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, row[0]))
            return _record((*row[:-1], now))

        return await self._db.run(update)

    async def touch(self, last_used: dict[str, int]) -> None:
        """Record when keys (by id) were last used; the server batches this with the ledger."""

        def update(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(
                    "UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                    [(t, key_id) for key_id, t in last_used.items()],
                )

        if last_used:
            await self._db.run(update)
