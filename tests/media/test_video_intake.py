"""MediaIntake for videos: sources (data URL, safe fetch, uploaded file), order with images,
limits over the request, the decoded-video cache and single-flight."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

import pytest

from tests.media.images import data_url as image_data_url
from tests.media.images import encode as encode_image
from tests.media.images import gradient
from tests.media.videos import encode
from vlmserve.errors import MediaError, MediaFetchError, UnsupportedContentError
from vlmserve.media.intake import MediaIntake
from vlmserve.media.types import ImagePolicy, MediaRef, PreparedImage, PreparedVideo, VideoPolicy
from vlmserve.settings import MediaSettings

pytestmark = pytest.mark.anyio
CLIP = encode("MP4", seconds=2.0)
POLICY = VideoPolicy(frame_edge=32)
IMAGES = ImagePolicy(low_longest_edge=32, high_longest_edge=64)


def video_url(data: bytes = CLIP, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def ref(url: str, n: int = 1, kind: str = "video") -> MediaRef:
    part = "video_url" if kind == "video" else "image_url"
    return MediaRef(url, kind, f"messages[{n - 1}].content[0].{part}.url", n)  # type: ignore[arg-type]


@pytest.fixture
async def intake() -> AsyncIterator[MediaIntake]:
    media = MediaIntake(MediaSettings(allow_loopback=True))
    yield media
    await media.close()


@dataclass(frozen=True)
class Record:
    sha256: str
    num_bytes: int


class StreamingFiles:
    """A ``StreamingFileSource``: counts whole reads and opened streams, and what was closed."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files
        self.reads = 0
        self.streams: list[io.BytesIO] = []

    async def open(self, file_id: str, owner: str) -> bytes:
        self.reads += 1
        return self.files[(file_id, owner)]

    async def open_stream(self, file_id: str, owner: str) -> tuple[Record, BinaryIO]:
        data = self.files[(file_id, owner)]
        stream = io.BytesIO(data)
        self.streams.append(stream)
        return Record(f"sha-{file_id}", len(data)), stream


async def test_data_url_video_is_sampled(intake: MediaIntake) -> None:
    [video] = await intake.prepare_videos([ref(video_url())], POLICY)
    assert len(video.frames) == 2 and video.timestamps == (0.0, 1.0) and video.size == (32, 24)


async def test_same_video_again_is_a_cache_hit(intake: MediaIntake) -> None:
    first = (await intake.prepare_videos([ref(video_url())], POLICY))[0]
    again = (await intake.prepare_videos([ref(video_url())], POLICY))[0]
    assert again is first
    other = (await intake.prepare_videos([ref(video_url())], VideoPolicy(frame_edge=16)))[0]
    assert other is not first and other.size == (16, 12)


async def test_concurrent_requests_for_one_video_decode_it_once(
    intake: MediaIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmserve.media import video

    calls = 0
    real = video.prepare_video

    def counting(*args: object) -> PreparedVideo:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("vlmserve.media.videointake.prepare_video", counting)
    url = video_url(encode("MP4", seconds=1.0))
    results = await asyncio.gather(*(intake.prepare_videos([ref(url)], POLICY) for _ in range(4)))
    assert calls == 1 and len({id(r[0]) for r in results}) == 1


async def test_images_and_videos_come_back_in_the_order_of_refs(intake: MediaIntake) -> None:
    png = image_data_url(encode_image(gradient(40, 30), "PNG"), "image/png")
    refs = [ref(png, 1, "image"), ref(video_url(), 1), ref(png, 2, "image")]
    items = await intake.prepare_media(refs, IMAGES, POLICY)
    assert [type(i) for i in items] == [PreparedImage, PreparedVideo, PreparedImage]


async def test_too_many_videos_counts_the_history(intake: MediaIntake) -> None:
    refs = [ref(video_url(), n) for n in range(1, 4)]
    with pytest.raises(MediaError, match="at most 2") as caught:
        await intake.prepare_videos(refs, VideoPolicy(max_videos=2))
    assert caught.value.code == "too_many_videos" and caught.value.param == "messages"


async def test_data_url_over_the_byte_limit_is_refused_before_decoding(intake: MediaIntake) -> None:
    with pytest.raises(MediaError, match="at most") as caught:
        await intake.prepare_videos([ref(video_url())], VideoPolicy(max_bytes=100))
    assert caught.value.code == "video_too_large"
    assert caught.value.param == "messages[0].content[0].video_url.url"


async def test_image_data_url_in_a_video_part_is_refused(intake: MediaIntake) -> None:
    with pytest.raises(UnsupportedContentError, match="image_url"):
        await intake.prepare_videos([ref(video_url(mime="image/png"))], POLICY)


async def test_corrupt_video_names_its_part(intake: MediaIntake) -> None:
    with pytest.raises(MediaError) as caught:
        await intake.prepare_videos([ref(video_url(CLIP[: len(CLIP) // 2]), 2)], POLICY)
    assert caught.value.param == "messages[1].content[0].video_url.url"
    assert "video 2" in caught.value.message


async def test_uploaded_video_is_decoded_from_a_stream_and_cached_by_its_hash() -> None:
    files = StreamingFiles({("file-1", "alice"): CLIP})
    media = MediaIntake(MediaSettings(), files=files)
    try:
        [first] = await media.prepare_videos([ref("stepfile://file-1")], POLICY, owner="alice")
        [again] = await media.prepare_videos([ref("stepfile://file-1")], POLICY, owner="alice")
        assert again is first and len(first.frames) == 2
        assert files.reads == 0 and all(stream.closed for stream in files.streams)
        with pytest.raises(MediaError, match="does not exist or belongs to another") as caught:
            await media.prepare_videos([ref("stepfile://file-1")], POLICY, owner="bob")
        assert caught.value.code == "file_not_found"
    finally:
        await media.close()


async def test_stepfile_without_a_file_store_is_a_400(intake: MediaIntake) -> None:
    with pytest.raises(MediaError, match="not available on this server"):
        await intake.prepare_videos([ref("stepfile://file-1")], POLICY)


ROUTES = {"/clip.mp4": CLIP, "/page.html": b"<!DOCTYPE html><html>" + b"x" * 100}


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = ROUTES.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_video_url_is_fetched_safely_and_sniffed(intake: MediaIntake, origin: str) -> None:
    [video] = await intake.prepare_videos([ref(origin + "/clip.mp4")], POLICY)
    assert len(video.frames) == 2
    with pytest.raises(UnsupportedContentError, match="HTML"):
        await intake.prepare_videos([ref(origin + "/page.html")], POLICY)
    with pytest.raises(MediaError, match="at most"):
        await intake.prepare_videos([ref(origin + "/clip.mp4")], VideoPolicy(max_bytes=1000))


async def test_private_addresses_are_refused_for_videos_too(origin: str) -> None:
    media = MediaIntake(MediaSettings())  # the default: loopback is not public
    try:
        with pytest.raises(MediaFetchError, match="not a public"):
            await media.prepare_videos([ref(origin + "/clip.mp4")], POLICY)
    finally:
        await media.close()
