"""Which replica serves a request: consistent hashing with bounded load on the conversation.

A replica's prefix cache helps only the requests that land on it again, so we route by what stays
the same across the turns of one conversation (``conversation_key``): the tenant, the model, the
system prompt, and the anchor of the conversation, which is its first user message: the
identities of that message's first images (equal identities mean equal pixels), or its text when
it has none. Later turns only append messages, so they hash to the same replica.

Load is bounded as in Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads"
(2018): no replica takes a request while it has ``capacity()`` or more outstanding. When the
preferred replica is down or at its bound, the request goes to the least-outstanding live replica,
which is always under the bound. Everything here is pure: the pool supplies loads and liveness.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence

from vlmserve.engine.types import GenerationRequest, MediaPart, TextPart


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def conversation_key(request: GenerationRequest, model: str, num_images: int) -> bytes:
    """Bytes equal for every turn of one conversation, different across conversations."""
    prompt = request.prompt
    fields = [b"tenant", request.tenant.encode(), b"model", model.encode()]
    messages = iter(prompt.messages)
    first_user = None
    for message in messages:
        if message.role == "system":
            fields += [b"system", *(_part_bytes(part, request) for part in message.parts)]
        else:
            first_user = message if message.role == "user" else None
            break
    if first_user is None:
        first_user = next((m for m in messages if m.role == "user"), None)
    if first_user is not None:
        images = [part for part in first_user.parts if isinstance(part, MediaPart)]
        anchor = images[:num_images] if images and num_images > 0 else first_user.parts
        fields += [b"anchor", *(_part_bytes(part, request) for part in anchor)]
    return hashlib.blake2b(b"\x00".join(len_prefixed(f) for f in fields)).digest()


def _part_bytes(part: TextPart | MediaPart, request: GenerationRequest) -> bytes:
    if isinstance(part, TextPart):
        return b"text:" + part.text.encode()
    return b"media:" + request.prompt.media[part.index].identity.encode()


def len_prefixed(field: bytes) -> bytes:
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    return len(field).to_bytes(8, "big") + field


class HashRing:
    """``virtual_nodes`` points per replica on a 64-bit ring; stable when replicas come and go."""

    def __init__(self, names: Sequence[str], virtual_nodes: int) -> None:
        points = sorted(
            (_hash64(f"{name}#{v}".encode()), i)
            for i, name in enumerate(names)
            for v in range(virtual_nodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]
        self.num_replicas = len(names)

    def preference(self, key: bytes) -> list[int]:
        """Every replica index once, in ring order starting at the key's position."""
        order: list[int] = []
        start = bisect.bisect(self._hashes, _hash64(key))
        for step in range(len(self._owners)):
            owner = self._owners[(start + step) % len(self._owners)]
            if owner not in order:
                order.append(owner)
                if len(order) == self.num_replicas:
                    break
        return order


def capacity(total_outstanding: int, num_live: int, load_factor: float) -> int:
    """The most outstanding requests a replica may hold once this request is placed."""
    return math.ceil(load_factor * (total_outstanding + 1) / num_live)


def choose_bounded(
    preference: Sequence[int],
    loads: Sequence[int],
    available: Sequence[bool],
    load_factor: float,
) -> int:
    """The first live replica of ``preference`` if under its bound, else the least loaded."""
    live = [i for i in preference if available[i]]
    if not live:
        raise ValueError("no live replica to choose from")
    bound = capacity(sum(loads[i] for i in live), len(live), load_factor)
    if loads[live[0]] < bound:
        return live[0]
    return least_outstanding(live, loads)


def least_outstanding(candidates: Sequence[int], loads: Sequence[int]) -> int:
    """The candidate with the fewest outstanding requests; ties go to the earliest candidate."""
    if not candidates:
        raise ValueError("no live replica to choose from")
    return min(candidates, key=lambda i: loads[i])


def round_robin(candidates: Sequence[int], turn: int) -> int:
    if not candidates:
        raise ValueError("no live replica to choose from")
    return candidates[turn % len(candidates)]
