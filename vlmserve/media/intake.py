"""``MediaIntake``: the media references of one request → model-ready images, in order.

Limits first (image count over the whole history, bytes of all images), then each image is
resolved (data URL, safe fetch, uploaded file), looked up in the content-addressed cache, and
otherwise prepared on a bounded thread pool; the images of a request run in parallel, identical
concurrent fetches and decodes run once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vlmserve.errors import (
    MediaError,
    NotFoundError,
    PayloadTooLargeError,
    TooManyImagesError,
    UnsupportedContentError,
)
from vlmserve.media.cache import ImageCache, SingleFlight, TextKey, bytes_key
from vlmserve.media.fetch import Resolver, SafeFetcher
from vlmserve.media.image import check_supported
from vlmserve.media.prepare import Sizing, inspect_image, prepare_image, sizing_for
from vlmserve.media.sources import (
    DataSource,
    FileSource,
    HttpSource,
    StepFileSource,
    decode_data,
    parse_data_url,
    parse_source,
)
from vlmserve.media.types import ImagePolicy, MediaRef, PreparedImage, PreparedVideo, VideoPolicy
from vlmserve.media.videointake import VideoIntake, check_count
from vlmserve.settings import MediaSettings

__all__ = ["MediaIntake", "inspect_image"]

T = TypeVar("T")
_MB = 1024 * 1024


class RequestBudget:
    """Bytes of all images of one request (image files after base64 decoding)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, num_bytes: int, where: str) -> None:
        self.used += num_bytes
        if self.used > self.limit:
            raise PayloadTooLargeError(
                f"the images of this request add up to more than {_mb(self.limit)} (reached at "
                f"{where}); all images of a request, history included, may total at most "
                f"{_mb(self.limit)}. Send fewer or smaller images",
            )


class _FetchCap:
    """The byte cap of one download (``fetch.ByteBudget``)."""

    def __init__(self, limit: int, where: str, url: str) -> None:
        self._limit, self._where, self._url = limit, where, url
        self._received = 0

    def check(self, num_bytes: int) -> None:
        if num_bytes > self._limit:
            raise self._too_large(f"declares {_mb(num_bytes)}")

    def take(self, num_bytes: int) -> None:
        self._received += num_bytes
        if self._received > self._limit:
            raise self._too_large("sent more")

    def _too_large(self, what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"{self._where}: the image at this URL {what} than the {_mb(self._limit)} "
            "all images of a request may total; send a smaller image",
        )


