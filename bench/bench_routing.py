"""Remote routing (issue 7): prompt-cache share with our routing vs round-robin, same run.

Three replicas on loopback simulate a prefix cache the way vLLM's works: a prompt is a chain of
segments (each message part: a text, or an image keyed by the hash of the bytes it received);
a replica reuses the longest chain prefix it still holds, keeps the prompt and the generated
answer afterwards, and evicts least-recently-used segments beyond ``--cache-tokens`` (the size of
its KV cache, in tokens). 30 simulated users each hold a 6-turn conversation about their own
image, all at once; every request goes through the real ``RemoteEngine`` (payload, HTTP, SSE,
usage) with ``routing="affinity"`` and then ``routing="round_robin"`` (and least-outstanding),
each on freshly emptied replicas. Run by hand:

    .venv/bin/python bench/bench_routing.py            # the table in docs/benchmarks.md
    .venv/bin/python bench/bench_routing.py --cache-tokens 4000 --load-factor 1.5

Reported per policy: the share of prompt tokens served from cache (as the engine reported it in
``Finished.usage.cached_tokens``), requests per replica (max / mean), the most requests a replica
held at once (max / mean of the per-replica peaks).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import io
import json
import math
import random
import statistics
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine.remote.upstream import FakeUpstream, UpstreamServer
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.types import (
    Delta,
    Finished,
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    PromptUsage,
    SamplingParams,
    Started,
    TextPart,
)
from vlmserve.settings import RemoteEngineSettings

MODEL = "sim-vlm"
PATCH = 28  # Qwen2-VL: one token per 28x28 pixels after merging
SYSTEM = (
    "You are a careful visual assistant. Describe what you see precisely, answer follow-up "
    "questions about the same picture, admit uncertainty, never invent details that are not "
    "visible, and keep every answer short and factual."
)
PREFILL_S_PER_TOKEN = 20e-6  # simulated compute: uncached prompt tokens cost time...
DECODE_S_PER_TOKEN = 1e-3  # ...and so does every generated token
REPLY_WORDS = 24


# -- the simulated replica ------------------------------------------------------------------


def segments(messages: list[dict[str, Any]]) -> list[tuple[bytes, int]]:
    """The prompt as (segment key, tokens): one per message part, images keyed by their bytes."""
    out: list[tuple[bytes, int]] = []
    for message in messages:
        content = message["content"]
        parts: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else content
        )
        for part in parts:
            if part["type"] == "text":
                out.append((b"t" + part["text"].encode(), len(part["text"].split()) + 2))
            else:
                url = part["image_url"]["url"]
                out.append((b"i" + hashlib.sha256(url.encode()).digest(), image_tokens(url)))
    return out


@functools.lru_cache(maxsize=1024)
def image_tokens(data_url: str) -> int:
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    return math.ceil(image.width / PATCH) * math.ceil(image.height / PATCH)


@dataclass
class PrefixCache:
    """Chained segment hashes → tokens, LRU-evicted beyond ``capacity`` tokens."""

    capacity: int | None
    entries: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    num_tokens: int = 0

    def chain(self, segs: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        keys, h = [], b""
        for key, tokens in segs:
            h = hashlib.blake2b(h + key, digest_size=16).digest()
            keys.append((h, tokens))
        return keys

    def lookup(self, chain: list[tuple[bytes, int]]) -> int:
        cached = 0
        for h, tokens in chain:
            if h not in self.entries:
                break
            cached += tokens
        return cached

    def insert(self, chain: list[tuple[bytes, int]]) -> None:
        # Touch tail first so the head of the chain is the most recent: tails are evicted first.
        for h, tokens in reversed(chain):
            if h not in self.entries:
                self.entries[h] = tokens
                self.num_tokens += tokens
            self.entries.move_to_end(h)
        while self.capacity is not None and self.num_tokens > self.capacity and self.entries:
            _, tokens = self.entries.popitem(last=False)
            self.num_tokens -= tokens


@dataclass
class CachingReplica(FakeUpstream):
    cache: PrefixCache = field(default_factory=lambda: PrefixCache(None))
    active: int = 0
    peak_active: int = 0

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"n": len(body["messages"])})
        return StreamingResponse(self.answer(body), media_type="text/event-stream")

    async def answer(self, body: dict[str, Any]) -> AsyncIterator[str]:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            chain = self.cache.chain(segments(body["messages"]))
            num_prompt = sum(tokens for _, tokens in chain)
            cached = self.cache.lookup(chain)
            await asyncio.sleep((num_prompt - cached) * PREFILL_S_PER_TOKEN)
            reply = reply_to(body["messages"])
            usage = {"prompt_tokens": num_prompt, "completion_tokens": 0}
            yield _sse({"choices": [_choice({"role": "assistant", "content": ""})], "usage": usage})
            for i, word in enumerate(reply.split(" ")):
                await asyncio.sleep(DECODE_S_PER_TOKEN)
                usage = {"prompt_tokens": num_prompt, "completion_tokens": i + 1}
                text = word if i == 0 else " " + word
                yield _sse({"choices": [_choice({"content": text})], "usage": usage})
            yield _sse({"choices": [_choice({}, "stop")], "usage": usage})
            answer = {"role": "assistant", "content": reply}
            self.cache.insert(self.cache.chain(segments([*body["messages"], answer])))
            final = {**usage, "prompt_tokens_details": {"cached_tokens": cached}}
            yield _sse({"choices": [], "usage": final})
            yield "data: [DONE]\n\n"
        finally:
            self.active -= 1


def reply_to(messages: list[dict[str, Any]]) -> str:
    seed = hashlib.sha256(json.dumps(messages[-1]).encode()).hexdigest()
    return " ".join(f"w{seed[i % 60 : i % 60 + 4]}" for i in range(REPLY_WORDS))


def _choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": reason}


def _sse(body: dict[str, Any]) -> str:
    return "data: " + json.dumps(body) + "\n\n"


# -- the simulated users --------------------------------------------------------------------


def user_image(user: int) -> MediaInput:
    rng = np.random.default_rng(user)
    base = rng.integers(0, 255, (14, 14, 3), dtype=np.uint8)  # a blocky photo, many colours
    image = Image.fromarray(base).resize((448, 448), Image.Resampling.BILINEAR)
    identity = hashlib.sha256(image.tobytes()).hexdigest()
    return MediaInput("image", (image,), identity)


@dataclass
class Outcome:
    prompt_tokens: int = 0
    cached_tokens: int = 0


async def converse(engine: RemoteEngine, user: int, turns: int, out: Outcome) -> None:
    rng = random.Random(user)
    image = user_image(user)
    messages = [
        Message("system", (TextPart(SYSTEM),)),
        Message("user", (MediaPart(0), TextPart(f"User {user} asks: what is in this picture?"))),
    ]
    for turn in range(1, turns + 1):
        await asyncio.sleep(rng.uniform(0, 0.03))  # think time: users interleave
        request = GenerationRequest(
            f"u{user}t{turn}",
            Prompt(tuple(messages), (image,)),
            SamplingParams(max_tokens=64),
            tenant="bench",
        )
        text, usage = "", None
        async for event in engine.generate(request):
            if isinstance(event, Started):
                usage = event.usage
            elif isinstance(event, Delta):
                text += event.text
            elif isinstance(event, Finished) and event.usage is not None:
                usage = event.usage
        assert isinstance(usage, PromptUsage)
        out.prompt_tokens += usage.prompt_tokens
        out.cached_tokens += usage.cached_tokens
        messages.append(Message("assistant", (TextPart(text),)))
        messages.append(Message("user", (TextPart(f"Question {turn + 1}: tell me more about it"),)))


@dataclass
class Row:
    policy: str
    cache_tokens: int | None
    cached_share: float
    requests: list[int]
    peaks: list[int]

    @property
    def load_ratio(self) -> float:
        return max(self.requests) / statistics.mean(self.requests)

    @property
    def peak_ratio(self) -> float:
        return max(self.peaks) / statistics.mean(self.peaks)


async def run_policy(
    servers: list[UpstreamServer],
    policy: str,
    args: argparse.Namespace,
    cache_tokens: int | None,
) -> Row:
    for server in servers:
        replica = server.upstream
        assert isinstance(replica, CachingReplica)
        replica.cache = PrefixCache(cache_tokens)
        replica.requests.clear()
        replica.peak_active = 0
    binding = EngineBinding(
        kind="remote", upstreams=tuple(s.base_url for s in servers), upstream_model=MODEL
    )
    settings = RemoteEngineSettings(routing=policy, load_factor=args.load_factor)  # type: ignore[arg-type]
    engine = RemoteEngine(binding, settings)
    await engine.start()
    out = Outcome()
    try:
        await asyncio.gather(*(converse(engine, u, args.turns, out) for u in range(args.users)))
    finally:
        await engine.close()
    replicas = [s.upstream for s in servers]
    return Row(
        policy,
        cache_tokens,
        out.cached_tokens / out.prompt_tokens,
        [len(r.requests) for r in replicas],
        [r.peak_active for r in replicas if isinstance(r, CachingReplica)],
    )


POLICIES = ("affinity", "round_robin", "least_outstanding")


def print_table(rows: list[Row]) -> None:
    """One line per (cache size, policy): shares averaged over rounds, loads at their worst."""
    print(
        "| replica KV cache (tokens) | policy | prompt tokens from cache (mean, min-max) "
        "| vs round-robin | max / mean requests per replica (worst round) "
        "| max / mean peak in flight (worst round) |"
    )
    print("|---|---|---|---|---|---|")
    sizes = list(dict.fromkeys(r.cache_tokens for r in rows))
    for size in sizes:
        same = [r for r in rows if r.cache_tokens == size]
        baseline = statistics.mean(r.cached_share for r in same if r.policy == "round_robin")
        for policy in POLICIES:
            mine = [r for r in same if r.policy == policy]
            shares = [r.cached_share for r in mine]
            mean = statistics.mean(shares)
            cache = "unlimited" if size is None else f"{size:,}"
            print(
                f"| {cache} | {policy} | {mean:.1%} ({min(shares):.0%}-{max(shares):.0%}) "
                f"| {mean / baseline:.2f}x | {max(r.load_ratio for r in mine):.2f} "
                f"| {max(r.peak_ratio for r in mine):.2f} |"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument(
        "--cache-tokens",
        default="4000,8000,0",
        help="comma-separated KV cache sizes per replica, in tokens (0: unlimited)",
    )
    parser.add_argument("--load-factor", type=float, default=1.25, help="c of the bounded load")
    parser.add_argument("--rounds", type=int, default=3, help="each on new ports (a new ring)")
    args = parser.parse_args()
    sizes = [int(size) or None for size in args.cache_tokens.split(",")]
    rows = []
    for _ in range(args.rounds):
        servers = [
            UpstreamServer(CachingReplica(behaviour=_behaviour())).start()
            for _ in range(args.replicas)
        ]
        try:
            for size in sizes:
                for policy in POLICIES:
                    rows.append(await run_policy(servers, policy, args, size))
        finally:
            for server in servers:
                server.stop()
    print(
        f"{args.users} users x {args.turns} turns, {args.replicas} replicas, "
        f"load factor {args.load_factor}, {args.rounds} rounds\n"
    )
    print_table(rows)


def _behaviour() -> Any:
    from tests.engine.remote.upstream import Behaviour

    return Behaviour(model=MODEL)


if __name__ == "__main__":
    asyncio.run(main())
