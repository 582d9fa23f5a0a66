"""Per-key rate limits (concurrency, RPM, TPM) and token quotas, in memory.

Limits count chat completions (the model calls). RPM and TPM are exact sliding windows: at most
``rpm`` requests, and ``tpm`` tokens, in any 60 seconds. A request takes a concurrency slot and a
request entry when admitted; once its prompt is counted it reserves ``prompt_tokens + max_tokens``
(every choice) in the token window, and the reservation is corrected to the real usage when it
ends. Every check-and-take runs without an ``await`` in between, on the one event loop, so the
limits hold exactly however many requests arrive together.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from vlmserve.errors import QuotaExceededError, RateLimitError
from vlmserve.settings import LimitsSettings, TierSettings

log = logging.getLogger("vlmserve")

WINDOW_S = 60.0
Headers = list[tuple[bytes, bytes]]


class _Entry:
    __slots__ = ("amount", "at")

    def __init__(self, at: float, amount: int) -> None:
        self.at = at
        self.amount = amount


@dataclass(slots=True)
class _Window:
    """What was taken in the last ``WINDOW_S`` seconds, oldest first, and its sum."""

    entries: deque[_Entry] = field(default_factory=deque)
    total: int = 0

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self.entries and self.entries[0].at <= horizon:
            self.total -= self.entries.popleft().amount

    def take(self, now: float, amount: int) -> _Entry:
        entry = _Entry(now, amount)
        self.entries.append(entry)
        self.total += amount
        return entry

    def adjust(self, entry: _Entry, amount: int, now: float) -> None:
        """Correct ``entry`` to ``amount``, if it still counts."""
        self.prune(now)
        if entry.at > now - WINDOW_S:
            self.total += amount - entry.amount
            entry.amount = amount

    def drop(self, entry: _Entry) -> None:
        """Forget ``entry`` (a refused request)."""
        try:
            self.entries.remove(entry)
        except ValueError:
            return  # already out of the window
        self.total -= entry.amount

    def wait_for(self, now: float, need: int, limit: int) -> float:
        """Seconds until ``need`` more fits under ``limit`` (0: it fits now)."""
        excess = self.total + need - limit
        if excess <= 0:
            return 0.0
        for entry in self.entries:
            excess -= entry.amount
            if excess <= 0:
                return entry.at + WINDOW_S - now
        return WINDOW_S

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest counted entry leaves the window (0: empty)."""
        return self.entries[0].at + WINDOW_S - now if self.entries else 0.0


@dataclass(slots=True)
class KeyState:
    tier: TierSettings
    in_flight: int = 0
    requests: _Window = field(default_factory=_Window)
    tokens: _Window = field(default_factory=_Window)

    def headers(self, now: float) -> Headers:
        """OpenAI's ``x-ratelimit-*`` headers, for the limits this key has."""
        out: Headers = []
        for kind, limit, window in (
            ("requests", self.tier.rpm, self.requests),
            ("tokens", self.tier.tpm, self.tokens),
        ):
            if limit is None:
                continue
            window.prune(now)
            out += [
                (b"x-ratelimit-limit-" + kind.encode(), str(limit).encode()),
                (
                    b"x-ratelimit-remaining-" + kind.encode(),
                    str(max(0, limit - window.total)).encode(),
                ),
                (b"x-ratelimit-reset-" + kind.encode(), duration(window.reset_in(now)).encode()),
            ]
        return out