class MediaIntake:
    """One per server: the fetcher, the thread pool and the decoded-image cache."""

    def __init__(
        self,
        settings: MediaSettings,
        files: FileSource | None = None,
        *,
        resolver: Resolver | None = None,
        fetcher: SafeFetcher | None = None,  # e.g. one that counts outcomes (api/metrics.py)
    ) -> None:
        self._settings = settings
        self._files = files
        self._fetcher = fetcher or SafeFetcher(settings, resolver)
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="vlmserve-media")
        self._cache = ImageCache(settings.cache_bytes)
        self._prepares: SingleFlight[PreparedImage] = SingleFlight()
        self._fetches: SingleFlight[bytes] = SingleFlight()
        self._videos = VideoIntake(settings, self._fetcher, files, self._cache, self._run)

    @property
    def cache(self) -> ImageCache:
        return self._cache

    async def prepare_images(
        self, refs: Sequence[MediaRef], policy: ImagePolicy, owner: str = ""
    ) -> list[PreparedImage]:
        """The images of ``refs`` (the whole history, in order), prepared under ``policy``.

        Raises ``TooManyImagesError`` (count), ``PayloadTooLargeError`` (bytes of all images),
        ``MediaFetchError`` / ``MediaError`` / ``UnsupportedContentError`` (one image; ``param``
        is its ``position``). Nothing is substituted: any failing image fails the request.
        """
        _check_kinds(refs)
        _check_count(refs, policy)
        budget = RequestBudget(policy.max_total_bytes)
        cached = self._all_cached(refs, policy)
        if cached is not None:  # a later turn resending its history: no task, no thread
            for ref, image in zip(refs, cached, strict=True):
                budget.take(image.num_bytes, f"image {ref.ordinal} ({ref.position})")
            return cached
        tasks = [asyncio.create_task(self._prepare_one(r, policy, owner, budget)) for r in refs]
        return await _in_order(tasks)

    async def prepare_videos(
        self, refs: Sequence[MediaRef], policy: VideoPolicy, owner: str = ""
    ) -> list[PreparedVideo]:
        """The videos of ``refs`` (the whole history, in order), sampled under ``policy``.

        Raises ``MediaError`` (count: ``too_many_videos``; one video: its bytes, duration,
        pixels, a file that does not decode, a decode past the deadline; ``param`` is its
        position), ``MediaFetchError`` and ``UnsupportedContentError``, like images.
        """
        check_count(refs, policy)
        tasks = [asyncio.create_task(self._videos.prepare(r, policy, owner)) for r in refs]
        return await _in_order(tasks)

    async def prepare_media(
        self,
        refs: Sequence[MediaRef],
        images: ImagePolicy,
        videos: VideoPolicy,
        owner: str = "",
    ) -> list[PreparedImage | PreparedVideo]:
        """Images and videos of ``refs`` in order, each under its policy (limits as in
        ``prepare_images`` and ``prepare_videos``); all of them run concurrently."""
        video_refs = [r for r in refs if r.kind == "video"]
        if not video_refs:
            return list(await self.prepare_images(refs, images, owner))
        image_refs = [r for r in refs if r.kind == "image"]
        _check_count(image_refs, images)
        check_count(video_refs, videos)
        budget = RequestBudget(images.max_total_bytes)
        tasks: list[asyncio.Task[PreparedImage | PreparedVideo]] = [
            asyncio.create_task(
                self._videos.prepare(r, videos, owner)
                if r.kind == "video"
                else self._prepare_one(r, images, owner, budget)
            )
            for r in refs
        ]
        return await _in_order(tasks)

    def _all_cached(
        self, refs: Sequence[MediaRef], policy: ImagePolicy
    ) -> list[PreparedImage] | None:
        """Every image of the request from the cache, or None (then the full path runs)."""
        found: list[PreparedImage] = []
        for ref in refs:
            if not ref.url.startswith("data:"):
                return None
            try:
                source = parse_data_url(ref.url, "")
            except (MediaError, UnsupportedContentError):
                return None  # the full path raises it, in order
            hit = self._cache.get(
                TextKey(source.url, sizing_for(policy, ref.detail, self._settings))
            )
            if hit is None:
                return None
            found.append(hit)
        return found

    async def read_image_bytes(self, url: str, policy: ImagePolicy, owner: str = "") -> bytes:
        """The encoded bytes behind an image URL (data:, http(s):, stepfile:), through the same
        checks as chat (for tools such as ``vlmserve inspect-image``)."""
        where = "the image"
        source = parse_source(url, where)
        if isinstance(source, DataSource):
            return decode_data(source, where)
        return await self._read(source, where, owner, policy)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()

    async def _prepare_one(
        self, ref: MediaRef, policy: ImagePolicy, owner: str, budget: RequestBudget
    ) -> PreparedImage:
        where = f"image {ref.ordinal} ({ref.position})"
        try:
            sizing = sizing_for(policy, ref.detail, self._settings)
            source = parse_source(ref.url, where)
            if isinstance(source, DataSource):
                return await self._from_data(source, sizing, where, budget)
            data = await self._read(source, where, owner, policy)
            budget.take(len(data), where)
            return await self._from_bytes(data, sizing, where)
        except (MediaError, UnsupportedContentError, PayloadTooLargeError) as exc:
            exc.param = ref.position  # the part to fix, whichever layer noticed
            raise

    async def _from_data(
        self, source: DataSource, sizing: Sizing, where: str, budget: RequestBudget
    ) -> PreparedImage:
        budget.take(source.num_bytes, where)
        key = TextKey(source.url, sizing)
        cached = self._cache.get(key)
        if cached is not None:
            return cached

        async def work() -> PreparedImage:
            prepared = await self._run(_decode_and_prepare, source, sizing, where)
            self._cache.put(key, prepared)
            return prepared

        return await self._prepares.run(key, work)

    async def _from_bytes(self, data: bytes, sizing: Sizing, where: str) -> PreparedImage:
        key = ("bytes", await self._run(bytes_key, data), sizing)
        cached = self._cache.get(key)
        if cached is not None:
            return cached

        async def work() -> PreparedImage:
            prepared = await self._run(prepare_image, data, sizing, where)
            self._cache.put(key, prepared)
            return prepared

        return await self._prepares.run(key, work)

    async def _read(
        self, source: HttpSource | StepFileSource, where: str, owner: str, policy: ImagePolicy
    ) -> bytes:
        if isinstance(source, StepFileSource):
            return await self._open_file(source, where, owner)
        cap = policy.max_total_bytes

        async def fetch() -> bytes:
            return await self._fetcher.fetch(
                source.url,
                where,
                _FetchCap(cap, where, source.url),
                lambda head: _sniff_or_refuse(head, where),
            )

        return await self._fetches.run((source.url, cap), fetch)

    async def _open_file(self, source: StepFileSource, where: str, owner: str) -> bytes:
        if self._files is None:
            raise MediaError(
                f"{where}: stepfile:// URLs are not available on this server (no file store); "
                "send the image as a data URL or an https URL",
                code="invalid_image_url",
            )
        try:
            return await self._files.open(source.file_id, owner)
        except (LookupError, NotFoundError):
            raise MediaError(
                f"{where}: stepfile://{source.file_id} does not exist or belongs to another "
                "account; upload the image with POST /v1/files and use the id it returns",
                code="file_not_found",
            ) from None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))


