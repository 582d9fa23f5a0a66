"""Hostile and careless bodies over HTTP (fake engine): each is a 400 naming what to change,
never a 500, and a hopeless request never reaches the engine."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.test_chat import assert_error, chat
from tests.conftest import LiveServer
from tests.fakes import MAX_MODEL_LEN
from vlmserve.protocol.limits import MAX_SCHEMA_DEPTH
from vlmserve.serving.prepare import MAX_CHARS_PER_TOKEN

SURROGATE_BODY = '{"model": "step-1v-8k", "messages": [{"role": "user", "content": [{"type": "text", "text": "a \\ud800 b"}]}]}'  # noqa: E501


def post_raw(http: httpx.Client, path: str, raw: str) -> httpx.Response:
    return http.post(path, content=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/token/count"])
def test_lone_surrogate_is_400_naming_message_and_part(http: httpx.Client, path: str) -> None:
    err = assert_error(post_raw(http, path, SURROGATE_BODY), 400, "messages[0].content[0].text")
    assert "surrogate" in err["message"]


def test_lone_surrogate_in_a_dict_key_is_400_not_an_unencodable_error(http: httpx.Client) -> None:
    raw = '{"model": "m", "messages": [{"role": "user", "content": "x"}], "z": {"\\udc00": 1}}'
    err = assert_error(post_raw(http, "/v1/chat/completions", raw), 400, "z.\\udc00")
    assert "surrogate" in err["message"]


def test_deeply_nested_schema_is_400_saying_the_limit(http: httpx.Client) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(450):
        schema = {"type": "object", "properties": {"a": schema}}
    rf = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    resp = http.post(
        "/v1/chat/completions",
        content=json.dumps(
            {
                "model": "step-1v-8k",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": rf,
            }
        ),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"].startswith("response_format.json_schema.schema.properties.a")
    assert "levels deep" in err["message"]


def test_schema_nested_past_the_schema_limit_names_it(http: httpx.Client) -> None:
    params: dict[str, object] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH // 2 + 1):
        params = {"type": "object", "properties": {"a": params}}
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    resp = chat(http, tools=[tool])
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"].startswith("tools[0].function.parameters")
    assert f"at most {MAX_SCHEMA_DEPTH} levels" in err["message"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_above_the_context_window_is_400_naming_the_window(
    http: httpx.Client, field: str
) -> None:
    err = assert_error(chat(http, **{field: 10**30}), 400, field)
    assert str(MAX_MODEL_LEN) in err["message"]


def test_max_tokens_within_the_window_but_over_what_the_prompt_leaves_is_capped(
    http: httpx.Client,
) -> None:
    resp = chat(http, max_tokens=MAX_MODEL_LEN)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("temperature", [1e-300, 2.2e-309, 5e-324, 1e-6])
def test_tiny_temperature_is_greedy(
    http: httpx.Client, fake_server: LiveServer, temperature: float
) -> None:
    assert chat(http, temperature=temperature).status_code == 200
    assert fake_server.engine.requests[-1].sampling.temperature == 0.0


def test_ordinary_temperature_is_kept(http: httpx.Client, fake_server: LiveServer) -> None:
    assert chat(http, temperature=0.01).status_code == 200
    assert fake_server.engine.requests[-1].sampling.temperature == 0.01


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400(http: httpx.Client, value: str) -> None:
    raw = '{"model": "step-1v-8k", "messages": [{"role": "user", "content": "x"}], "temperature": '
    assert_error(post_raw(http, "/v1/chat/completions", raw + value + "}"), 400, "temperature")


@pytest.mark.parametrize("seed", [2**64, -(2**64), 10**40])
def test_seed_outside_64_bits_is_400(http: httpx.Client, seed: int) -> None:
    assert_error(chat(http, seed=seed), 400, "seed")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/token/count"])
def test_hopeless_huge_prompt_is_refused_before_reaching_the_engine(
    http: httpx.Client, fake_server: LiveServer, path: str
) -> None:
    before = len(fake_server.engine.requests)
    text = "x" * (MAX_MODEL_LEN * MAX_CHARS_PER_TOKEN + 1)
    body = {"model": "step-1v-8k", "messages": [{"role": "user", "content": text}]}
    err = assert_error(http.post(path, json=body), 400, "messages", "context_length_exceeded")
    assert str(MAX_MODEL_LEN) in err["message"]
    assert len(fake_server.engine.requests) == before


def test_escaped_surrogate_inside_replayed_tool_arguments_is_400(http: httpx.Client) -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a": "\\ud800"}'},
    }
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    err = assert_error(
        chat(http, messages=messages), 400, "messages[1].tool_calls[0].function.arguments.a"
    )
    assert "surrogate" in err["message"]