class Admission:
    """One admitted request's hold on its key's limits; ``release`` exactly once at the end."""

    def __init__(
        self, limiter: RateLimiter, key_id: str, state: KeyState, entry: _Entry | None
    ) -> None:
        self._limiter = limiter
        self._key_id = key_id
        self._state = state
        self._request = entry
        self._reserved: _Entry | None = None
        self._released = False

    @property
    def has_tpm(self) -> bool:
        return self._state.tier.tpm is not None

    def reserve(self, tokens: int, now: float) -> None:
        """Reserve ``tokens`` in the TPM window, or refuse (and give the request entry back)."""
        limit = self._state.tier.tpm
        if limit is None:
            return
        window = self._state.tokens
        window.prune(now)
        if window.total + tokens > limit:
            if self._request is not None:  # a refused request is not counted
                self._state.requests.drop(self._request)
            if tokens > limit:
                raise RateLimitError(
                    f"This request needs {tokens} tokens (prompt plus max_tokens), more than "
                    f"your key's limit of {limit} tokens per minute: lower max_tokens or "
                    "shorten the prompt.",
                    retry_after_s=WINDOW_S,
                    limit="tpm",
                )
            wait = window.wait_for(now, tokens, limit)
            raise RateLimitError(
                f"Rate limit reached: tokens per minute (TPM) {limit}, {window.total} used in "
                f"the last minute, this request needs {tokens} (prompt plus max_tokens). "
                f"Retry in {wait:.1f} s, or lower max_tokens.",
                retry_after_s=wait,
                limit="tpm",
            )
        self._reserved = window.take(now, tokens)

    def release(self, used_tokens: int, now: float) -> None:
        """The request ended having used ``used_tokens`` (prompt + completion): correct the
        reservation, free the concurrency slot, count the tokens against the quota."""
        if self._released:
            return
        self._released = True
        self._state.in_flight -= 1
        if self._reserved is not None:
            self._state.tokens.adjust(self._reserved, used_tokens, now)
        self._limiter.spend(self._key_id, used_tokens)


class RateLimiter:
    def __init__(self, settings: LimitsSettings) -> None:
        self._tiers = settings.all_tiers
        self._default_tier = settings.default_tier
        self._states: dict[str, KeyState] = {}
        self._spent: dict[str, int] = {}

    def load_spent(self, spent: dict[str, int]) -> None:
        """Tokens each key used before this process started (from the ledger)."""
        for key_id, tokens in spent.items():
            self._spent[key_id] = self._spent.get(key_id, 0) + tokens

    def spend(self, key_id: str, tokens: int) -> None:
        self._spent[key_id] = self._spent.get(key_id, 0) + tokens

    def spent(self, key_id: str) -> int:
        return self._spent.get(key_id, 0)

    def state(self, key_id: str, tier: str | None) -> KeyState:
        name = tier or self._default_tier
        tier_settings = self._tiers.get(name)
        if tier_settings is None:  # a stored key's tier no longer in the settings
            log.warning("key %s: tier %r is not in the settings; using the default", key_id, name)
            tier_settings = self._tiers[name] = self._tiers[self._default_tier]  # warned once
        state = self._states.get(key_id)
        if state is None or state.tier is not tier_settings:
            state = self._states[key_id] = KeyState(tier_settings)
        return state

    def admit(
        self, key_id: str, tier: str | None, quota_tokens: int | None, now: float
    ) -> Admission:
        """Take a concurrency slot and a request entry, or raise 429 saying which limit."""
        if quota_tokens is not None and self.spent(key_id) >= quota_tokens:
            raise QuotaExceededError(
                f"Your key's token quota ({quota_tokens} tokens) is used up "
                f"({self.spent(key_id)} used); ask the server's admin for a new quota or key."
            )
        state = self.state(key_id, tier)
        limits = state.tier
        if limits.concurrency is not None and state.in_flight >= limits.concurrency:
            raise RateLimitError(
                f"Rate limit reached: concurrency {limits.concurrency} (requests in progress "
                "for your key). Retry when one of them ends.",
                retry_after_s=1.0,
                limit="concurrency",
            )
        if limits.rpm is not None:
            state.requests.prune(now)
            if state.requests.total >= limits.rpm:
                wait = state.requests.reset_in(now)
                raise RateLimitError(
                    f"Rate limit reached: requests per minute (RPM) {limits.rpm}. "
                    f"Retry in {wait:.1f} s.",
                    retry_after_s=wait,
                    limit="rpm",
                )
        # Unlimited RPM: nothing recorded (the window would only grow).
        entry = state.requests.take(now, 1) if limits.rpm is not None else None
        state.in_flight += 1
        return Admission(self, key_id, state, entry)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"1.5s"``, ``"1m30s"``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s"
