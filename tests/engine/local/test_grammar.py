"""Grammar-constrained decoding on random-weight models: valid output comes only from the grammar.

Engine tests sample at temperature 1 with top_p 1 from tiny dummy models of both families (one
request with many choices stands for many seeded runs: each choice has its own matcher and draws).
Grammar tests drive ``GrammarProcessor`` with random logits over a dummy tokenizer, no model.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from tests.engine.local.helpers import Result, generate, image_prompt, request, text_prompt
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.grammar import (
    GrammarProcessor,
    Grammars,
    GrammarSpec,
    grammar_spec,
    prepare_schema,
)
from vlmserve.engine.local.tool_format import HERMES_TOOLS, ToolCallParser
from vlmserve.engine.types import FinishReason, GenerationRequest, ToolCallDelta
from vlmserve.errors import InvalidRequestError
from vlmserve.serving.tools import check_schema

# Small enough to finish well inside max_tokens; every keyword is covered by the grammar tests.
PET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string", "minLength": 1, "maxLength": 4},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        "owner": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/owner"}]},
    },
    "required": ["kind", "age", "name", "tags", "owner"],
    "additionalProperties": False,
    "$defs": {
        "owner": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["id"],
            "additionalProperties": False,
        }
    },
}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
EMPTY: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
TOOLS = (
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "ping", "parameters": EMPTY}},
)
SCHEMAS = {"get_weather": WEATHER, "ping": EMPTY}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# Runs per family: SmolVLM's tokenizer spells a call's fixed text in ~2x the tokens, so fewer there.
RUNS = {"qwen2_vl": 52, "idefics3": 16}


def runs(engine: LocalEngine) -> int:
    assert engine._loaded is not None
    return RUNS[engine._loaded.model.config.model_type]


def json_mode(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}


def sampled(n: int, max_tokens: int, seed: int, **constraints: Any) -> GenerationRequest:
    base = request(text_prompt(), temperature=1.0, top_p=1.0, n=n, max_tokens=max_tokens, seed=seed)
    return replace(base, **constraints)


def calls_of(result: Result) -> dict[int, list[tuple[str, str]]]:
    calls: dict[int, list[tuple[str, str]]] = {}
    for event in result.events:
        if isinstance(event, ToolCallDelta):
            mine = calls.setdefault(event.index, [])
            if event.id is not None:
                assert event.id.startswith("call_")
                mine.append((event.name or "", ""))
            name, arguments = mine[event.call_index]
            mine[event.call_index] = (name, arguments + event.arguments)
    return calls


def assert_valid_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


# --- the engine, end to end ------------------------------------------------------------------


def test_json_schema_output_always_validates_at_temperature_1(engine: LocalEngine) -> None:
    n = runs(engine)
    req = replace(sampled(n, 100, seed=11), prompt=image_prompt(), response_format=json_mode(PET))
    result = generate(engine, req)
    assert set(result.finished.values()) == {FinishReason.STOP}, result.texts
    for index in range(n):
        jsonschema.validate(json.loads(result.texts[index]), PET)


def test_required_and_named_tool_calls_always_validate_at_temperature_1(
    engine: LocalEngine,
) -> None:
    n = runs(engine) // 2
    for choice, seed in (("required", 12), (NAMED, 13)):
        req = sampled(n, 100, seed, tools=TOOLS, tool_choice=choice)
        result = generate(engine, replace(req, parallel_tool_calls=False))
        calls = calls_of(result)
        for index in range(n):
            assert result.finished[index] is FinishReason.TOOL_CALLS
            assert result.texts.get(index, "") == ""  # calls never leak into content
            ((name, arguments),) = calls[index]
            assert name == "get_weather" or (choice == "required" and name == "ping")
            assert_valid_call(name, arguments)


def test_parallel_required_calls_each_validate(engine: LocalEngine) -> None:
    result = generate(engine, sampled(6, 100, seed=14, tools=TOOLS, tool_choice="required"))
    calls = calls_of(result)
    assert max(len(c) for c in calls.values()) > 1
    for index, mine in calls.items():
        cut = result.finished[index] is FinishReason.LENGTH
        for name, arguments in mine[:-1] if cut else mine:
            assert_valid_call(name, arguments)


def test_json_object_output_opens_an_object(engine: LocalEngine) -> None:
    # a random model rarely closes a free string (keys); completed objects: see the grammar tests
    result = generate(engine, sampled(4, 8, seed=15, response_format={"type": "json_object"}))
    assert all(text.lstrip().startswith("{") for text in result.texts.values())


def test_tool_choice_none_yields_no_calls(engine: LocalEngine) -> None:
    result = generate(engine, sampled(4, 20, seed=16, tools=TOOLS, tool_choice="none"))
    assert not calls_of(result)
    assert set(result.finished.values()) <= {FinishReason.STOP, FinishReason.LENGTH}


def test_complete_grammar_forces_stop(engine: LocalEngine) -> None:
    result = generate(engine, sampled(3, 50, seed=17, response_format=json_mode({"const": "ok"})))
    assert result.finished == dict.fromkeys(range(3), FinishReason.STOP)
    assert set(result.texts.values()) == {'"ok"'}


def test_max_tokens_cut_finishes_with_length(engine: LocalEngine) -> None:
    result = generate(engine, sampled(1, 3, seed=18, response_format=json_mode(PET)))
    assert result.finished == {0: FinishReason.LENGTH}


def test_a_schema_compiles_once(engine: LocalEngine) -> None:
    grammars = engine._grammars
    assert grammars is not None
    schema = {"type": "object", "properties": {"once": {"type": "boolean"}}, "required": ["once"]}
    generate(engine, sampled(1, 12, seed=19, response_format=json_mode(schema)))
    misses, hits = grammars.num_misses, grammars.num_hits
    generate(engine, sampled(1, 12, seed=20, response_format=json_mode(dict(schema))))
    assert (grammars.num_misses, grammars.num_hits) == (misses, hits + 1)


def test_a_pattern_the_grammar_cannot_read_is_a_400(engine: LocalEngine) -> None:
    fmt = json_mode({"type": "string", "pattern": "^(a)\\1$"})
    with pytest.raises(InvalidRequestError, match="cannot compile") as info:
        generate(engine, sampled(1, 5, seed=21, response_format=fmt))
    assert info.value.param == "response_format"


# --- the grammar on random logits ------------------------------------------------------------


@pytest.fixture(scope="module")
def grammars(tiny_models: dict[str, Path]) -> Grammars:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2_vl"])
    grammars = Grammars(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))
    grammars.prepare()
    return grammars


def sample_text(
    grammars: Grammars, spec: GrammarSpec, seed: int, steps: int = 80, bias: str = ""
) -> str | None:
    """Random-logit sampling under ``spec``; the text, or None if ``steps`` did not finish it."""
    text, finished = sample(grammars, spec, seed, steps, bias)
    return text if finished else None


def sample(
    grammars: Grammars, spec: GrammarSpec, seed: int, steps: int, bias: str = ""
) -> tuple[str, bool]:
    """(text, whether it ended) of random-logit sampling under ``spec``. ``bias``: text whose
    tokens are made far likelier (to make the "model" start a call)."""
    tokenizer = grammars.tokenizer
    processor = GrammarProcessor(grammars.compile(spec), 1, grammars.vocab_size)
    boost = tokenizer.encode(bias, add_special_tokens=False) if bias else []
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(steps):
        logits = torch.randn(1, grammars.vocab_size, generator=generator) * 3
        logits[0, boost] += 12.0
        processor(logits, [0], [ids])
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token in grammars.stop_token_ids:
            return str(tokenizer.decode(ids)), True
        ids.append(token)
    return str(tokenizer.decode(ids)), False


def schema_spec(schema: dict[str, Any]) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(prepare_schema(schema), ensure_ascii=False))


# Every keyword serving accepts, each in a schema whose outputs end quickly.
SUPPORTED = {
    "type-list": {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
    "enum-const": {"anyOf": [{"enum": ["x", 1, None]}, {"const": {"a": [1]}}]},
    "properties": {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "prefixItems": {"type": "array", "prefixItems": [{"type": "boolean"}], "items": False},
    "min-maxItems": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
    "bounds": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 7},
    "number-bounds": {"type": "number", "minimum": -1.5, "maximum": 2.25},
    "multipleOf": {"type": "integer", "multipleOf": 7, "minimum": 0, "maximum": 50},
    "lengths": {"type": "string", "minLength": 2, "maxLength": 4},
    "lengths-or-null": {"type": ["string", "null"], "minLength": 1, "maxLength": 3},
    "propertyNames-lengths": {
        "type": "object",
        "propertyNames": {"maxLength": 1},
        "additionalProperties": {"type": "boolean"},
        "maxProperties": 2,
    },
    "min-maxProperties": {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"type": "null"}},
        "minProperties": 2,
        "maxProperties": 2,
        "additionalProperties": False,
    },
    "pattern": {"type": "string", "pattern": "^[a-c]{2,3}$"},
    "format": {"type": "string", "format": "date"},
    "ref": {
        "$defs": {"b": {"type": "integer", "minimum": 0, "maximum": 3}},
        "type": "array",
        "items": {"$ref": "#/$defs/b"},
        "maxItems": 2,
    },
    "allOf-one": {"allOf": [{"type": "integer", "minimum": 0, "maximum": 3}]},
    "oneOf-discriminated": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"k": {"const": "a"}, "v": {"type": "boolean"}},
                "required": ["k", "v"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"k": {"const": "b"}},
                "required": ["k"],
                "additionalProperties": False,
            },
        ],
        "discriminator": {"propertyName": "k"},
    },
    "patternProperties": {
        "type": "object",
        "patternProperties": {"^x[0-9]$": {"type": "boolean"}},
        "additionalProperties": False,
        "maxProperties": 2,
    },
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_accepted_keyword_is_enforced(grammars: Grammars, name: str) -> None:
    schema = SUPPORTED[name]
    check_schema(schema, "schema")  # serving accepts it ...
    texts = [sample_text(grammars, schema_spec(schema), seed) for seed in range(25)]
    done = [t for t in texts if t is not None]
    assert len(done) >= 10
    for text in done:  # ... and the grammar holds it
        jsonschema.validate(json.loads(text), schema)


def test_json_object_is_any_object(grammars: Grammars) -> None:
    spec = grammar_spec(replace(request(), response_format={"type": "json_object"}), HERMES_TOOLS)
    assert spec is not None
    texts = [sample_text(grammars, spec, seed, steps=120) for seed in range(30)]
    done = [t for t in texts if t is not None]  # a free string (a key) rarely closes by chance
    assert len(done) >= 3
    assert all(isinstance(json.loads(t), dict) for t in done)
    assert any(json.loads(t) for t in done)  # not only {}


def test_string_lengths_never_admit_control_characters(grammars: Grammars) -> None:
    # xgrammar's own length rule lets \x00-\x1f into strings (not JSON); prepare_schema fixes it
    schema = {"type": "string", "minLength": 1, "maxLength": 3}
    for seed in range(40):
        text = sample_text(grammars, schema_spec(schema), seed)
        assert text is not None
        jsonschema.validate(json.loads(text), schema)


def test_string_lengths_count_characters_and_refuse_malformed_utf8(grammars: Grammars) -> None:
    compiled = grammars.compile(schema_spec({"type": "string", "minLength": 1, "maxLength": 2}))

    def accepts(raw: bytes) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return bool(matcher.accept_string(raw)) and bool(matcher.is_completed())

    assert accepts('"😀é"'.encode()) and accepts(b'"\x7f"')
    assert not accepts(b'"abc"')
    for malformed in (b'"\xed\xa0\x80"', b'"\xf0\x80\x80\x80"', b'"\xc0\xaf"'):
        assert not accepts(malformed)  # a surrogate, two overlong encodings


def test_special_tokens_are_never_allowed(grammars: Grammars) -> None:
    tokenizer = grammars.tokenizer
    processor = GrammarProcessor(
        grammars.compile(schema_spec({"type": "string"})), 1, grammars.vocab_size
    )
    logits = torch.zeros(1, grammars.vocab_size)
    processor(logits, [0], [tokenizer.encode('"', add_special_tokens=False)])
    special = set(tokenizer.all_special_ids) - set(grammars.stop_token_ids)
    assert special and all(logits[0, i] == float("-inf") for i in special)


def test_auto_completes_a_call_the_model_starts_under_the_grammar(grammars: Grammars) -> None:
    req = replace(request(), tools=TOOLS, tool_choice="auto")
    spec = grammar_spec(req, HERMES_TOOLS)
    assert spec is not None
    num_calls = 0
    for seed in range(12):
        text, _ = sample(grammars, spec, seed, steps=120, bias="<tool_call>")
        text = text[: text.rfind("</tool_call>") + len("</tool_call>")]  # the complete calls
        parser = ToolCallParser(HERMES_TOOLS, 0)
        pieces = parser.feed(text) + parser.finish()
        assert "<tool_call>" not in "".join(p for p in pieces if isinstance(p, str))
        calls: list[list[str]] = []
        for piece in pieces:
            if isinstance(piece, ToolCallDelta):
                if piece.id:
                    calls.append([piece.name or "", ""])
                calls[-1][1] += piece.arguments
        for name, arguments in calls:
            assert_valid_call(name, arguments)
        num_calls += len(calls)
    assert num_calls >= 6


def test_auto_with_json_mode_answers_json_or_calls(grammars: Grammars) -> None:
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    req = replace(request(), tools=TOOLS, tool_choice="auto", response_format=json_mode(answer))
    spec = grammar_spec(req, HERMES_TOOLS)
    assert spec is not None
    kinds = set()
    for seed in range(16):
        text = sample_text(grammars, spec, seed, steps=120, bias="<tool_call>" if seed % 2 else "")
        if text is None:
            continue
        parser = ToolCallParser(HERMES_TOOLS, 0)
        pieces = parser.feed(text) + parser.finish()
        content = "".join(p for p in pieces if isinstance(p, str))
        if parser.num_calls:
            assert content == ""
            kinds.add("calls")
        else:
            jsonschema.validate(json.loads(content), answer)
            kinds.add("json")
    assert kinds == {"calls", "json"}


# --- closed schemas and compact JSON (issue 11) -----------------------------------------------

OPEN_PET = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def between_tokens(text: str) -> str:
    """``text`` with every string literal emptied (a finished one or the one it ends in)."""
    return re.sub(r'"(?:[^"\\]|\\.)*("|$)', '""', text, flags=re.S)


def is_compact(text: str) -> bool:
    rest = between_tokens(text)
    return not set(rest) & {"\n", "\r", "\t"} and "  " not in rest


def accepts(grammars: Grammars, spec: GrammarSpec, text: str) -> bool:
    matcher = xgr.GrammarMatcher(grammars.compile(spec))
    return bool(matcher.accept_string(text)) and bool(matcher.is_completed())


@pytest.mark.parametrize("strict", [None, False, True])
def test_a_schema_without_strict_still_refuses_undeclared_keys(
    grammars: Grammars, strict: bool | None
) -> None:
    fields: dict[str, Any] = {"name": "x", "schema": OPEN_PET}
    if strict is not None:
        fields["strict"] = strict
    fmt = {"type": "json_schema", "json_schema": fields}
    spec = grammar_spec(replace(request(), response_format=fmt), HERMES_TOOLS)
    assert spec is not None
    assert accepts(grammars, spec, '{"name": "Rex"}')
    assert not accepts(grammars, spec, '{"name": "Rex", "colour": "red"}')


def test_a_schema_that_allows_more_keys_keeps_them(grammars: Grammars) -> None:
    schema = {**OPEN_PET, "additionalProperties": {"type": "integer"}}
    spec = schema_spec(schema)
    assert accepts(grammars, spec, '{"name": "Rex", "age": 3}')
    assert not accepts(grammars, spec, '{"name": "Rex", "age": "old"}')


def test_json_mode_allows_no_newlines_tabs_or_runs_of_spaces(grammars: Grammars) -> None:
    spec = grammar_spec(replace(request(), response_format={"type": "json_object"}), HERMES_TOOLS)
    assert spec is not None
    assert accepts(grammars, spec, '{"color": "red", "sizes": [1, 2]}')
    for loose in ('{\r"color":\r"red"}', '{"color":\t"red"}', '{\n"color": "red"}'):
        assert not accepts(grammars, spec, loose)
    assert not accepts(grammars, spec, '{"color":  "red"}')
    for seed in range(20):
        text, _ = sample(grammars, spec, seed, steps=60)
        assert is_compact(text), repr(text)


def test_tool_arguments_are_compact_and_closed(grammars: Grammars) -> None:
    spec = grammar_spec(replace(request(), tools=TOOLS, tool_choice=NAMED), HERMES_TOOLS)
    assert spec is not None
    begin, end = HERMES_TOOLS.call_begin("get_weather"), HERMES_TOOLS.call_end
    assert accepts(grammars, spec, begin + '{"city": "Oslo", "days": 2}' + end)
    assert not accepts(grammars, spec, begin + '{"city": "Oslo",\n"days": 2}' + end)
    assert not accepts(grammars, spec, begin + '{"city":\t"Oslo", "days": 2}' + end)
    assert not accepts(grammars, spec, begin + '{"city": "Oslo", "days": 2, "x": 1}' + end)
    num_done = 0
    for seed in range(10):
        text, done = sample(grammars, spec, seed, steps=120)
        arguments = text[len(begin) : -len(end) if done else None]
        assert is_compact(arguments), repr(arguments)
        if done:
            assert_valid_call("get_weather", arguments)
            num_done += 1
    assert num_done >= 3


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_accepted_keyword_is_enforced_in_tool_arguments(
    grammars: Grammars, name: str
) -> None:
    # tool arguments go through the EBNF conversion (_compact_json): nothing may be lost there
    value = dict(SUPPORTED[name])
    parameters = {
        "type": "object",
        "properties": {"v": value},
        "required": ["v"],
        "additionalProperties": False,
    }
    if "$defs" in value:  # references are to the root
        parameters["$defs"] = value.pop("$defs")
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    named = {"type": "function", "function": {"name": "f"}}
    spec = grammar_spec(replace(request(), tools=(tool,), tool_choice=named), HERMES_TOOLS)
    assert spec is not None
    begin, end = HERMES_TOOLS.call_begin("f"), HERMES_TOOLS.call_end
    done = [t for t in (sample_text(grammars, spec, seed, steps=100) for seed in range(12)) if t]
    assert len(done) >= 4
    for text in done:
        assert text.startswith(begin) and text.endswith(end)
        arguments = text[len(begin) : -len(end)]
        assert is_compact(arguments)
        jsonschema.validate(json.loads(arguments), parameters)