def _decode_and_prepare(source: DataSource, sizing: Sizing, where: str) -> PreparedImage:
    return prepare_image(decode_data(source, where), sizing, where)


def _sniff_or_refuse(head: bytes, where: str) -> None:
    check_supported(head, where)


def _check_kinds(refs: Sequence[MediaRef]) -> None:
    for ref in refs:
        if ref.kind != "image":
            raise UnsupportedContentError(
                f"{ref.position} is a {ref.kind} part; only image parts are prepared here",
                param=ref.position,
            )


def _check_count(refs: Sequence[MediaRef], policy: ImagePolicy) -> None:
    if len(refs) <= policy.max_images:
        return
    raise TooManyImagesError(
        f"this request has {len(refs)} images, but this model accepts at most "
        f"{policy.max_images} per request. Every image in the whole messages history counts, "
        "earlier turns included: replace older images by short text descriptions of them (or "
        "start a new conversation) and send the request again",
        param="messages",
    )


async def _in_order(tasks: list[asyncio.Task[T]]) -> list[T]:
    """All results in order. On a failure, later images are cancelled and earlier ones finish,
    so the error reported is always the earliest failing image's (stable for a request)."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = _first_failed(tasks)
        if failed is None:
            return [t.result() for t in tasks]
        await _cancel(tasks[failed + 1 :])
        await asyncio.wait(tasks[:failed] or tasks[failed:])
    except asyncio.CancelledError:
        await _cancel(tasks)
        raise
    first = _first_failed(tasks)
    assert first is not None
    raise tasks[first].exception()  # type: ignore[misc]


def _first_failed(tasks: list[asyncio.Task[T]]) -> int | None:
    for i, task in enumerate(tasks):
        if task.done() and not task.cancelled() and task.exception() is not None:
            return i
    return None


async def _cancel(tasks: list[asyncio.Task[T]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / _MB:.4g} MB"
