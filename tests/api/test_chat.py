"""The chat endpoint's contract over HTTP, on a fake engine (fast): shapes, errors, streaming."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_fake_server
from tests.fakes import FakeEngine
from vlmserve.settings import Settings

MODEL = "step-1o-turbo-vision"


def chat(http: httpx.Client, **body: object) -> httpx.Response:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}], **body}
    return http.post("/v1/chat/completions", json=payload)


def assert_error(
    resp: httpx.Response, status: int, param: str | None, code: str | None = None
) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert err["param"] == param
    if code:
        assert err["code"] == code
    assert err["message"]
    return err


def test_completion_has_step_shape_and_usage(http: httpx.Client) -> None:
    resp = chat(http)
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hi there",
        "tool_calls": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert usage["cached_tokens"] == 0
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "image_tokens": 0,
        "video_tokens": 0,
    }


def test_every_response_has_a_trace_id(http: httpx.Client) -> None:
    ids = {chat(http).headers["x-trace-id"], http.get("/nope").headers["x-trace-id"]}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)


def test_sampling_defaults_are_steps(http: httpx.Client, fake_server: LiveServer) -> None:
    chat(http)
    sampling = fake_server.engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.n) == (0.5, 0.9, 1)


def test_explicit_null_sampling_fields_mean_default(
    http: httpx.Client, fake_server: LiveServer
) -> None:
    assert chat(http, temperature=None, top_p=None, n=None).status_code == 200
    assert fake_server.engine.requests[-1].sampling.temperature == 0.5


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    assert chat(http, logit_bias={"1": 2}, foo="bar", agent="x").status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 0),
        ("top_p", 1.5),
        ("frequency_penalty", 1.5),
        ("frequency_penalty", -0.5),
        ("presence_penalty", 3),
        ("max_tokens", 0),
        ("n", 0),
        ("n", 100),
        ("stream", "yes please"),
        ("seed", "abc"),
        ("stop", 5),
        ("response_format", {"type": "xml"}),
        ("tool_choice", "sometimes"),
    ],
)
def test_invalid_parameter_is_400_naming_it(http: httpx.Client, field: str, value: object) -> None:
    resp = chat(http, **{field: value})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"].startswith(field)  # e.g. response_format.type
    assert err["type"] == "invalid_request_error"
    assert field in err["message"]


def test_empty_stop_string_is_400(http: httpx.Client) -> None:
    assert_error(chat(http, stop=["ok", ""]), 400, "stop")


def test_bad_message_is_400_naming_its_position(http: httpx.Client) -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url"}]}]
    err = assert_error(chat(http, messages=msgs), 400, "messages[1].content[0].image_url")
    assert "Field required" in err["message"]


def test_unknown_role_is_400(http: httpx.Client) -> None:
    assert_error(chat(http, messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0]")


def test_empty_messages_is_400(http: httpx.Client) -> None:
    assert_error(chat(http, messages=[]), 400, "messages")


def test_unknown_model_is_400_model_not_found(http: httpx.Client) -> None:
    err = assert_error(chat(http, model="gpt-5"), 400, "model", "model_not_found")
    assert "step-1v-8k" in err["message"]  # says what exists


def test_malformed_json_is_400(http: httpx.Client) -> None:
    resp = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    err = assert_error(resp, 400, None)
    assert "not valid JSON" in err["message"]


def test_missing_body_is_400(http: httpx.Client) -> None:
    assert_error(http.post("/v1/chat/completions"), 400, None)


def test_body_over_the_cap_is_413(http: httpx.Client) -> None:
    resp = chat(http, messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
    assert_error(resp, 413, None, "payload_too_large")


def test_unknown_path_is_404_envelope(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404, None, "not_found")


def test_audio_part_is_unsupported_content_type(http: httpx.Client) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "data:audio/mpeg;base64,AAAA"}}
    msgs = [{"role": "user", "content": [part]}]
    assert_error(
        chat(http, messages=msgs), 400, "messages[0].content[0]", "unsupported_content_type"
    )


def test_video_to_an_image_only_model_names_video_models(http: httpx.Client) -> None:
    part = {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}
    resp = chat(http, model="step-1v-8k", messages=[{"role": "user", "content": [part]}])
    err = assert_error(resp, 400, "messages[0].content[0].video_url", "unsupported_content_type")
    assert "step-1o-turbo-vision" in err["message"]


def test_prompt_over_context_window_is_400_with_both_numbers(http: httpx.Client) -> None:
    resp = chat(http, model="step-1v-8k", messages=[{"role": "user", "content": "w " * 5000}])
    err = assert_error(resp, 400, "messages", "context_length_exceeded")
    assert "5001" in err["message"] and "4096" in err["message"]


def test_max_tokens_cuts_with_length(http: httpx.Client) -> None:
    body = chat(http, max_tokens=2).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_n_choices(http: httpx.Client) -> None:
    body = chat(http, n=3).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 9


def sse_events(resp: httpx.Response) -> list[str]:
    lines = resp.text.split("\n\n")
    assert lines[-1] == ""
    return [line.removeprefix("data: ") for line in lines[:-1]]


def test_stream_framing_with_usage_null_on_every_chunk(http: httpx.Client) -> None:
    resp = chat(http, stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" in c and c["usage"] is None for c in chunks)  # OpenAI: null, not totals
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: hi there"


def stream_chunks(http: httpx.Client, **body: object) -> list[dict]:
    events = sse_events(chat(http, stream=True, **body))
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_include_usage_adds_one_usage_chunk_before_done(http: httpx.Client) -> None:
    billed = chat(http).json()["usage"]
    chunks = stream_chunks(http, stream_options={"include_usage": True})
    *content, last = chunks
    assert last["choices"] == [] and last["usage"] == billed
    assert all(c["usage"] is None and c["choices"] for c in content)


def test_continuous_usage_stats_gives_running_totals(http: httpx.Client) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = stream_chunks(http, stream_options=options)
    running = [c["usage"]["completion_tokens"] for c in chunks]
    assert running == sorted(running) and running[-1] == 3
    assert chunks[-1]["choices"] == []  # include_usage still adds its last chunk


def test_step_setting_gives_running_usage_to_every_client() -> None:
    settings = Settings(server={"stream_usage": "step"})
    server, live = start_fake_server(settings, FakeEngine())
    with server, httpx.Client(base_url=live.base_url, timeout=30) as http:
        for options in (None, {"include_usage": True}):
            chunks = stream_chunks(http, stream_options=options)
            running = [c["usage"]["completion_tokens"] for c in chunks]
            assert running == sorted(running) and running[-1] == 3
            assert all(c["choices"] for c in chunks)  # Step sends no usage-only chunk


def test_openai_sdk_sync_and_stream(fake_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=fake_server.api, api_key="unused")
    done = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b"}]
    )
    assert done.choices[0].message.content == "echo: a b"
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b"}], stream=True, n=2
    )
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == ["echo: a b", "echo: a b"]


def test_openai_sdk_raises_bad_request_for_bad_input(fake_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=fake_server.api, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "a"}])
    assert info.value.code == "model_not_found"


def test_models_list_and_retrieve(http: httpx.Client) -> None:
    data = http.get("/v1/models").json()["data"]
    ids = [m["id"] for m in data]
    assert ids == ["step-1o-turbo-vision", "step-1o-vision-32k", "step-1v-8k", "step-1v-32k"]
    turbo = http.get("/v1/models/step-1o-turbo-vision").json()
    assert turbo["max_images"] == 60 and "video" in turbo["input_modalities"]
    assert turbo["context_window"] == 4096  # the bound model's window is smaller than 32k
    assert turbo["object"] == "model" and turbo["owned_by"] == "stepai"
    assert_error(http.get("/v1/models/gpt-5"), 404, "model", "model_not_found")


def test_token_count_equals_billed_prompt_tokens(http: httpx.Client) -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}]
    counted = http.post("/v1/token/count", json={"model": MODEL, "messages": msgs}).json()
    billed = chat(http, messages=msgs).json()["usage"]["prompt_tokens"]
    assert counted == {"data": {"total_tokens": billed, "image_tokens": 0, "video_tokens": 0}}


def test_health_and_ready(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200


def test_openapi_docs_are_served(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]
