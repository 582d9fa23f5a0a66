"""The README's picture of the playground: a finished conversation, taken in Chromium.

    .venv/bin/python -m tests.e2e.playground_screenshot docs/playground.png

It builds a tiny random-weight model, starts ``vlmserve serve`` on it and talks to it through the
page: a picture with a JSON-schema answer, then a tool call. The words are noise (random weights);
JSON mode's grammar is what keeps the answers' shape. ``test_playground`` runs the same steps.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.e2e.browser import png

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather at a place",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"enum": ["Paris", "Rome", "Oslo"]},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    }
]


def finished_conversation(page: Any, path: Path) -> None:
    """On a loaded playground page: two turns, then a screenshot of the window to ``path``."""
    page.fill("#seed", "4")
    page.fill("#max_tokens", "120")
    page.click("#json-panel summary")
    page.check("input[name=format][value=json_schema]")
    files = [{"name": "hillside.png", "mimeType": "image/png", "buffer": png((640, 420))}]
    page.set_input_files("#file-input", files=files)
    page.wait_for_selector(".att-cost:not(:empty)")
    page.fill("#prompt", "What is in this picture? Answer with the schema.")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".turn.assistant.done")
    page.check("input[name=format][value=text]")
    page.click("#json-panel summary")  # fold it again: the tools panel is next
    page.click("#tools-panel summary")
    page.fill("#tools", json.dumps(TOOLS, indent=2))
    page.select_option("#tool-choice", "required")
    page.uncheck("#parallel-calls")
    page.evaluate("() => { document.getElementById('tools').scrollTop = 0; }")
    page.fill("#prompt", "What's the weather like there right now?")
    page.press("#prompt", "Enter")
    page.wait_for_function("() => document.querySelectorAll('.turn.assistant.done').length === 2")
    page.fill(".tool-result-input", '{"sky": "clear", "temp_c": 21}')
    beach = png((800, 600), (90, 170, 230))
    page.set_input_files(
        "#file-input", files=[{"name": "beach.png", "mimeType": "image/png", "buffer": beach}]
    )
    page.select_option(".attachment .att-detail", "high")
    page.wait_for_function(
        "() => /\\(high\\)/.test(document.querySelector('.att-size').textContent)"
    )
    page.fill("#prompt", "And this one?")
    page.evaluate("document.activeElement.blur()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


def main(out: str) -> int:
    from tests.e2e.browser import browser, new_page
    from tests.e2e.conftest import ServerProcess
    from vlmserve.dummy import make_dummy_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_dummy_model(Path(tmp) / "model", "idefics3", "tiny")
        server = ServerProcess(model)
        try:
            server.wait_ready()
            with browser(Path(tmp) / "profile") as context, new_page(context, 1280, 1260) as page:
                page.goto(server.base_url + "/")
                page.wait_for_selector("#model option", state="attached")
                finished_conversation(page, Path(out))
        finally:
            server.stop()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/playground.png"))
