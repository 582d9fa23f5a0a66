"""A bounded, content-addressed LRU of prepared images, and single-flight for work in progress.

Keys are content, never names: the hash of the image's bytes plus the sizing, so an image repeated
in a later turn of a conversation costs a lookup. For data URLs the key is built from the base64
text without decoding it: a cheap fingerprint picks the candidate, and a full comparison of the
text (a memcmp) confirms it, so a crafted fingerprint collision can never return another image.
Used from the event loop only (no locks).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from vlmserve.media.types import PreparedImage

T = TypeVar("T")
_SAMPLES = 64  # pieces of the text hashed for a data URL's fingerprint
_SAMPLE_LEN = 256


def bytes_key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def text_fingerprint(text: str) -> bytes:
    """A cheap fingerprint of a long base64 text: its length, both ends and evenly spaced pieces.
    Not collision resistant on its own; ``ImageCache`` confirms a hit by comparing the text."""
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


@dataclass(slots=True)
class _Entry:
    value: PreparedImage
    text: str | None  # the data URL's base64 text, when the key is a fingerprint
    num_bytes: int


class ImageCache:
    """Prepared images by content key, bounded by ``max_bytes`` (pixels plus any kept text)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._num_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, text: str | None = None) -> PreparedImage | None:
        entry = self._entries.get(key)
        if entry is None or entry.text != text:  # str equality is a length check + memcmp
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.value

    def put(self, key: Hashable, value: PreparedImage, text: str | None = None) -> None:
        width, height = value.size
        size = width * height * 3 + (len(text) if text is not None else 0) + 512
        if size > self._max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._num_bytes -= old.num_bytes
        self._entries[key] = _Entry(value, text, size)
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
