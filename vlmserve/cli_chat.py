"""``vlmserve chat``: a terminal chat against a running server, over the HTTP API only.

Streams answers (rendered as Markdown with ``rich`` on a terminal, plain text otherwise), attaches
images and videos with ``/image`` and ``/video``, toggles JSON mode, keeps the conversation and
the line history (arrow keys, through ``readline``). It imports nothing of the server: it is a
client like any other, so it works against a remote vlmserve just the same.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

HELP = """\
Type a message and press Enter. Commands:
  /image PATH_OR_URL [low|high]   attach an image to the next message
  /video PATH_OR_URL              attach a video (models that accept video)
  /json                           JSON mode on/off (response_format json_object)
  /reset                          forget the conversation
  /usage                          tokens of the last answer and of this session
  /model [NAME]                   show or switch the model
  /help, /quit                    this text; leave (Ctrl+D also leaves)
Ctrl+C stops an answer (the server stops generating)."""

START_HINT = (
    "No vlmserve server answers at {url}.\n"
    "Start one in another terminal with `make serve`\n"
    "(or `vlmserve serve --model PATH_OR_HUB_ID`), or point this client at a running one\n"
    "with --base-url URL."
)


class ChatError(Exception):
    """A problem to show the user (bad command, server error); the session goes on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server's URL")
    parser.add_argument("--model", help="a model from /v1/models (default: the first)")
    parser.add_argument("--api-key", help="sent as a bearer token when the server needs keys")
    parser.add_argument(
        "--plain", action="store_true", help="no Markdown rendering, raw streamed text"
    )


@dataclass
class Usage:
    last: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, usage: dict[str, Any]) -> None:
        self.last = usage
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.requests += 1

    def describe(self) -> str:
        if self.last is None:
            return "No answer yet."
        u = self.last
        details = u.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens", u.get("cached_tokens", 0)) or 0
        return (
            f"last: prompt {u.get('prompt_tokens')} (cached {cached}, image "
            f"{details.get('image_tokens') or 0}, video {details.get('video_tokens') or 0}), "
            f"completion {u.get('completion_tokens')}\n"
            f"session: {self.requests} requests, prompt {self.prompt_tokens}, "
            f"completion {self.completion_tokens}"
        )


@dataclass
class Answer:
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


