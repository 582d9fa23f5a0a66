"""The browser playground (GET /) driven in Chromium against a real ``vlmserve serve`` process.

What a first-time user does: pick a model, drop a picture and see its cost, send and watch the
answer stream, stop a long one, try JSON mode and a tool, copy working code. Random weights: the
words are noise, so the tests check the shape of everything and leave the meaning out.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import start_fake_server
from tests.e2e.browser import browser, new_page, png, require_browser
from tests.e2e.conftest import ServerProcess
from tests.e2e.playground_screenshot import finished_conversation
from tests.fakes import FakeEngine
from vlmserve.settings import Settings

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"enum": [1, 2, 3]}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


@pytest.fixture(scope="module")
def live(dummy_models: dict[str, Path]) -> Iterator[ServerProcess]:
    require_browser()  # before the server starts: a skip costs nothing
    proc = ServerProcess(dummy_models["idefics3"])
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def chromium(live: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with browser(tmp_path_factory.mktemp("chromium") / "profile") as context:
        yield context


@pytest.fixture
def page(live: ServerProcess, chromium: Any) -> Iterator[Any]:
    with new_page(chromium) as page:
        yield from _opened(page, live.base_url)


def _opened(page: Any, base_url: str) -> Iterator[Any]:
    elsewhere: list[str] = []
    errors: list[str] = []
    local = (base_url, "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base_url + "/")
    page.wait_for_selector("#model option", state="attached")
    yield page
    assert elsewhere == []  # offline: nothing but this server is ever asked for anything
    assert errors == []


def attach(page: Any, data: bytes, name: str = "photo.png") -> None:
    files = [{"name": name, "mimeType": "image/png", "buffer": data}]
    page.set_input_files("#file-input", files=files)


def settle_attachments(page: Any) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('.attachment')]"
        ".every(a => !a.classList.contains('is-loading'))"
    )


def set_params(page: Any, **params: object) -> None:
    for name, value in params.items():
        page.fill(f"#{name}", str(value))


def send(page: Any, text: str) -> dict[str, Any]:
    """Type ``text``, press Enter; the chat request's body as the page sent it."""
    page.fill("#prompt", text)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request:
        page.press("#prompt", "Enter")
    body: dict[str, Any] = request.value.post_data_json
    return body


def wait_answers(page: Any, count: int) -> Any:
    page.wait_for_function(
        f"() => document.querySelectorAll('.turn.assistant.done').length >= {count}"
    )
    return page.locator(".turn.assistant.done").nth(count - 1)


def running(server: ServerProcess) -> int:
    engines = httpx.get(server.base_url + "/readyz", timeout=5).json()["engines"]
    return sum(e["running"] for e in engines.values())


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def inspect(server: ServerProcess, data: bytes, model: str, detail: str) -> dict[str, Any]:
    body = {"model": model, "image_url": {"url": data_url(data), "detail": detail}}
    resp = httpx.post(server.api + "/images/inspect", json=body, timeout=30)
    result: dict[str, Any] = resp.json()
    return result


def test_model_picker_lists_the_servers_models_with_their_limits(
    page: Any, live: ServerProcess
) -> None:
    served = [m["id"] for m in httpx.get(live.api + "/models").json()["data"]]
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == served
    page.select_option("#model", "step-1v-8k")
    limits = page.inner_text("#model-limits")
    assert "up to 50 images" in limits and "no video" in limits and "context" in limits
    page.select_option("#model", "step-1o-turbo-vision")
    assert "up to 60 images" in page.inner_text("#model-limits")
    assert "video/*" in page.get_attribute("#file-input", "accept")


