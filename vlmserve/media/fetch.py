"""The one way vlmserve fetches remote media: SSRF-safe, bounded, streamed (DESIGN.md section 4).

Each hop resolves its host once, refuses it unless every address is public (``address.is_public``),
then dials the address it checked (a pinned network backend under httpcore, so DNS cannot change
between check and connect) while the request keeps its Host header and TLS keeps SNI and certificate
checks on the host name. Redirects are followed by hand, at most ``max_redirects``, each hop checked
the same way. Connect, read and total timeouts; the body is streamed and cut at a byte cap.
At most ``max_concurrent_fetches`` fetches run at once per fetcher (the server shares one between
chat and file uploads), so a flood of URL images queues instead of exhausting sockets; a fetch that
waits for a slot longer than the total timeout is a 503 (retryable).

httpcore (httpx's transport) is used directly: httpx follows redirects and resolves names inside
its transport, and both must happen here under our checks.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
from httpcore._backends.base import SOCKET_OPTION

from vlmserve.errors import MediaFetchError, OverloadedError
from vlmserve.media.address import IPAddress, is_loopback, is_public, parse_ip_host
from vlmserve.settings import MediaSettings

Resolver = Callable[[str, int], Awaitable[list[str]]]
FirstBytesCheck = Callable[[bytes], None]  # called once with the first bytes; raises to stop

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_SNIFF_BYTES = 64
USER_AGENT = "vlmserve-media-fetcher/0.1"


async def system_resolve(host: str, port: int) -> list[str]:
    """All addresses of ``host`` from the system resolver (tests replace this)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class ByteBudget(Protocol):
    """The bytes a request may still receive; both methods raise to stop the download."""

    def check(self, num_bytes: int) -> None:
        """Raise if ``num_bytes`` more would exceed the budget (a declared Content-Length)."""

    def take(self, num_bytes: int) -> None:
        """Count ``num_bytes`` received; raise once the budget is exceeded."""


@dataclass(frozen=True, slots=True)
class _Hop:
    url: httpx.URL
    host: str
    port: int
    addresses: tuple[str, ...]  # all checked; dialled in order