def media_url(source: str) -> str:
    """An http(s) or data: URL as is; a local file as a data: URL."""
    if source.startswith(("http://", "https://", "data:", "stepfile://")):
        return source
    path = Path(source).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ChatError(f"cannot read {source}: {exc.strerror or exc}") from exc
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _sse_objects(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and keep-alive comments
        data = line[5:].strip()
        if data == "[DONE]":
            return
        obj = json.loads(data)
        if "error" in obj:
            raise ChatError(obj["error"].get("message", "the server reported an error"))
        yield obj


def fold_chunk(answer: Answer, chunk: dict[str, Any]) -> str:
    """Add one stream chunk to ``answer`` (choice 0); returns the new text."""
    if chunk.get("usage"):
        answer.usage = chunk["usage"]  # the final usage chunk, or running totals on every chunk
    text = ""
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        for piece in delta.get("tool_calls") or []:
            index = piece.get("index", len(answer.tool_calls))
            while len(answer.tool_calls) <= index:
                answer.tool_calls.append({"id": "", "name": "", "arguments": ""})
            call = answer.tool_calls[index]
            function = piece.get("function") or {}
            call["id"] = piece.get("id") or call["id"]
            call["name"] = function.get("name") or call["name"]
            call["arguments"] += function.get("arguments") or ""
        answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
    answer.content += text
    return text


class Printer:
    """Where answers go: ``rich`` Markdown, re-rendered live, on a terminal; plain text else."""

    def __init__(self, out: TextIO, markdown: bool) -> None:
        self.out = out
        self.markdown = markdown and out.isatty()

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def stream(self, pieces: Iterator[str]) -> None:
        if not self.markdown:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
            self.out.write("\n")
            return
        from rich.console import Console
        from rich.live import Live
        from rich.markdown import Markdown

        text = ""
        console = Console(file=self.out)
        with Live(console=console, refresh_per_second=12, vertical_overflow="visible") as live:
            for piece in pieces:
                text += piece
                live.update(Markdown(text))


class ChatSession:
    def __init__(
        self,
        client: httpx.Client,
        printer: Printer,
        model: str | None = None,
    ) -> None:
        self.client = client
        self.printer = printer
        self.model = model or ""
        self.messages: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.json_mode = False
        self.usage = Usage()

    def connect(self) -> list[dict[str, Any]]:
        """The server's models; picks the first when none was asked for."""
        models: list[dict[str, Any]] = self._get("/models")["data"]
        ids = [m["id"] for m in models]
        if self.model and self.model not in ids:
            raise ChatError(f"unknown model {self.model!r}; this server has: {', '.join(ids)}")
        self.model = self.model or ids[0]
        return models

    def handle(self, line: str) -> bool:
        """One input line; False when the user asked to leave."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line)
        self.send(line)
        return True

    def _command(self, line: str) -> bool:
        name, *args = line.split()
        commands: dict[str, Callable[[list[str]], None]] = {
            "/image": self._image,
            "/video": self._video,
            "/json": self._json,
            "/reset": self._reset,
            "/usage": lambda _: self.printer.line(self.usage.describe()),
            "/model": self._model,
            "/help": lambda _: self.printer.line(HELP),
        }
        if name in ("/quit", "/exit"):
            return False
        if name not in commands:
            raise ChatError(f"unknown command {name}; /help lists them")
        commands[name](args)
        return True

    def _image(self, args: list[str]) -> None:
        if not args or len(args) > 2 or (len(args) == 2 and args[1] not in ("low", "high")):
            raise ChatError("usage: /image PATH_OR_URL [low|high]")
        image_url = {"url": media_url(args[0])}
        if len(args) == 2:
            image_url["detail"] = args[1]
        self.pending.append({"type": "image_url", "image_url": image_url})
        self.printer.line(f"attached image {args[0]} (sent with your next message)")

    def _video(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /video PATH_OR_URL")
        self.pending.append({"type": "video_url", "video_url": {"url": media_url(args[0])}})
        self.printer.line(f"attached video {args[0]} (sent with your next message)")

    def _json(self, _: list[str]) -> None:
        self.json_mode = not self.json_mode
        self.printer.line(f"JSON mode {'on' if self.json_mode else 'off'}")

    def _reset(self, _: list[str]) -> None:
        self.messages.clear()
        self.pending.clear()
        self.printer.line("conversation cleared")

    def _model(self, args: list[str]) -> None:
        if args:
            previous, self.model = self.model, args[0]
            try:
                self.connect()
            except ChatError:
                self.model = previous
                raise
        self.printer.line(f"model: {self.model}")

    def request(self, text: str) -> dict[str, Any]:
        content: str | list[dict[str, Any]] = text
        if self.pending:
            content = [*self.pending, {"type": "text", "text": text}]
        messages = [*self.messages, {"role": "user", "content": content}]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def send(self, text: str) -> Answer:
        body = self.request(text)
        answer = Answer()
        try:
            self.printer.stream(self._stream(body, answer))
        except KeyboardInterrupt:  # closing the stream makes the server abort the generation
            self.printer.line("[stopped]")
        for call in answer.tool_calls:
            self.printer.line(f"tool call {call['name']}({call['arguments']})")
        self.messages = body["messages"]
        self.pending = []
        reply: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.tool_calls:
            reply["tool_calls"] = [_wire_call(c) for c in answer.tool_calls]
        self.messages.append(reply)
        if answer.usage:
            self.usage.add(answer.usage)
        return answer

    def _stream(self, body: dict[str, Any], answer: Answer) -> Iterator[str]:
        with self.client.stream("POST", "/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                raise ChatError(_error_message(resp))
            for chunk in _sse_objects(resp.iter_lines()):
                text = fold_chunk(answer, chunk)
                if text:
                    yield text

    def _get(self, path: str) -> dict[str, Any]:
        resp = self.client.get(path)
        if resp.status_code != 200:
            raise ChatError(_error_message(resp))
        result: dict[str, Any] = resp.json()
        return result


def _wire_call(call: dict[str, Any]) -> dict[str, Any]:
    function = {"name": call["name"], "arguments": call["arguments"]}
    return {"id": call["id"], "type": "function", "function": function}


def _error_message(resp: httpx.Response) -> str:
    try:
        error = resp.json()["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if resp.status_code == 401:
        message += " Pass the key with --api-key."
    return f"{resp.status_code} {error.get('code') or ''}: {message}".replace(" :", ":")


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def make_client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    timeout = httpx.Timeout(10.0, read=600.0)  # a long answer on a CPU may pause between tokens
    return httpx.Client(base_url=api_base(args.base_url), headers=headers, timeout=timeout)


def run(args: argparse.Namespace, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    printer = Printer(out, markdown=not args.plain)
    with make_client(args) as client:
        session = ChatSession(client, printer, args.model)
        try:
            session.connect()
        except httpx.TransportError:
            print(START_HINT.format(url=args.base_url), file=sys.stderr)
            return 1
        except ChatError as exc:
            print(f"vlmserve chat: {exc}", file=sys.stderr)
            return 1
        printer.line(f"vlmserve chat: {session.model} at {args.base_url} (/help for commands)")
        return _loop(session, stdin, printer)


def _loop(session: ChatSession, stdin: TextIO, printer: Printer) -> int:
    interactive = stdin.isatty()
    if interactive:
        import readline  # noqa: F401 - arrow keys and history for input()
    while True:
        try:
            line = input("› ") if interactive else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            printer.line()
            return 0
        if not interactive and not line:
            return 0
        try:
            if not session.handle(line):
                return 0
        except ChatError as exc:
            printer.line(f"error: {exc}")
        except httpx.TransportError as exc:
            printer.line(f"error: the server did not answer ({exc}); is it still running?")