def test_attached_image_shows_size_and_token_cost_then_the_answer_streams(
    page: Any, live: ServerProcess
) -> None:
    model = page.input_value("#model")
    picture = png()
    attach(page, picture)
    settle_attachments(page)
    low = inspect(live, picture, model, "auto")
    item = page.locator(".attachment")
    assert f"{low['tokens']} tokens" in item.inner_text()
    assert f"model sees {low['size'][0]}×{low['size'][1]}" in item.inner_text()
    assert page.locator(".attachment .thumb img").count() == 1
    item.locator("select").select_option("high")
    high = inspect(live, picture, model, "high")
    assert high["tokens"] != low["tokens"]
    page.wait_for_function(
        f"() => document.querySelector('.att-cost').textContent === '{high['tokens']} tokens'"
    )
    page.fill("#prompt", "What is in this picture?")
    page.wait_for_function(
        "() => /With this message: \\d+ prompt tokens/.test("
        "document.getElementById('draft-cost').textContent)"
    )
    set_params(page, max_tokens=40)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as response:
        body = send(page, "What is in this picture?")
    answer = wait_answers(page, 1)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    part = body["messages"][0]["content"][0]
    assert part["image_url"]["detail"] == "high"
    frames = [f for f in response.value.text().split("\n\n") if f.startswith("data: {")]
    assert len(frames) > 5  # streamed token by token, not in one piece
    # stream_options.include_usage: the last chunk carries the totals (a final chunk with
    # choices [] in OpenAI's shape; Step's running usage on every chunk until then)
    assert json.loads(frames[-1][6:])["usage"]["completion_tokens"] > 0
    stats = answer.locator(".stats").inner_text()
    assert f"image {high['tokens']}" in stats and "completion" in stats
    assert re.search(r"TTFT \d+ ms", stats) and re.search(r"[\d.]+ tok/s", stats)
    assert answer.locator(".content").inner_text().strip()


def test_stop_aborts_the_generation_on_the_server(page: Any, live: ServerProcess) -> None:
    set_params(page, max_tokens=7000)
    send(page, "Tell me a very long story.")
    page.wait_for_selector(".turn.assistant .content:not(:empty)")
    deadline = time.monotonic() + 30
    while running(live) == 0:
        assert time.monotonic() < deadline, "the generation never showed as running"
        time.sleep(0.1)
    page.click("#stop")
    deadline = time.monotonic() + 20
    while running(live) != 0:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.1)
    answer = wait_answers(page, 1)
    assert "stopped by you" in answer.locator(".stats").inner_text()
    assert page.is_visible("#send") and not page.is_visible("#stop")


def test_json_mode_answer_is_pretty_printed_and_validates(page: Any) -> None:
    page.click("#json-panel summary")
    page.check("input[name=format][value=json_schema]")
    page.fill("#schema", json.dumps(WEATHER))
    assert "✓" in page.inner_text("#schema-status")
    set_params(page, max_tokens=120, seed=3, temperature=1, n=2)
    body = send(page, "Weather as JSON")
    assert body["response_format"]["json_schema"]["schema"] == WEATHER and body["n"] == 2
    answer = wait_answers(page, 1)
    assert answer.locator(".choice").count() == 2
    for k in range(2):
        choice = answer.locator(".choice").nth(k)
        verdict = choice.locator(".json-check").inner_text()
        assert "✓ valid JSON" in verdict and "✓ matches schema" in verdict
        shown = choice.locator(".content pre").inner_text()
        assert "\n" in shown  # pretty-printed
        jsonschema.validate(json.loads(shown), WEATHER)


def test_tool_call_becomes_a_card_and_the_conversation_continues(page: Any) -> None:
    page.click("#tools-panel summary")
    page.fill("#tools", json.dumps(TOOLS))
    page.select_option("#tool-choice", "required")
    set_params(page, max_tokens=80, seed=5)
    first = send(page, "What is the weather in Paris?")
    assert first["tools"] == TOOLS and first["tool_choice"] == "required"
    answer = wait_answers(page, 1)
    card = answer.locator(".tool-card").first
    assert "get_weather" in card.locator(".tool-title").inner_text()
    jsonschema.validate(json.loads(card.locator(".tool-args").inner_text()), WEATHER)
    card.locator("textarea").fill('{"sky": "clear", "temp_c": 21}')
    page.select_option("#tool-choice", "none")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request:
        page.click("text=Send tool results")
    second = request.value.post_data_json
    tool_message = second["messages"][-1]
    call = second["messages"][-2]["tool_calls"][0]
    assert tool_message == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": '{"sky": "clear", "temp_c": 21}',
    }
    wait_answers(page, 2)
    assert "get_weather" in page.locator(".turn.tool").inner_text()
    assert not page.locator(".turn-error:not(:empty)").count()


