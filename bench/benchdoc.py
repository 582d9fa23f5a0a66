"""Shared by the benchmark scripts: (re)write one ``## section`` of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, body: str) -> None:
    """Replace the section headed ``section`` (up to the next ``## ``) by ``body``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(section)
    if start >= 0:
        end = text.find("\n## ", start + len(section))
        text = text[:start] + body + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")
