"""The safe fetcher: SSRF refusals with the default settings (no server needed: the refusal comes
before any connection), and a loopback server for everything that needs real HTTP."""

from __future__ import annotations

import asyncio

import httpcore
import pytest

from tests.media.conftest import PNG, ImageServer
from vlmserve.errors import (
    MediaFetchError,
    OverloadedError,
    PayloadTooLargeError,
    UnsupportedContentError,
)
from vlmserve.media import fetch
from vlmserve.media.fetch import SafeFetcher
from vlmserve.settings import MediaSettings

pytestmark = pytest.mark.anyio
WHERE = "image 1 (messages[0].content[0].image_url.url)"


class Unlimited:
    def check(self, num_bytes: int) -> None:
        pass

    def take(self, num_bytes: int) -> None:
        pass


class Cap:
    def __init__(self, limit: int) -> None:
        self.limit, self.got = limit, 0

    def check(self, num_bytes: int) -> None:
        if num_bytes > self.limit:
            raise PayloadTooLargeError("declared too much")

    def take(self, num_bytes: int) -> None:
        self.got += num_bytes
        if self.got > self.limit:
            raise PayloadTooLargeError("sent too much")


def resolver_to(*addresses: str) -> fetch.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


async def must_not_resolve(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should have been refused without a DNS lookup")


def loopback(**overrides: object) -> MediaSettings:
    values: dict[str, object] = {"allow_loopback": True, "fetch_read_timeout_s": 0.5}
    values.update(overrides)
    return MediaSettings(**values)  # type: ignore[arg-type]


NON_PUBLIC_LITERALS = [
    "127.0.0.1",
    "127.1",  # short form
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0177.0.0.1",  # octal
    "0x7f.0.0.1",
    "127.0.0.1.",  # trailing dot
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "0.0.0.0",
    "224.0.0.1",  # multicast
    "255.255.255.255",
    "240.0.0.1",  # reserved
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "[::1]",
    "[::]",
    "[fe80::1]",  # link-local
    "[fc00::1]",  # unique local
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[ff02::1]",  # multicast
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:169.254.169.254]",
    "[::ffff:a00:1]",  # mapped 10.0.0.1 in hex
    "[::127.0.0.1]",  # IPv4-compatible
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[64:ff9b:1::1]",  # local-use NAT64
    "[2001:db8::1]",  # documentation
    "[2001::1]",  # Teredo
]


@pytest.mark.parametrize("host", NON_PUBLIC_LITERALS)
async def test_ssrf_refuses_every_non_public_literal_by_default(host: str) -> None:
    fetcher = SafeFetcher(MediaSettings(), resolver=must_not_resolve)
    with pytest.raises(MediaFetchError, match="refused") as info:
        await fetcher.fetch(f"http://{host}:9/latest/meta-data", WHERE, Unlimited())
    assert WHERE in info.value.message
    assert not info.value.retryable


@pytest.mark.parametrize(
    "addresses",
    [("127.0.0.1",), ("10.0.0.7",), ("169.254.169.254",), ("::1",), ("93.184.216.34", "10.0.0.1")],
)
async def test_ssrf_refuses_names_resolving_to_non_public_addresses(
    addresses: tuple[str, ...],
) -> None:
    fetcher = SafeFetcher(MediaSettings(), resolver=resolver_to(*addresses))
    with pytest.raises(MediaFetchError, match="not a public internet address"):
        await fetcher.fetch("https://images.example.com/cat.png", WHERE, Unlimited())


async def test_ssrf_default_refuses_loopback_server_without_contacting_it(
    image_server: ImageServer,
) -> None:
    before = len(image_server.requests)
    with pytest.raises(MediaFetchError, match="refused"):
        await SafeFetcher(MediaSettings()).fetch(image_server.url("/img.png"), WHERE, Unlimited())
    assert len(image_server.requests) == before


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/"])
async def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(MediaFetchError, match="only http and https"):
        await SafeFetcher(MediaSettings()).fetch(url, WHERE, Unlimited())