def test_oversized_image_error_is_shown_next_to_its_turn(page: Any) -> None:
    attach(page, png((5000, 20)), "wide.png")
    settle_attachments(page)
    assert "5000x20" in page.inner_text(".att-error")  # refused before sending, with the reason
    send(page, "What is this?")
    page.wait_for_selector(".turn.user.has-error")
    error = page.inner_text(".turn.user .turn-error")
    assert error.startswith("400 image_too_large") and "4096" in error
    assert page.locator(".turn.assistant").count() == 0
    assert page.is_visible(".turn.user .edit")  # the way to fix it: edit and resend


def test_dropped_and_pasted_images_are_attached(page: Any) -> None:
    picture = list(png())
    for event in ("drop", "paste"):
        page.evaluate(
            """([kind, bytes]) => {
            const file = new File([new Uint8Array(bytes)], kind + '.png', {type: 'image/png'});
            const data = new DataTransfer();
            data.items.add(file);
            const init = {bubbles: true, cancelable: true};
            if (kind === 'drop') {
                window.dispatchEvent(new DragEvent('dragenter', {...init, dataTransfer: data}));
                window.dispatchEvent(new DragEvent('drop', {...init, dataTransfer: data}));
            } else {
                document.getElementById('prompt').dispatchEvent(
                    new ClipboardEvent('paste', {...init, clipboardData: data}));
            }
        }""",
            [event, picture],
        )
    settle_attachments(page)
    names = page.locator(".att-name").all_inner_texts()
    assert names == ["drop.png", "paste.png"]
    assert page.locator(".att-cost").all_inner_texts()[0].endswith(" tokens")
    assert page.is_hidden("#drop-overlay")


def test_video_is_counted_for_video_models_and_refused_for_others(page: Any) -> None:
    from tests.media.videos import encode

    clip = {"name": "clip.mp4", "mimeType": "video/mp4", "buffer": encode("MP4", size=(96, 64))}
    page.select_option("#model", "step-1o-turbo-vision")
    page.set_input_files("#file-input", files=[clip])
    settle_attachments(page)
    assert re.fullmatch(r"\d+ tokens", page.inner_text(".att-cost"))
    assert page.locator(".attachment .thumb video").count() == 1
    assert page.is_hidden(".attachment .detail-label")  # detail is for images
    page.select_option("#model", "step-1v-8k")
    page.wait_for_selector(".attachment.is-error")
    assert "does not accept video" in page.inner_text(".att-error")


def test_edit_and_resend_replaces_the_last_user_turn(page: Any) -> None:
    attach(page, png())
    settle_attachments(page)
    set_params(page, max_tokens=8)
    send(page, "first question")
    wait_answers(page, 1)
    page.click(".turn.user .edit")
    assert page.locator(".turn").count() == 0
    assert page.input_value("#prompt") == "first question"
    settle_attachments(page)
    assert page.locator(".attachment").count() == 1
    body = send(page, "second question")
    wait_answers(page, 1)
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"][-1] == {"type": "text", "text": "second question"}
    assert body["messages"][0]["content"][0]["type"] == "image_url"


