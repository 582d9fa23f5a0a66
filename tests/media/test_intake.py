"""MediaIntake: limits over the whole request, order, parallelism, caching and single-flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from tests.media.conftest import ImageServer
from tests.media.images import data_url, encode, gradient
from vlmserve.errors import (
    MediaError,
    MediaFetchError,
    PayloadTooLargeError,
    TooManyImagesError,
    UnsupportedContentError,
)
from vlmserve.media.intake import MediaIntake
from vlmserve.media.prepare import prepare_image
from vlmserve.media.types import ImagePolicy, MediaRef
from vlmserve.settings import MediaSettings

pytestmark = pytest.mark.anyio
PNG = encode(gradient(40, 30), "PNG")
PATCH = "vlmserve.media.intake.prepare_image"
POLICY = ImagePolicy(low_longest_edge=32, high_longest_edge=64)


def ref(url: str, n: int = 1, detail: str = "auto") -> MediaRef:
    return MediaRef(url, "image", f"messages[{n - 1}].content[0].image_url.url", n, detail)  # type: ignore[arg-type]


@pytest.fixture
async def intake() -> AsyncIterator[MediaIntake]:
    media = MediaIntake(MediaSettings(allow_loopback=True, fetch_read_timeout_s=1.0))
    yield media
    await media.close()


class Files:
    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files

    async def open(self, file_id: str, owner: str) -> bytes:
        return self.files[(file_id, owner)]


async def test_results_come_in_the_order_of_refs(intake: MediaIntake) -> None:
    urls = [data_url(encode(gradient(10 + i, 10), "PNG")) for i in range(6)]
    prepared = await intake.prepare_images([ref(u, i + 1) for i, u in enumerate(urls)], POLICY)
    assert [p.size[0] for p in prepared] == [10 + i for i in range(6)]


async def test_too_many_images_counts_the_history_and_suggests_descriptions(
    intake: MediaIntake,
) -> None:
    refs = [ref(data_url(PNG), i + 1) for i in range(4)]
    with pytest.raises(TooManyImagesError, match="whole messages history") as info:
        await intake.prepare_images(refs, ImagePolicy(max_images=3))
    assert "text descriptions" in info.value.message and "at most 3" in info.value.message
    assert info.value.param == "messages" and info.value.status == 400


async def test_total_bytes_of_all_images_are_limited(intake: MediaIntake) -> None:
    refs = [ref(data_url(PNG), i + 1) for i in range(3)]
    policy = ImagePolicy(max_total_bytes=len(PNG) * 2 + 10)
    with pytest.raises(PayloadTooLargeError, match="add up to more than") as info:
        await intake.prepare_images(refs, policy)
    assert info.value.status == 413 and info.value.param and "messages[" in info.value.param
    assert len(await intake.prepare_images(refs[:2], policy)) == 2


async def test_side_limit_names_the_image_and_its_position(intake: MediaIntake) -> None:
    refs = [ref(data_url(PNG), 1), ref(data_url(encode(gradient(300, 10), "PNG")), 2)]
    with pytest.raises(MediaError, match=r"image 2 \(messages\[1\].*300x10") as info:
        await intake.prepare_images(refs, ImagePolicy(max_side=256))
    assert info.value.param == "messages[1].content[0].image_url.url"


async def test_the_earliest_failing_image_is_reported(intake: MediaIntake) -> None:
    refs = [ref(data_url(PNG), 1), ref("data:image/png;base64,!!!!", 2), ref("ftp://x", 3)]
    with pytest.raises(MediaError) as info:
        await intake.prepare_images(refs, POLICY)
    assert info.value.param == "messages[1].content[0].image_url.url"


async def test_unsupported_content_carries_the_position(intake: MediaIntake) -> None:
    bmp = encode(gradient(8, 8), "BMP")
    with pytest.raises(UnsupportedContentError, match="BMP") as info:
        await intake.prepare_images([ref(data_url(bmp, "image/png"), 1)], POLICY)
    assert info.value.param == "messages[0].content[0].image_url.url"


async def test_repeated_image_in_a_later_turn_is_served_from_the_cache(
    intake: MediaIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = data_url(encode(gradient(400, 300), "JPEG"), "image/jpeg")
    first = await intake.prepare_images([ref(url)], POLICY)
    calls: list[object] = []
    monkeypatch.setattr(PATCH, lambda *a: calls.append(a))
    again = await intake.prepare_images([ref((url + "#")[:-1]), ref(url, 2)], POLICY)  # new str
    assert not calls
    assert again[0] is first[0] and again[1] is first[0]


async def test_cache_keys_on_sizing_too(intake: MediaIntake) -> None:
    url = data_url(encode(gradient(400, 300), "PNG"))
    low, high = await intake.prepare_images([ref(url, 1, "low"), ref(url, 2, "high")], POLICY)
    assert low.size == (32, 24) and high.size == (64, 48)
    assert low.identity != high.identity


async def test_identical_concurrent_decodes_run_once(
    intake: MediaIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    gate = threading.Event()

    def counting(*args: object) -> object:
        calls.append(args)
        gate.wait(5)
        return prepare_image(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(PATCH, counting)
    url = data_url(PNG)
    batch = [intake.prepare_images([ref(url)], POLICY) for _ in range(5)]
    tasks = [asyncio.ensure_future(b) for b in batch]
    await asyncio.sleep(0.2)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert len(calls) == 1
    assert len({r[0].identity for r in results}) == 1


async def test_http_images_are_fetched_once_when_requested_together(
    intake: MediaIntake, image_server: ImageServer
) -> None:
    before = len(image_server.requests)
    url = image_server.url("/img.png")
    prepared = await intake.prepare_images([ref(url, i + 1) for i in range(4)], POLICY)
    assert len(image_server.requests) - before == 1
    assert {p.format for p in prepared} == {"PNG"}


async def test_fetched_html_is_unsupported_content(
    intake: MediaIntake, image_server: ImageServer
) -> None:
    with pytest.raises(UnsupportedContentError, match="HTML page") as info:
        await intake.prepare_images([ref(image_server.url("/html-as-png"))], POLICY)
    assert info.value.param == "messages[0].content[0].image_url.url"


async def test_fetch_failure_is_a_400_naming_the_url_position(
    intake: MediaIntake, image_server: ImageServer
) -> None:
    with pytest.raises(MediaFetchError, match="HTTP 503") as info:
        await intake.prepare_images([ref(image_server.url("/status/503"), 2)], POLICY)
    assert info.value.status == 400 and info.value.retryable
    assert info.value.param == "messages[1].content[0].image_url.url"


async def test_endless_download_is_cut_at_the_request_byte_limit(
    intake: MediaIntake, image_server: ImageServer
) -> None:
    with pytest.raises(PayloadTooLargeError):
        await intake.prepare_images(
            [ref(image_server.url("/endless"))], ImagePolicy(max_total_bytes=500_000)
        )


async def test_default_settings_never_fetch_loopback(image_server: ImageServer) -> None:
    media = MediaIntake(MediaSettings())
    before = len(image_server.requests)
    with pytest.raises(MediaFetchError, match="refused"):
        await media.prepare_images([ref(image_server.url("/img.png"))], POLICY)
    assert len(image_server.requests) == before
    await media.close()


async def test_stepfile_reads_the_owners_upload() -> None:
    media = MediaIntake(MediaSettings(), Files({("file-1", "alice"): PNG}))
    [prepared] = await media.prepare_images([ref("stepfile://file-1")], POLICY, owner="alice")
    assert prepared.format == "PNG"
    with pytest.raises(MediaError, match="does not exist or belongs to another") as info:
        await media.prepare_images([ref("stepfile://file-1")], POLICY, owner="bob")
    assert info.value.status == 400 and info.value.code == "file_not_found"
    await media.close()


async def test_stepfile_without_a_file_store_is_a_400(intake: MediaIntake) -> None:
    with pytest.raises(MediaError, match="not available on this server"):
        await intake.prepare_images([ref("stepfile://file-1")], POLICY)


async def test_video_parts_are_refused_here(intake: MediaIntake) -> None:
    video = MediaRef("https://example.com/v.mp4", "video", "messages[0].content[0]", 1)
    with pytest.raises(UnsupportedContentError):
        await intake.prepare_images([video], POLICY)