class SafeFetcher:
    """Fetch an http(s) URL's body under the address policy, timeouts and a byte cap."""

    def __init__(self, settings: MediaSettings, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._resolve = resolver or system_resolve
        self._ssl = ssl.create_default_context()
        self._allowed_hosts = tuple(h.lower().rstrip(".") for h in settings.allowed_hosts)
        self._slots = asyncio.Semaphore(settings.max_concurrent_fetches)
        self.num_fetching = 0  # fetches holding a slot now

    async def fetch(
        self,
        url: str,
        where: str,
        budget: ByteBudget,
        first_bytes: FirstBytesCheck | None = None,
    ) -> bytes:
        """The body of ``url`` after at most ``max_redirects`` checked redirects.

        ``where`` names the URL in errors. ``budget`` sees every chunk's size and raises to stop
        (the request's byte limit); ``first_bytes`` sees the start of the body (format sniffing,
        so an HTML error page is refused without downloading it). Raises ``MediaFetchError`` (400,
        ``retryable`` for upstream timeouts and 5xx) or whatever the two callbacks raise.
        """
        total = self._settings.fetch_total_timeout_s
        started = False
        try:
            async with asyncio.timeout(total), self._slots:
                started = True
                self.num_fetching += 1
                try:
                    return await self._follow(url, where, budget, first_bytes)
                finally:
                    self.num_fetching -= 1
        except TimeoutError:
            if not started:
                raise OverloadedError(
                    f"{where}: this server is already fetching "
                    f"{self._settings.max_concurrent_fetches} remote images and none finished "
                    f"within {total:g} s; retry later, or send the image as a data URL"
                ) from None
            raise MediaFetchError(
                f"{where}: fetching {_shown(url)} took longer than {total:g} s in total; "
                "the server is too slow (retryable), or send the image as a data URL",
                retryable=True,
            ) from None

    async def _follow(
        self, url: str, where: str, budget: ByteBudget, first_bytes: FirstBytesCheck | None
    ) -> bytes:
        for _ in range(self._settings.max_redirects + 1):
            hop = await self._check(url, where)
            location = await self._get(hop, where, budget, first_bytes)
            if isinstance(location, bytes):
                return location
            url = location
        raise MediaFetchError(
            f"{where}: {_shown(url)} redirects more than {self._settings.max_redirects} times; "
            "give the final URL of the image",
        )

    async def _check(self, url: str, where: str) -> _Hop:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise _refused(where, url, f"only http and https URLs are fetched, not '{scheme}:'")
        try:
            # httpx's parse gives the Host header and SNI, so the same parse is what we check
            # (and the socket goes to the checked address whatever any parser thinks).
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii").rstrip(".")
            port = parsed.port or (443 if scheme == "https" else 80)
        except (ValueError, httpx.InvalidURL) as exc:
            return self._refuse_malformed(where, url, urlsplit(url).hostname or "", exc)
        if not host:
            raise _refused(where, url, "it has no host")
        self._check_allowed_host(host, where, url)
        addresses = await self._addresses(host, port, where, url)
        return _Hop(url=parsed, host=host, port=port, addresses=tuple(map(str, addresses)))

    def _refuse_malformed(self, where: str, url: str, host: str, exc: Exception) -> _Hop:
        try:  # a numeric spelling httpx rejects (0177.0.0.1) still gets the address verdict
            ip = parse_ip_host(host)
        except ValueError:
            ip = None
        if ip is not None and not self._is_allowed(ip):
            raise _refused(where, url, f"{host} is the non-public address {ip}")
        raise _refused(where, url, f"it is not a valid URL ({exc})")

    def _check_allowed_host(self, host: str, where: str, url: str) -> None:
        if not self._allowed_hosts:
            return
        name = host.lower()
        for allowed in self._allowed_hosts:
            if name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])):
                return
        raise _refused(where, url, f"{host} is not in this server's list of allowed hosts")

    async def _addresses(self, host: str, port: int, where: str, url: str) -> list[IPAddress]:
        try:
            literal = parse_ip_host(host)
        except ValueError:
            raise _refused(where, url, f"{host} is not a valid IP address") from None
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._lookup(host, port, where, url)
        for ip in addresses:
            if not self._is_allowed(ip):
                shown = host if str(ip) == host.strip("[]") else f"{host} resolves to {ip}, which"
                raise _refused(where, url, f"{shown} is not a public internet address")
        return addresses

    async def _lookup(self, host: str, port: int, where: str, url: str) -> list[IPAddress]:
        try:
            names = await self._resolve(host, port)
            addresses = [parse_ip_host(n) for n in names]
        except (OSError, ValueError) as exc:
            raise MediaFetchError(
                f"{where}: the host of {_shown(url)} could not be resolved ({exc}); check the "
                "URL (retryable if the name is right)",
                retryable=True,
            ) from None
        found = [a for a in addresses if a is not None]
        if not found:
            raise _refused(where, url, f"{host} has no address")
        return found

    def _is_allowed(self, ip: IPAddress) -> bool:
        return is_public(ip) or (self._settings.allow_loopback and is_loopback(ip))

    async def _get(
        self, hop: _Hop, where: str, budget: ByteBudget, first_bytes: FirstBytesCheck | None
    ) -> bytes | str:
        """One round trip: the body, or the next URL when the answer is a redirect."""
        s = self._settings
        timeouts = {
            "connect": s.fetch_connect_timeout_s,
            "read": s.fetch_read_timeout_s,
            "write": s.fetch_read_timeout_s,
            "pool": s.fetch_connect_timeout_s,
        }
        pool = httpcore.AsyncConnectionPool(
            ssl_context=self._ssl, network_backend=_PinnedBackend(hop.addresses), retries=0
        )
        url = str(hop.url)
        with map_httpcore_errors(where, url):
            async with (
                pool,
                pool.stream(
                    "GET",
                    httpcore.URL(url),
                    headers=_headers(hop),
                    extensions={"timeout": timeouts},
                ) as response,
            ):
                if response.status in _REDIRECTS:
                    return _redirect_target(response, url, where)
                _check_status(response.status, where, url)
                return await _read_body(response, budget, first_bytes)


