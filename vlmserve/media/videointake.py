"""``VideoIntake``: one video part → sampled frames, through the intake's fetcher, pool and cache.

Sources as for images (``data:video/...;base64``, a safe http(s) fetch, ``stepfile://``), with a
video's own limits: one file <= ``VideoPolicy.max_bytes`` (checked before anything is decoded:
from the base64 length, the download's byte cap, the stored file's size), then duration and
pixels from the container header. An uploaded file is decoded straight from disk and cached by
the content hash storage keeps for it, so a conversation that resends it reads nothing.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, BinaryIO, Protocol, TypeVar

from vlmserve.errors import (
    MediaError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedContentError,
)
from vlmserve.media.cache import ImageCache, SingleFlight, TextKey, bytes_key
from vlmserve.media.fetch import SafeFetcher
from vlmserve.media.sniff import sniff_video
from vlmserve.media.sources import (
    DataSource,
    FileSource,
    HttpSource,
    StepFileSource,
    StreamingFileSource,
    decode_data,
    parse_source,
)
from vlmserve.media.types import MediaRef, PreparedVideo, VideoPolicy
from vlmserve.media.video import VideoSizing, check_size, prepare_video, sizing_for, too_large
from vlmserve.settings import MediaSettings

T = TypeVar("T")


class Run(Protocol):
    """Runs a blocking function on the intake's thread pool."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


class VideoIntake:
    def __init__(
        self,
        settings: MediaSettings,
        fetcher: SafeFetcher,
        files: FileSource | None,
        cache: ImageCache,
        run: Run,
    ) -> None:
        self._settings, self._fetcher, self._files = settings, fetcher, files
        self._cache, self._run = cache, run
        self._prepares: SingleFlight[PreparedVideo] = SingleFlight()
        self._fetches: SingleFlight[bytes] = SingleFlight()

    async def prepare(self, ref: MediaRef, policy: VideoPolicy, owner: str) -> PreparedVideo:
        """The sampled video of ``ref``; errors name it ("video 1 (messages[0]...)") and carry
        its position as ``param``."""
        where = f"video {ref.ordinal} ({ref.position})"
        try:
            sizing = sizing_for(policy, self._settings)
            source = parse_source(ref.url, where, kind="video")
            if isinstance(source, DataSource):
                return await self._from_data(source, sizing, where)
            if isinstance(source, StepFileSource):
                return await self._from_file(source, sizing, where, owner)
            return await self._from_url(source, sizing, where)
        except (MediaError, UnsupportedContentError, PayloadTooLargeError) as exc:
            exc.param = ref.position
            raise

    async def _from_data(
        self, source: DataSource, sizing: VideoSizing, where: str
    ) -> PreparedVideo:
        check_size(source.num_bytes, sizing.policy, where)
        return await self._cached(
            TextKey(source.url, sizing),
            lambda: self._run(_decode_and_sample, source, sizing, where),
        )

    async def _from_url(self, source: HttpSource, sizing: VideoSizing, where: str) -> PreparedVideo:
        cap = sizing.policy.max_bytes

        async def fetch() -> bytes:
            return await self._fetcher.fetch(
                source.url,
                where,
                _VideoCap(cap, where),
                lambda head: _sniff_prefix(head, where),
            )

        data = await self._fetches.run((source.url, cap), fetch)
        key = ("video", await self._run(bytes_key, data), sizing)
        return await self._cached(key, lambda: self._run(_sample_bytes, data, sizing, where))

    async def _from_file(
        self, source: StepFileSource, sizing: VideoSizing, where: str, owner: str
    ) -> PreparedVideo:
        files = self._files
        if files is None:
            raise MediaError(
                f"{where}: stepfile:// URLs are not available on this server (no file store); "
                "send the video as an https URL or a data URL",
                code="invalid_video_url",
            )
        if not isinstance(files, StreamingFileSource):
            data = await _open(files.open(source.file_id, owner), source, where)
            key = ("video", await self._run(bytes_key, data), sizing)
            return await self._cached(key, lambda: self._run(_sample_bytes, data, sizing, where))
        record, file = await _open(files.open_stream(source.file_id, owner), source, where)
        handed_over = False

        async def work() -> PreparedVideo:
            nonlocal handed_over
            handed_over = True  # the worker closes it
            return await self._run(_sample_file, file, record.num_bytes, sizing, where)

        try:
            return await self._cached(("video-file", record.sha256, sizing), work)
        finally:
            if not handed_over:
                file.close()

    async def _cached(
        self, key: Hashable, work: Callable[[], Awaitable[PreparedVideo]]
    ) -> PreparedVideo:
        cached = self._cache.get_video(key)
        if cached is not None:
            return cached

        async def prepare() -> PreparedVideo:
            prepared = await work()
            self._cache.put(key, prepared)
            return prepared

        return await self._prepares.run(key, prepare)


def check_count(refs: Sequence[MediaRef], policy: VideoPolicy) -> None:
    if len(refs) <= policy.max_videos:
        return
    raise MediaError(
        f"this request has {len(refs)} videos, but this server accepts at most "
        f"{policy.max_videos} per request. Every video in the whole messages history counts: "
        "replace older videos by short text descriptions of them and send the request again",
        param="messages",
        code="too_many_videos",
    )


class _VideoCap:
    """The byte cap of one video download (``fetch.ByteBudget``)."""

    def __init__(self, limit: int, where: str) -> None:
        self._limit, self._where = limit, where
        self._received = 0

    def check(self, num_bytes: int) -> None:
        if num_bytes > self._limit:
            raise too_large(self._where, f"declares {num_bytes:,} bytes", self._limit)

    def take(self, num_bytes: int) -> None:
        self._received += num_bytes
        if self._received > self._limit:
            raise too_large(self._where, "is larger than that", self._limit)


async def _open(opening: Awaitable[T], source: StepFileSource, where: str) -> T:
    try:
        return await opening
    except (LookupError, NotFoundError):
        raise MediaError(
            f"{where}: stepfile://{source.file_id} does not exist or belongs to another "
            "account; upload the video with POST /v1/files and use the id it returns",
            code="file_not_found",
        ) from None


def _sniff_prefix(head: bytes, where: str) -> None:
    sniff_video(head, where, complete=False)


def _decode_and_sample(source: DataSource, sizing: VideoSizing, where: str) -> PreparedVideo:
    return _sample_bytes(decode_data(source, where), sizing, where)


def _sample_bytes(data: bytes, sizing: VideoSizing, where: str) -> PreparedVideo:
    return prepare_video(io.BytesIO(data), len(data), sizing, where)


def _sample_file(file: BinaryIO, num_bytes: int, sizing: VideoSizing, where: str) -> PreparedVideo:
    with file:
        return prepare_video(file, num_bytes, sizing, where)
