"""``UsageLedger``: one row per finished chat request, written in batches off the request path.

``record`` only appends to a list in memory (no I/O, no await). A background task writes what
has gathered every ``flush_s`` seconds in one transaction, together with the keys' last-used
times; a crash therefore loses at most the last ``flush_s`` of rows, and SQLite's WAL journal
keeps the file consistent whatever the moment of the crash (a transaction is all or nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from dataclasses import astuple, dataclass, fields
from typing import Any, Literal

from vlmserve.storage.db import Database, transaction

log = logging.getLogger("vlmserve.storage")

GroupBy = Literal["day", "model", "key"]
TOKEN_COLUMNS = (
    "prompt_tokens",
    "cached_tokens",
    "image_tokens",
    "video_tokens",
    "completion_tokens",
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    created_at: float  # Unix seconds, when the request finished
    key_id: str
    key_name: str
    model: str
    prompt_tokens: int
    cached_tokens: int
    image_tokens: int
    video_tokens: int
    completion_tokens: int
    status: str  # "ok", "aborted", or the error code of a failed request
    trace_id: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


MAX_PENDING_ROWS = 100_000  # while the database cannot be written: memory stays bounded
_NAMES = tuple(f.name for f in fields(UsageRow))
_INSERT = f"INSERT INTO usage ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})"
_GROUPS = {
    "day": "date(created_at, 'unixepoch')",
    "model": "model",
    "key": "key_name",
}


class UsageLedger:
    def __init__(self, db: Database, flush_s: float = 1.0) -> None:
        self._db = db
        self._flush_s = flush_s
        self._rows: list[UsageRow] = []
        self._last_used: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def db(self) -> Database:
        return self._db

    def record(self, row: UsageRow) -> None:
        """Queue ``row`` for the next batch; never blocks."""
        self._rows.append(row)
        self.touch(row.key_id, int(row.created_at))

    def touch(self, key_id: str, when: int) -> None:
        """Note that key ``key_id`` was used at ``when`` (Unix seconds)."""
        if key_id:
            self._last_used[key_id] = when

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_forever(), name="vlmserve-ledger")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> int:
        """Write the queued rows now; how many were written."""
        rows, self._rows = self._rows, []
        last_used, self._last_used = self._last_used, {}
        if not rows and not last_used:
            return 0
        try:
            await self._db.run(lambda conn: _write(conn, rows, last_used))
        except (sqlite3.Error, OSError):
            log.exception("usage ledger: %d rows not written yet, retrying", len(rows))
            self._rows[:0] = rows[-MAX_PENDING_ROWS:]  # kept for the next try, in order
            self._last_used = {**last_used, **self._last_used}
            return 0
        return len(rows)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    async def rows(self, key_id: str | None = None) -> list[UsageRow]:
        """Every written row (of one key), oldest first: for tests and exports."""
        where, args = ("WHERE key_id = ?", (key_id,)) if key_id is not None else ("", ())

        def select(conn: sqlite3.Connection) -> list[UsageRow]:
            query = f"SELECT {', '.join(_NAMES)} FROM usage {where} ORDER BY seq"
            return [UsageRow(*row) for row in conn.execute(query, args)]

        return await self._db.run(select)

    async def totals(
        self,
        key_name: str | None = None,
        since: float | None = None,
        by: GroupBy | None = None,
    ) -> list[dict[str, Any]]:
        """Token and request totals, over all rows or per day / model / key name."""
        conditions: list[str] = []
        args: list[object] = []
        if key_name is not None:
            conditions.append("key_name = ?")
            args.append(key_name)
        if since is not None:
            conditions.append("created_at >= ?")
            args.append(since)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        group = _GROUPS[by] if by else None
        sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in TOKEN_COLUMNS)
        head = f"{group}, " if group else ""
        query = f"SELECT {head}COUNT(*), {sums} FROM usage {where}"
        if group:
            query += f" GROUP BY {group} ORDER BY {group}"

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [_total(row, by) for row in conn.execute(query, args)]

        return await self._db.run(select)

    async def spent(self) -> dict[str, int]:
        """Total tokens (prompt + completion) per key id: what quotas are checked against."""

        def select(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT key_id, SUM(prompt_tokens + completion_tokens) FROM usage GROUP BY key_id"
            )
            return {str(k): int(v) for k, v in rows}

        return await self._db.run(select)


def _write(conn: sqlite3.Connection, rows: list[UsageRow], last_used: dict[str, int]) -> None:
    with transaction(conn):
        conn.executemany(_INSERT, [astuple(row) for row in rows])
        conn.executemany(
            "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            [(t, key_id) for key_id, t in last_used.items()],
        )


def _total(row: tuple[Any, ...], by: GroupBy | None) -> dict[str, Any]:
    values = row[1:] if by else row
    out: dict[str, Any] = {by: row[0]} if by else {}
    out["requests"] = int(values[0])
    out.update({c: int(v) for c, v in zip(TOKEN_COLUMNS, values[1:], strict=True)})
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out