def test_show_code_reproduces_the_same_request(page: Any, live: ServerProcess) -> None:
    attach(page, png())
    settle_attachments(page)
    set_params(page, max_tokens=16, seed=11, temperature=0.7)
    send(page, "Describe the picture.")
    wait_answers(page, 1)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as response:
        sent = send(page, "And the colours?")
    wait_answers(page, 2)
    streamed = "".join(
        choice["delta"].get("content") or ""
        for frame in response.value.text().split("\n\n")
        if frame.startswith("data: {")
        for choice in json.loads(frame[6:])["choices"]
    )
    page.click("#show-code")
    python = page.text_content("#code-python")
    assert f'base_url="{live.api}"' in python
    run = subprocess.run(
        [sys.executable, "-c", python], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.startswith(streamed + "\n")  # the same request, so the same answer
    page.click("#tab-curl")
    curl = page.text_content("#code-curl")
    body = json.loads(curl.split("<<'JSON'\n", 1)[1].rsplit("\nJSON", 1)[0])
    expected = {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
    assert body == expected
    if shutil.which("curl"):
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        assert json.loads(out.stdout)["choices"][0]["message"]["content"] == streamed


def test_markdown_renders_code_and_tables_and_never_html(page: Any) -> None:
    source = (
        "# Title\n\n| a | b |\n|---|--:|\n| 1 | **2** |\n\n```python\nprint('<b>')\n```\n"
        "<img src=x onerror=alert(1)> [x](javascript:alert(1)) [ok](https://example.com)"
    )
    html = page.evaluate(
        "async (text) => (await import('/playground/markdown.js')).renderMarkdown(text)", source
    )
    assert "<table>" in html and '<td class="align-right"><strong>2</strong></td>' in html
    assert '<pre class="code-block" data-lang="python"><code>print(&#39;&lt;b&gt;&#39;)' in html
    assert "<img" not in html and 'href="javascript' not in html
    assert '<a href="https://example.com" target="_blank" rel="noopener noreferrer">' in html


def test_every_control_has_a_label_and_text_has_contrast(page: Any) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(el => el.type !== 'hidden' && !el.hidden)
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
            && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON'
            && el.textContent.trim()))
        .map(el => el.id || el.outerHTML.slice(0, 60))"""
    )
    assert unlabelled == []
    ratios = page.evaluate(
        """() => {
        const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = c => { const [r, g, b] = c.map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const ratio = (a, b) => { const [x, y] = [lum(rgb(a)), lum(rgb(b))].sort((p, q) => q - p);
            return (x + 0.05) / (y + 0.05); };
        const style = id => getComputedStyle(document.getElementById(id));
        const body = getComputedStyle(document.body);
        return {
            text: ratio(body.color, body.backgroundColor),
            limits: ratio(style('model-limits').color, getComputedStyle(
                document.querySelector('.topbar')).backgroundColor),
            send: ratio(style('send').color, style('send').backgroundColor),
        }; }"""
    )
    assert min(ratios.values()) >= 4.5, ratios  # WCAG AA for normal text
    page.focus("#prompt")
    page.keyboard.press("Tab")  # keyboard reaches the buttons after the message box
    assert page.evaluate("document.activeElement.id") == "attach"


def test_phone_screen_has_no_sideways_scroll_and_settings_open(
    live: ServerProcess, chromium: Any
) -> None:
    with new_page(chromium, width=390, height=844) as page:
        for _ in _opened(page, live.base_url):
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            assert not page.is_visible("#settings")
            page.click("#toggle-settings")
            assert page.is_visible("#temperature")
            assert page.get_attribute("#toggle-settings", "aria-expanded") == "true"


def test_api_key_field_appears_when_the_server_requires_keys(chromium: Any) -> None:
    settings = Settings(server={"api_keys": ["sekret"]})
    server, fake = start_fake_server(settings, FakeEngine())
    with server, new_page(chromium) as page:
        page.goto(fake.base_url + "/")
        page.wait_for_selector("#key-bar", state="visible")
        assert "Missing API key" in page.inner_text("#key-note")
        assert page.locator("#model option").count() == 0
        page.fill("#api-key", "sekret")
        page.click("#save-key")
        page.wait_for_selector("#model option", state="attached")
        stored = page.evaluate("[sessionStorage.getItem('vlmserve.apiKey'), localStorage.length]")
        assert stored == ["sekret", 0]  # the tab's session only, never persistent storage
        page.reload()
        page.wait_for_selector("#model option", state="attached")
        assert page.input_value("#api-key") == "sekret"


def test_readme_screenshot_script_finishes_its_conversation(page: Any, tmp_path: Path) -> None:
    shot = tmp_path / "playground.png"
    finished_conversation(page, shot)
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert page.locator(".turn.assistant.done").count() == 2
    assert page.locator(".turn-error:not(:empty)").count() == 0
