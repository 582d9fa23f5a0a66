"""Playwright on Debian's Chromium (Playwright's own browser downloads are not used).

Without Chromium or Playwright the browser tests skip, saying how to install them; with
``VLMSERVE_REQUIRE_BROWSER=1`` (CI, see .ci/run) they fail instead, so CI always runs them.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

INSTALL = (
    "browser tests need Chromium and Playwright: `sudo apt-get install -y chromium`, and "
    "Playwright from the test extra (`make install`); VLMSERVE_REQUIRE_BROWSER=1 makes this an "
    "error instead of a skip"
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _unavailable(reason: str) -> None:
    if os.environ.get("VLMSERVE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; {INSTALL}")
    pytest.skip(f"{reason}; {INSTALL}")


def require_browser() -> str:
    """The Chromium executable; skips (or fails in CI) when Chromium or Playwright is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed")
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium executable found")
    assert executable is not None
    return executable


@contextmanager
def browser(user_data_dir: Path) -> Iterator[Any]:
    """Chromium with a fresh profile (``user_data_dir`` must not exist yet): a browser context."""
    from playwright.sync_api import sync_playwright

    executable = require_browser()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=executable,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            context.set_default_timeout(120_000)  # a shared, loaded CI machine
            yield context
        finally:
            context.close()


@contextmanager
def new_page(context: Any, width: int = 1280, height: int = 860) -> Iterator[Any]:
    """A new tab (its own session storage) in ``context``."""
    page = context.new_page()
    page.set_viewport_size({"width": width, "height": height})
    try:
        yield page
    finally:
        page.close()


def png(size: tuple[int, int] = (400, 300), color: tuple[int, int, int] = (40, 110, 200)) -> bytes:
    """A small picture: a sky, a sun and a hill, so a screenshot shows something recognisable."""
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    w, h = size
    if w >= 40 and h >= 40:
        draw.ellipse((w * 0.62, h * 0.12, w * 0.82, h * 0.12 + w * 0.2), fill=(250, 210, 60))
        hill = [(0, h), (0, h * 0.7), (w * 0.4, h * 0.5), (w, h * 0.75), (w, h)]
        draw.polygon(hill, (60, 150, 70))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
