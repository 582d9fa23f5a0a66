"""What the ``vlmserve keys`` and ``vlmserve usage`` commands do, over the storage database.

The CLI reaches storage through here (the layering: ``cli`` → ``api``), with the same settings
(``data_dir``, tiers) as the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from vlmserve.errors import InvalidRequestError
from vlmserve.settings import Settings
from vlmserve.storage.keys import KeyStore
from vlmserve.storage.usage import GroupBy, UsageLedger

T = TypeVar("T")


def _with_store(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = KeyStore.at(settings.storage.data_dir)
        try:
            return await work(store)
        finally:
            await store.db.close()

    return asyncio.run(run())


def create_key(
    settings: Settings, name: str, tier: str | None, quota_tokens: int | None, is_admin: bool
) -> tuple[dict[str, Any], str]:
    """A new key's record and the key itself (printed once, never stored)."""
    if tier is not None and tier not in settings.limits.all_tiers:
        known = ", ".join(sorted(settings.limits.all_tiers))
        raise InvalidRequestError(f"--tier {tier!r} is not a tier; known tiers: {known}")
    record, key = _with_store(settings, lambda s: s.create(name, tier, quota_tokens, is_admin))
    return _shown(settings, asdict(record)), key


def list_keys(settings: Settings, include_revoked: bool) -> list[dict[str, Any]]:
    records = _with_store(settings, lambda s: s.list(include_revoked))
    return [_shown(settings, asdict(r)) for r in records]


def revoke_key(settings: Settings, name_or_id: str) -> dict[str, Any]:
    return _shown(settings, asdict(_with_store(settings, lambda s: s.revoke(name_or_id))))


def usage_totals(
    settings: Settings, key_name: str | None, since: str | None, by: GroupBy | None
) -> list[dict[str, Any]]:
    start = parse_since(since)
    return _with_store(settings, lambda s: UsageLedger(s.db).totals(key_name, start, by))


def _shown(settings: Settings, row: dict[str, Any]) -> dict[str, Any]:
    row["tier"] = row["tier"] or f"{settings.limits.default_tier} (default)"
    return row


def parse_since(text: str | None) -> float | None:
    """``2026-12-01`` (a UTC day) or an ISO 8601 time → Unix seconds."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"since: {text!r} is not a date; use YYYY-MM-DD or an ISO 8601 time.", param="since"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
