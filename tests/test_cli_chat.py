"""``vlmserve chat``: the terminal client against a server on a fake engine (and against none)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer, free_port, start_fake_server
from tests.fakes import IMAGE_TOKENS, FakeEngine
from vlmserve.cli import main
from vlmserve.cli_chat import ChatError, ChatSession, Printer, api_base, run
from vlmserve.settings import Settings


@pytest.fixture
def session(fake_server: LiveServer) -> Iterator[tuple[ChatSession, io.StringIO]]:
    out = io.StringIO()
    with httpx.Client(base_url=fake_server.api, timeout=30) as client:
        chat = ChatSession(client, Printer(out, markdown=True), "step-1o-turbo-vision")
        chat.connect()
        yield chat, out


def test_answer_streams_to_the_terminal_and_the_conversation_carries_on(
    session: tuple[ChatSession, io.StringIO],
) -> None:
    chat, out = session
    assert chat.handle("hello there")
    assert chat.handle("and again")
    assert "echo: hello there\n" in out.getvalue()  # plain text: the StringIO is not a terminal
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == "echo: hello there"


def test_image_is_attached_to_the_next_message_only(
    session: tuple[ChatSession, io.StringIO], fake_server: LiveServer, tmp_path: Path
) -> None:
    chat, out = session
    photo = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 0, 0)).save(photo)
    chat.handle(f"/image {photo} high")
    assert "attached image" in out.getvalue()
    answer = chat.send("what is it")
    assert answer.usage is not None
    assert answer.usage["prompt_tokens_details"]["image_tokens"] == IMAGE_TOKENS
    part = chat.messages[0]["content"][0]
    assert part["image_url"]["detail"] == "high"
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    follow_up = chat.send("and now")
    assert follow_up.usage is not None  # the history still holds the one image
    assert follow_up.usage["prompt_tokens_details"]["image_tokens"] == IMAGE_TOKENS
    assert isinstance(chat.messages[2]["content"], str)


def test_usage_json_and_reset_commands(session: tuple[ChatSession, io.StringIO]) -> None:
    chat, out = session
    chat.handle("/usage")
    assert "No answer yet" in out.getvalue()
    chat.handle("/json")
    answer = chat.send("a b")
    assert json.loads(answer.content) == {"echo": "a b"}
    chat.handle("/usage")
    assert "session: 1 requests" in out.getvalue()
    chat.handle("/reset")
    assert chat.messages == []


def test_bad_commands_say_what_to_type(session: tuple[ChatSession, io.StringIO]) -> None:
    chat, _ = session
    with pytest.raises(ChatError, match="usage: /image"):
        chat.handle("/image a.png medium")
    with pytest.raises(ChatError, match="cannot read"):
        chat.handle("/image /no/such/file.png")
    with pytest.raises(ChatError, match="/help"):
        chat.handle("/nonsense")
    with pytest.raises(ChatError, match="this server has"):
        chat.handle("/model step-9")
    assert chat.model == "step-1o-turbo-vision"
    assert chat.handle("/quit") is False


def test_server_errors_are_shown_and_the_failed_turn_is_not_kept(
    session: tuple[ChatSession, io.StringIO],
) -> None:
    chat, _ = session
    chat.handle("/image data:image/png;base64,AAAA")
    with pytest.raises(ChatError, match="400"):
        chat.send("what is it")
    assert chat.messages == []


def test_piped_session_runs_to_the_end_of_input(fake_server: LiveServer) -> None:
    args = _args(fake_server.base_url)
    out = io.StringIO()
    assert run(args, io.StringIO("hi\n/bogus\n/usage\n"), out) == 0
    text = out.getvalue()
    assert "echo: hi" in text and "error: unknown command /bogus" in text
    assert "completion 2" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_markdown_is_rendered_on_a_terminal(fake_server: LiveServer) -> None:
    out = Terminal()
    with httpx.Client(base_url=fake_server.api, timeout=30) as client:
        chat = ChatSession(client, Printer(out, markdown=True))
        chat.connect()
        chat.send("**bold** and `code`")
    text = out.getvalue()
    assert "bold" in text and "**" not in text and "`" not in text
    assert "\x1b[" in text  # styled by rich


def test_a_server_that_needs_a_key_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    server, live = start_fake_server(Settings(server={"api_keys": ["k1"]}), FakeEngine())
    with server:
        assert run(_args(live.base_url), io.StringIO(""), io.StringIO()) == 1
        assert "--api-key" in capsys.readouterr().err
        assert run(_args(live.base_url, api_key="k1"), io.StringIO(""), io.StringIO()) == 0


def test_no_server_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["chat", "--base-url", url]) == 1
    err = capsys.readouterr().err
    assert url in err and "make serve" in err and "vlmserve serve" in err


def test_base_url_with_or_without_v1() -> None:
    assert api_base("http://h:1") == api_base("http://h:1/v1/") == "http://h:1/v1"


def _args(base_url: str, api_key: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(base_url=base_url, model=None, api_key=api_key, plain=False)