def _headers(hop: _Hop) -> list[tuple[bytes, bytes]]:
    host = hop.url.netloc.decode("ascii").rsplit("@", 1)[-1]
    return [
        (b"Host", host.encode("ascii")),
        (b"User-Agent", USER_AGENT.encode("ascii")),
        (b"Accept", b"image/jpeg, image/png, image/gif, image/webp, */*;q=0.5"),
        (b"Accept-Encoding", b"identity"),  # the byte cap counts what we store
    ]


def _redirect_target(response: httpcore.Response, url: str, where: str) -> str:
    for name, value in response.headers:
        if name.lower() == b"location":
            return urljoin(url, value.decode("latin-1").strip())
    raise MediaFetchError(
        f"{where}: {_shown(url)} answered {response.status} without a Location header",
    )


def _check_status(status: int, where: str, url: str) -> None:
    if 200 <= status < 300:
        return
    retryable = status in _RETRYABLE_STATUSES
    hint = "the server may recover; retry later" if retryable else "check that the URL is public"
    raise MediaFetchError(
        f"{where}: fetching {_shown(url)} failed with HTTP {status} ({hint})",
        retryable=retryable,
    )


async def _read_body(
    response: httpcore.Response, budget: ByteBudget, first_bytes: FirstBytesCheck | None
) -> bytes:
    for name, value in response.headers:
        if name.lower() == b"content-length" and value.strip().isdigit():
            budget.check(int(value))  # refuse before downloading
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_stream():  # type: ignore[attr-defined]
        budget.take(len(chunk))
        chunks.append(chunk)
        received += len(chunk)
        if first_bytes is not None and received >= _SNIFF_BYTES:
            first_bytes(b"".join(chunks)[:_SNIFF_BYTES])
            first_bytes = None
    body = b"".join(chunks)
    if first_bytes is not None:
        first_bytes(body)
    return body


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials only the addresses that were checked (the first that answers), whatever host name
    the request carries; DNS is never consulted again between check and connect."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._addresses = addresses
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        for address in self._addresses[:-1]:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError:
                continue  # the next checked address
        return await self._inner.connect_tcp(
            self._addresses[-1], port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for media")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@contextmanager
def map_httpcore_errors(where: str, url: str) -> Iterator[None]:
    """httpcore's exceptions → ``MediaFetchError``, the one place they are translated."""
    try:
        yield
    except httpcore.TimeoutException as exc:
        phase = (
            "connecting"
            if isinstance(exc, httpcore.ConnectTimeout | httpcore.PoolTimeout)
            else "reading"
        )
        raise _failed(where, url, f"timed out while {phase}", retryable=True) from None
    except httpcore.ConnectError as exc:
        if _is_certificate_error(exc):
            raise _failed(where, url, "its TLS certificate is not valid", retryable=False) from None
        raise _failed(where, url, f"the connection failed ({exc})", retryable=True) from None
    except (httpcore.NetworkError, httpcore.ConnectionNotAvailable) as exc:
        raise _failed(where, url, f"the connection broke ({exc})", retryable=True) from None
    except (httpcore.ProtocolError, httpcore.UnsupportedProtocol, httpcore.ProxyError) as exc:
        raise _failed(where, url, f"the server's answer is not valid HTTP ({exc})", False) from None


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _failed(where: str, url: str, why: str, retryable: bool) -> MediaFetchError:
    hint = " (retryable)" if retryable else ""
    return MediaFetchError(
        f"{where}: fetching {_shown(url)} failed: {why}{hint}", retryable=retryable
    )


def _refused(where: str, url: str, why: str) -> MediaFetchError:
    return MediaFetchError(
        f"{where}: {_shown(url)} is refused: {why}. Images are fetched only from public "
        "http(s) addresses; send private images as data URLs or upload them",
    )


def _shown(url: str) -> str:
    """The URL for an error message: no credentials, bounded length."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown if len(shown) <= 200 else shown[:197] + "..."
