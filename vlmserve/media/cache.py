"""A bounded, content-addressed LRU of prepared images, and single-flight for work in progress.

Keys are content, never names: the hash of the image's bytes plus the sizing, so an image repeated
in a later turn of a conversation costs a lookup. For data URLs the key is the base64 text itself
(``TextKey``), never decoded: a cheap fingerprint hashes it, and a full comparison of the text (a
memcmp) confirms a match, so a crafted fingerprint collision can never return another image.
Used from the event loop only (no locks).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from vlmserve.media.types import PreparedImage, PreparedVideo

T = TypeVar("T")
_SAMPLES = 32  # pieces of the text hashed for a data URL's fingerprint
_SAMPLE_LEN = 256


def bytes_key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def text_fingerprint(text: str) -> bytes:
    """A cheap fingerprint of a long base64 text: its length, both ends and evenly spaced pieces.
    Not collision resistant on its own; ``TextKey`` confirms equality by comparing the text."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(len(text).to_bytes(8, "little"))
    if len(text) <= _SAMPLES * _SAMPLE_LEN * 2:
        digest.update(text.encode("ascii", "replace"))
        return digest.digest()
    step = (len(text) - _SAMPLE_LEN) // (_SAMPLES - 1)
    for i in range(_SAMPLES):
        start = i * step
        digest.update(text[start : start + _SAMPLE_LEN].encode("ascii", "replace"))
    return digest.digest()


class TextKey:
    """A dictionary key for a long text (a data URL) plus the sizing: hashed by a sampled
    fingerprint (microseconds, where hashing 5 MB of text would take milliseconds on the event
    loop) and equal only when the whole text is equal (a memcmp)."""

    __slots__ = ("_hash", "fingerprint", "sizing", "text")

    def __init__(self, text: str, sizing: Hashable) -> None:
        self.text = text
        self.sizing = sizing
        self.fingerprint = text_fingerprint(text)
        self._hash = hash((self.fingerprint, sizing))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TextKey)
            and self._hash == other._hash
            and self.fingerprint == other.fingerprint
            and self.sizing == other.sizing
            and self.text == other.text
        )


@dataclass(slots=True)
class _Entry:
    key: Hashable  # the stored key: re-finding it is an identity check, not another memcmp
    value: PreparedImage | PreparedVideo
    num_bytes: int


class ImageCache:
    """Prepared images and sampled videos by content key, LRU, bounded by ``max_bytes`` (pixels
    plus key text): one budget for all decoded media."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._num_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> PreparedImage | None:
        value = self._get(key)
        return value if isinstance(value, PreparedImage) else None

    def get_video(self, key: Hashable) -> PreparedVideo | None:
        value = self._get(key)
        return value if isinstance(value, PreparedVideo) else None

    def _get(self, key: Hashable) -> PreparedImage | PreparedVideo | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(entry.key)
        self.hits += 1
        return entry.value

    def put(self, key: Hashable, value: PreparedImage | PreparedVideo) -> None:
        width, height = value.size
        frames = len(value.frames) if isinstance(value, PreparedVideo) else 1
        size = (
            width * height * 3 * frames + 512 + (len(key.text) if isinstance(key, TextKey) else 0)
        )
        if size > self._max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._num_bytes -= old.num_bytes
        self._entries[key] = _Entry(key, value, size)
        self._num_bytes += size
        while self._num_bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._num_bytes -= evicted.num_bytes

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._num_bytes = 0


class SingleFlight(Generic[T]):
    """Concurrent calls with the same key share one run of the work (fetches, decodes)."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        while (running := self._running.get(key)) is not None:
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not running.cancelled() or (task is not None and task.cancelling()):
                    raise
                # the caller that ran the work was cancelled, not us: run it ourselves
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
        except BaseException as exc:
            _settle(future, exc)
            raise
        finally:
            self._running.pop(key, None)
        future.set_result(result)
        return result


def _settle(future: asyncio.Future[T], exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
        return
    future.set_exception(exc)
    future.exception()  # mark it retrieved: waiters are optional, no "never retrieved" warning
