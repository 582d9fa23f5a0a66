"""Which network addresses the fetcher may reach, and how numeric host spellings resolve.

Only globally routable unicast addresses are allowed by default. Addresses that embed an IPv4
address (IPv4-mapped/compatible IPv6, 6to4, NAT64) are judged by the IPv4 address inside, so
``::ffff:127.0.0.1`` or ``2002:7f00:1::`` cannot smuggle loopback past the check.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a URL host names when it is an IP literal, in any spelling libc accepts.

    ``inet_aton`` (and so most HTTP stacks and browsers) reads ``127.1``, ``2130706433``,
    ``0x7f000001`` and ``0177.0.0.1`` as 127.0.0.1; we read them the same way so the policy judges
    the address that would really be dialled. Returns None for a host name. Raises ValueError for
    a numeric-looking host that is no valid address (``1.2.3.4.5``, ``256.1.1.1``).
    """
    host = host.strip("[]").lower()
    if ":" in host:
        return ipaddress.IPv6Address(host.split("%", 1)[0])
    parts = host.split(".")
    if parts and parts[-1] == "":  # a trailing dot ("127.0.0.1.") is still numeric
        parts = parts[:-1]
    if not parts or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    return ipaddress.IPv4Address(_inet_aton(parts))


def _inet_aton(parts: list[str]) -> int:
    if len(parts) > 4:
        raise ValueError("too many parts for an IPv4 address")
    values = [_parse_part(p) for p in parts]
    # The last part fills all remaining bytes: a.b.c.d, a.b.(16 bits), a.(24 bits), (32 bits).
    last_bits = 8 * (5 - len(values))
    if any(v > 255 for v in values[:-1]) or values[-1] >= 1 << last_bits:
        raise ValueError("IPv4 part out of range")
    number = 0
    for v in values[:-1]:
        number = number << 8 | v
    return number << last_bits | values[-1]


def _parse_part(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)  # raises ValueError for 08, 09
    return int(part)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (never loopback, private, link-local,
    metadata, CGNAT, multicast, reserved, unspecified, documentation, or an IPv6 address that
    embeds one of those)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip.teredo is not None or ip.is_site_local:
            return False
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
    elif ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def is_loopback(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
