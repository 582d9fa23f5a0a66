"""Schemathesis hooks for tests/e2e/test_openapi_fuzz.py (loaded with ``SCHEMATHESIS_HOOKS``).

A generated chat or token-count body names a random model, which the server refuses before
reading anything else; the hook names a served model instead, so the fuzzer's bodies reach
rendering, media intake, grammar preparation and the engine."""

from __future__ import annotations

from typing import Any

import schemathesis

MODEL = "step-1v-8k"


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if isinstance(body, dict) and "model" in body:
        body["model"] = MODEL
    return body
