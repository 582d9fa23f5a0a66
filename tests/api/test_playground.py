"""``GET /`` and its files: served from the package, offline, locked to this origin."""

from __future__ import annotations

import re

import httpx


def test_root_serves_the_playground_with_a_same_origin_policy(http: httpx.Client) -> None:
    resp = http.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    policy = resp.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self'" in policy  # no inline or remote script can run


def test_every_file_the_page_references_is_served_and_none_is_remote(http: httpx.Client) -> None:
    seen: set[str] = set()
    queue = ["/"]
    while queue:
        path = queue.pop()
        resp = http.get(path)
        assert resp.status_code == 200, path
        text = resp.text.replace("http://www.w3.org/2000/svg", "")  # a namespace, not a fetch
        assert re.search(r"https?://", text) is None, path  # no CDN: the page works offline
        refs = re.findall(r"""(?:src|href)="(/playground/[\w.-]+)"|from "\./([\w.-]+)\"""", text)
        for absolute, relative in refs:
            target = absolute or f"/playground/{relative}"
            if target not in seen:
                seen.add(target)
                queue.append(target)
    assert {"/playground/playground.js", "/playground/markdown.js"} <= seen


def test_files_outside_the_playground_are_not_reachable(http: httpx.Client) -> None:
    for path in ("/playground/..%2fapp.py", "/playground/__init__.py", "/playground/missing.js"):
        assert http.get(path).status_code == 404
