"""Bearer API keys → the caller's ``Identity``; open (anonymous) while no key exists anywhere.

Keys come from two places: the settings' ``api_keys`` / ``admin_api_keys`` (simple set-ups), and
the storage database (``vlmserve keys create``), indexed in memory by their SHA-256 and re-read
every ``key_refresh_s`` (a revoked key stops working within that time); an unknown key triggers a
re-read (shared by the unknown keys that arrive meanwhile), so a new key works at once. Looking
a key up by its hash leaks through timing at most which hashes are near the guess, never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from starlette.requests import Request

from vlmserve.errors import AuthenticationError, PermissionDeniedError
from vlmserve.settings import ServerSettings
from vlmserve.storage.keys import ApiKeyRecord, KeyStore, hash_key

log = logging.getLogger("vlmserve")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: ``id`` owns files and salts the prompt cache ("" when open)."""

    id: str
    name: str
    tier: str | None = None  # None: the configured default tier
    quota_tokens: int | None = None
    is_admin: bool = False


ANONYMOUS = Identity("", "anonymous", is_admin=True)  # no keys anywhere: everyone is the admin


def _settings_identity(key: str, index: int, is_admin: bool) -> Identity:
    # The id of a settings key is its hash's first 16 hex digits, as before keys became data,
    # so files uploaded with it stay its own.
    kind = "admin" if is_admin else "settings"
    return Identity(hash_key(key)[:16], f"{kind}-key-{index + 1}", is_admin=is_admin)


def _identity(record: ApiKeyRecord) -> Identity:
    return Identity(record.id, record.name, record.tier, record.quota_tokens, record.is_admin)


class KeyChecker:
    def __init__(
        self, settings: ServerSettings, store: KeyStore | None = None, refresh_s: float = 2.0
    ) -> None:
        admins = {
            hash_key(k): _settings_identity(k, i, True)
            for i, k in enumerate(settings.admin_api_keys)
        }
        users = {
            hash_key(k): _settings_identity(k, i, False) for i, k in enumerate(settings.api_keys)
        }
        self._static = {**users, **admins}
        self._stored: dict[str, Identity] = {}
        self._store = store
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[None] | None = None

    @property
    def is_open(self) -> bool:
        """No key configured anywhere: every caller is ``ANONYMOUS``."""
        return not self._static and not self._stored

    async def start(self) -> None:
        """Read the stored keys, then re-read them every ``refresh_s`` in the background."""
        await self.refresh()
        if self._store is not None and self._task is None:
            self._task = asyncio.create_task(self._refresh_forever(), name="vlmserve-keys")
        self.announce()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception:  # a locked or broken database must not stop the refreshes
                log.exception("API keys: re-reading the key table failed; keeping the old one")

    async def _reread(self) -> None:
        """One re-read shared by every unknown key that arrives while it runs."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.refresh())
            self._pending.add_done_callback(self._clear_pending)
        await asyncio.shield(self._pending)

    def _clear_pending(self, _: asyncio.Future[None]) -> None:
        self._pending = None

    async def refresh(self) -> None:
        """Re-read the stored keys (the start-up, a timer, an unknown key)."""
        if self._store is not None:
            records = await self._store.live_by_hash()
            self._stored = {h: _identity(r) for h, r in records.items()}

    async def identify(self, request: Request) -> Identity:
        """The caller's identity; raises ``AuthenticationError`` on a missing or unknown key."""
        if self.is_open:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError(
                "Missing API key: send the header 'Authorization: Bearer <API key>'."
            )
        digest = hash_key(key.strip())
        found = self._static.get(digest) or self._stored.get(digest)
        if found is None and self._store is not None:
            await self._reread()  # perhaps created since the last read
            found = self._stored.get(digest)
        if found is None:
            raise AuthenticationError("Invalid API key (unknown or revoked).")
        return found

    def announce(self) -> None:
        """Say at start-up whether the server is open."""
        if self.is_open:
            log.warning(
                "no API keys configured: anyone who reaches this server may use it. Create one "
                "with `vlmserve keys create --name NAME` (or set server.api_keys)"
            )
        else:
            num = len(self._static) + len(self._stored)
            log.info("API keys required (%d keys configured)", num)


def require_admin(identity: Identity, what: str) -> None:
    if not identity.is_admin:
        raise PermissionDeniedError(
            f"{what} needs an admin key (`vlmserve keys create --admin`, or server.admin_api_keys)."
        )