async def test_invalid_numeric_host_is_refused() -> None:
    with pytest.raises(MediaFetchError, match="refused"):
        await SafeFetcher(MediaSettings(), resolver=must_not_resolve).fetch(
            "http://1.2.3.4.5/", WHERE, Unlimited()
        )


async def test_allowed_hosts_refuse_other_names() -> None:
    settings = MediaSettings(allowed_hosts=("cdn.example.com", "*.images.example"))
    fetcher = SafeFetcher(settings, resolver=must_not_resolve)
    with pytest.raises(MediaFetchError, match="allowed hosts"):
        await fetcher.fetch("https://evil.example.net/a.png", WHERE, Unlimited())


async def test_allowed_hosts_still_refuse_private_addresses() -> None:
    settings = MediaSettings(allowed_hosts=("cdn.example.com",))
    fetcher = SafeFetcher(settings, resolver=resolver_to("10.0.0.1"))
    with pytest.raises(MediaFetchError, match="not a public"):
        await fetcher.fetch("https://cdn.example.com/a.png", WHERE, Unlimited())


async def test_dns_failure_is_retryable() -> None:
    async def fail(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(MediaFetchError, match="could not be resolved") as info:
        await SafeFetcher(MediaSettings(), resolver=fail).fetch(
            "https://nowhere.example/a.png", WHERE, Unlimited()
        )
    assert info.value.retryable


async def test_fetch_dials_the_checked_address_and_keeps_the_host_header(
    image_server: ImageServer,
) -> None:
    fetcher = SafeFetcher(loopback(), resolver=resolver_to("127.0.0.1"))
    body = await fetcher.fetch(
        f"http://pictures.example:{image_server.port}/img.png", WHERE, Unlimited()
    )
    assert body == PNG
    assert image_server.requests[-1] == ("/img.png", f"pictures.example:{image_server.port}")


async def test_fetch_follows_a_redirect_chain_within_the_limit(image_server: ImageServer) -> None:
    body = await SafeFetcher(loopback()).fetch(image_server.url("/chain/5"), WHERE, Unlimited())
    assert body == PNG


async def test_fetch_refuses_too_many_redirects(image_server: ImageServer) -> None:
    with pytest.raises(MediaFetchError, match="more than 5 times"):
        await SafeFetcher(loopback()).fetch(image_server.url("/chain/6"), WHERE, Unlimited())


@pytest.mark.parametrize("path", ["/to-metadata", "/to-private", "/to-numeric"])
async def test_redirect_to_a_private_address_is_refused(
    image_server: ImageServer, path: str
) -> None:
    with pytest.raises(MediaFetchError, match="refused"):
        await SafeFetcher(loopback()).fetch(image_server.url(path), WHERE, Unlimited())


async def test_redirect_to_another_scheme_is_refused(image_server: ImageServer) -> None:
    with pytest.raises(MediaFetchError, match="only http and https"):
        await SafeFetcher(loopback()).fetch(image_server.url("/to-file"), WHERE, Unlimited())


async def test_redirect_without_location_is_an_error(image_server: ImageServer) -> None:
    with pytest.raises(MediaFetchError, match="without a Location"):
        await SafeFetcher(loopback()).fetch(image_server.url("/no-location"), WHERE, Unlimited())


async def test_upstream_5xx_is_retryable_and_4xx_is_not(image_server: ImageServer) -> None:
    fetcher = SafeFetcher(loopback())
    with pytest.raises(MediaFetchError, match="HTTP 503") as busy:
        await fetcher.fetch(image_server.url("/status/503"), WHERE, Unlimited())
    assert busy.value.retryable and busy.value.status == 400
    with pytest.raises(MediaFetchError, match="HTTP 404") as missing:
        await fetcher.fetch(image_server.url("/status/404"), WHERE, Unlimited())
    assert not missing.value.retryable


async def test_slow_server_times_out_retryably(image_server: ImageServer) -> None:
    with pytest.raises(MediaFetchError, match="timed out") as info:
        await SafeFetcher(loopback()).fetch(image_server.url("/slow-headers"), WHERE, Unlimited())
    assert info.value.retryable


async def test_drip_feeding_server_hits_the_total_timeout(image_server: ImageServer) -> None:
    settings = loopback(fetch_total_timeout_s=0.6)
    with pytest.raises(MediaFetchError, match="in total") as info:
        await SafeFetcher(settings).fetch(image_server.url("/drip"), WHERE, Unlimited())
    assert info.value.retryable


async def test_endless_body_stops_at_the_byte_cap(image_server: ImageServer) -> None:
    cap = Cap(1_000_000)
    with pytest.raises(PayloadTooLargeError):
        await SafeFetcher(loopback()).fetch(image_server.url("/endless"), WHERE, cap)
    assert cap.got <= 1_000_000 + 65536 * 2


async def test_declared_huge_length_is_refused_before_download(image_server: ImageServer) -> None:
    with pytest.raises(PayloadTooLargeError, match="declared"):
        await SafeFetcher(loopback()).fetch(image_server.url("/huge"), WHERE, Cap(10**6))


async def test_content_type_is_not_trusted_bytes_decide(image_server: ImageServer) -> None:
    def sniff(head: bytes) -> None:
        if not head.startswith(b"\x89PNG"):
            raise UnsupportedContentError("not an image")

    fetcher = SafeFetcher(loopback())
    assert await fetcher.fetch(image_server.url("/img-as-text"), WHERE, Unlimited(), sniff) == PNG
    with pytest.raises(UnsupportedContentError):
        await fetcher.fetch(image_server.url("/html-as-png"), WHERE, Unlimited(), sniff)


def test_every_httpcore_exception_is_mapped() -> None:
    """Habit 6: each foreign error class becomes a MediaFetchError, none leaks as a 500."""
    classes = [
        obj
        for obj in vars(httpcore).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__.startswith("httpcore")
    ]
    assert classes
    for cls in classes:
        with pytest.raises(MediaFetchError), fetch.map_httpcore_errors(WHERE, "http://x/"):
            raise cls("boom")


async def test_fetch_tries_the_next_checked_address_when_one_refuses(
    image_server: ImageServer,
) -> None:
    """127.0.0.2 has no server on the port; the fetcher moves on to the next checked address."""
    fetcher = SafeFetcher(loopback(), resolver=resolver_to("127.0.0.2", "127.0.0.1"))
    url = f"http://pictures.example:{image_server.port}/img.png"
    assert await fetcher.fetch(url, WHERE, Unlimited()) == PNG


async def test_concurrent_fetches_never_exceed_the_server_wide_cap(
    image_server: ImageServer,
) -> None:
    fetcher = SafeFetcher(loopback(max_concurrent_fetches=2))
    url = image_server.url("/slow-counted")
    image_server.max_active = 0
    bodies = await asyncio.gather(*(fetcher.fetch(url, WHERE, Unlimited()) for _ in range(6)))
    assert bodies == [PNG] * 6  # all served, queued behind the cap
    assert image_server.max_active == 2
    assert fetcher.num_fetching == 0


async def test_a_fetch_that_waits_for_a_slot_past_the_timeout_is_503(
    image_server: ImageServer,
) -> None:
    fetcher = SafeFetcher(
        loopback(max_concurrent_fetches=1, fetch_total_timeout_s=1.0, fetch_read_timeout_s=5.0)
    )
    url = image_server.url("/slow-headers")  # 1.5 s: the first fetch holds the slot past 1 s
    results = await asyncio.gather(
        *(fetcher.fetch(url, WHERE, Unlimited()) for _ in range(2)), return_exceptions=True
    )
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["MediaFetchError", "OverloadedError"]
    overloaded = next(r for r in results if isinstance(r, OverloadedError))
    assert overloaded.status == 503 and overloaded.retryable


def test_the_fetch_cap_is_a_setting() -> None:
    assert MediaSettings().max_concurrent_fetches >= 1
    assert MediaSettings(max_concurrent_fetches=3).max_concurrent_fetches == 3
