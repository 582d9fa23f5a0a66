"""A small fake of vLLM's OpenAI server, on loopback, with failures on demand.

Like vLLM: SSE chunks one word at a time, a role chunk first, usage on every chunk only with
``stream_options.continuous_usage_stats`` and in one final chunk (``choices: []``) only with
``include_usage``, ``prompt_tokens_details.cached_tokens`` when configured, error bodies
``{"object": "error", "message", "type", "param", "code"}``, ``/v1/models`` with ``max_model_len``
and ``/tokenize`` at the server root.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

IMAGE_TOKENS = 10  # what each image costs in the fake's prompt count
MM_KWARGS_REFUSED = (
    "Per-request mm_processor_kwargs are disabled by default because they can change "
    "multimodal preprocessing resource usage. Start the server with --trust-request-mm-kwargs "
    "only when clients are trusted."
)


@dataclass
class Behaviour:
    model: str = "fake-vlm"
    reply: str = "a red square on white"
    fail_status: int | None = None  # answer chat requests with this status and an error body
    fail_message: str = "something went wrong"
    retry_after: str | None = None
    first_chunk_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    die_after_chunks: int | None = None  # drop the connection after this many content chunks
    cached_tokens: int | None = None  # report prompt_tokens_details.cached_tokens
    healthy: bool = True
    continuous_usage: bool = True  # honour stream_options.continuous_usage_stats
    has_tokenize: bool = True
    image_tokens: int = IMAGE_TOKENS  # what this replica bills per image
    # vLLM without --trust-request-mm-kwargs: a request with mm_processor_kwargs is refused
    refuse_mm_kwargs: bool = False
    # per-modality prompt tokens in usage: vLLM's multimodal_tokens, SGLang's image_tokens, none
    modality_usage: Literal["vllm", "sglang", "none"] = "none"
    # usage in non-streamed answers (what vlmserve's count check compares with its own count;
    # off: the fake's counts are not a real processor's, and a check without usage passes)
    completion_usage: bool = False


@dataclass
class FakeUpstream:
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)  # non-streamed chat requests
    aborted: int = 0  # streams the client closed before the end

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/tokenize", self.tokenize, methods=["POST"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        if not self.behaviour.healthy:
            return error_response(503, "engine is dead")
        card = {"id": self.behaviour.model, "object": "model", "max_model_len": 4096}
        return JSONResponse({"object": "list", "data": [card]})

    async def tokenize(self, request: Request) -> Response:
        if not self.behaviour.has_tokenize:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        return JSONResponse({"count": prompt_tokens(body["messages"]), "max_model_len": 4096})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        b = self.behaviour
        if b.refuse_mm_kwargs and body.get("mm_processor_kwargs"):
            return error_response(400, MM_KWARGS_REFUSED)
        (self.requests if body.get("stream") else self.probes).append(body)
        if b.fail_status is not None:
            headers = {"Retry-After": b.retry_after} if b.retry_after else None
            return error_response(b.fail_status, b.fail_message, headers)
        if body.get("model") != b.model:
            return error_response(404, f"The model `{body.get('model')}` does not exist.")
        if not body.get("stream"):
            return JSONResponse(self.completion(body))
        return StreamingResponse(self.chunks(body), media_type="text/event-stream")

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed one-word answer (what vlmserve's count check asks for)."""
        usage = self.usage(body["messages"], 1, None) if self.behaviour.completion_usage else {}
        message = {"role": "assistant", "content": self.behaviour.reply.split(" ")[0]}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "choices": [choice], **usage}

    def usage(
        self, messages: list[dict[str, Any]], num_generated: int, cached: int | None
    ) -> dict[str, Any]:
        b = self.behaviour
        num_prompt = prompt_tokens(messages, b.image_tokens)
        usage = usage_of(num_prompt, num_generated, cached)
        num_images = sum(
            part.get("type") == "image_url"
            for message in messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
        )
        if b.modality_usage != "none" and num_images:
            details = usage.setdefault("prompt_tokens_details", {})
            if b.modality_usage == "vllm":
                details["multimodal_tokens"] = {"image": num_images * b.image_tokens}
            else:
                details["image_tokens"] = num_images * b.image_tokens
        return {"usage": usage}

    async def chunks(self, body: dict[str, Any]) -> AsyncIterator[str]:
        b = self.behaviour
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        continuous = bool(
            include_usage and b.continuous_usage and options.get("continuous_usage_stats")
        )
        n = body.get("n", 1)
        num_prompt = prompt_tokens(body["messages"], b.image_tokens)
        words = b.reply.split(" ")
        if body.get("max_tokens") is not None:
            words = words[: body["max_tokens"]]
        generated = [0] * n
        try:
            await asyncio.sleep(b.first_chunk_delay_s)
            for i in range(n):
                yield sse(chunk(i, {"role": "assistant", "content": ""}), num_prompt, 0, continuous)
            sent = 0
            for position, word in enumerate(words):
                for i in range(n):
                    if b.die_after_chunks is not None and sent >= b.die_after_chunks:
                        raise ConnectionAbortedError("replica died mid-stream")
                    generated[i] += 1
                    text = word if position == 0 else " " + word
                    yield sse(chunk(i, {"content": text}), num_prompt, generated[i], continuous)
                    sent += 1
                    await asyncio.sleep(b.chunk_delay_s)
            reason = "length" if len(words) < len(b.reply.split(" ")) else "stop"
            for i in range(n):
                yield sse(chunk(i, {}, reason), num_prompt, generated[i], continuous)
            if include_usage:
                usage = self.usage(body["messages"], sum(generated), b.cached_tokens)
                final = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": []}
                yield "data: " + json.dumps({**final, **usage}) + "\n\n"
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.aborted += 1
            raise


def chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [choice]}


def sse(body: dict[str, Any], num_prompt: int, num_generated: int, continuous: bool) -> str:
    if continuous:
        body = {**body, "usage": usage_of(num_prompt, num_generated, None)}
    return "data: " + json.dumps(body) + "\n\n"


def usage_of(num_prompt: int, num_generated: int, cached: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_generated,
        "total_tokens": num_prompt + num_generated,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def prompt_tokens(messages: list[dict[str, Any]], image_tokens: int = IMAGE_TOKENS) -> int:
    total = 0
    for message in messages:
        content = message.get("content") or ""
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                total += len(part["text"].split())
            else:
                total += image_tokens
        total += 2  # role markers
    return total


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None}
    return JSONResponse({**body, "code": status}, status_code=status, headers=headers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UpstreamServer:
    """A ``FakeUpstream`` served by uvicorn in a thread; ``stop()`` and ``start()`` again."""

    def __init__(self, upstream: FakeUpstream, port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> UpstreamServer:
        config = uvicorn.Config(
            self.upstream.app(),
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fake upstream did not start on port {self.port}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None
