"""Grammar-constrained decoding (xgrammar): JSON mode, JSON schemas and tool calls.

``grammar_spec`` turns a request's output constraints into a ``GrammarSpec`` (what to compile);
``Grammars`` compiles specs for one loaded model and caches them by spec (a schema compiles once);
``GrammarProcessor`` is a sequence's logits processor: each choice has its own matcher, which
catches up with the tokens its choice sampled, then masks every token the grammar would reject.
When the grammar is complete only the stop tokens remain, so the choice ends with ``stop``.

Grammars by request:

- ``json_object``: any JSON object; ``json_schema``: the schema, always closed as vLLM compiles it
  (``strict`` or not): no properties the schema does not name, unless it allows them itself
  (``additionalProperties``, ``patternProperties``). A schema sent without ``strict`` is what
  instructor's JSON_SCHEMA mode sends; left open, random keys ran answers to ``max_tokens``.
- tools with ``tool_choice`` named: exactly one call of that tool; ``required``: one or more calls
  (``parallel_tool_calls=false``: exactly one) and nothing else; ``auto``: free text in which each
  call, once the model writes the tool format's trigger (``<tool_call>``), must complete as a valid
  call of a declared tool with arguments matching its schema. ``auto`` with a JSON
  ``response_format``: either that JSON or calls. ``none``: no grammar for tools.

JSON comes compact: one space after ``:`` and ``,`` and no other whitespace (xgrammar's
``any_whitespace`` off, vLLM's ``disable-any-whitespace``), in JSON mode and tool arguments alike.
Those are ``json.dumps``'s separators, the spacing of the tool calls in the Hermes prompt format;
free whitespace let constrained sampling wander into ``\r``, ``\t`` and runs of newlines.
Structural tags (tools) take no whitespace switch, so their JSON parts are compiled to the same
closed, compact EBNF first (``_compact_json``).

Two xgrammar 0.2.8 gaps are closed here: special tokens other than the stop tokens are taken out of
the vocabulary it sees (it would otherwise let ``<|im_start|>`` or ``<image>`` appear inside JSON
strings), and a string's ``minLength``/``maxLength`` becomes an equivalent ``pattern`` (its own
length rule lets control characters into strings, which is not JSON).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import xgrammar as xgr
from xgrammar import structural_tag as st

from vlmserve.engine.local.tool_format import ToolFormat
from vlmserve.engine.types import GenerationRequest
from vlmserve.errors import InternalError, InvalidRequestError

MAX_CACHED_GRAMMARS = 256
COMPILE_THREADS = 2


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """What to compile; equal specs compile to the same grammar (the cache key)."""

    kind: Literal["json_schema", "structural_tag"]
    source: str  # JSON text of the schema or of the structural tag
    param: str = field(default="response_format", compare=False)  # named by compile errors


def grammar_spec(request: GenerationRequest, fmt: ToolFormat) -> GrammarSpec | None:
    """The grammar a request needs, or None when its output is free text."""
    schema = _response_schema(request.response_format)
    if request.tools and request.tool_choice != "none":
        tag = _tools_format(request, fmt, schema)
        source = st.StructuralTag(format=tag).model_dump_json()
        return GrammarSpec("structural_tag", source, param="tools")
    if schema is None:
        return None
    return GrammarSpec("json_schema", json.dumps(schema, ensure_ascii=False))


def uses_tools(request: GenerationRequest) -> bool:
    """Will the model's text be read for tool calls?"""
    return bool(request.tools) and request.tool_choice != "none"


def _response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") == "text":
        return None
    if response_format["type"] == "json_object":
        return {"type": "object"}
    return prepare_schema(response_format["json_schema"]["schema"])


def _tools_format(request: GenerationRequest, fmt: ToolFormat, schema: Any) -> Any:
    tools = [t["function"] for t in request.tools or ()]
    choice = request.tool_choice or "auto"
    if isinstance(choice, dict):
        named = choice["function"]["name"]
        return _call_tag(fmt, next(t for t in tools if t["name"] == named))
    calls = st.TagsWithSeparatorFormat(
        tags=[_call_tag(fmt, t) for t in tools],
        separator=fmt.separator,
        at_least_one=True,
        stop_after_first=not request.parallel_tool_calls,
    )
    if choice == "required":
        return calls
    if schema is not None:  # auto with JSON mode: the JSON answer or calls
        return st.OrFormat(elements=[_json_content(schema), calls])
    return st.TriggeredTagsFormat(
        triggers=[fmt.trigger],
        tags=calls.tags,
        stop_after_first=not request.parallel_tool_calls,
    )


def _call_tag(fmt: ToolFormat, function: dict[str, Any]) -> st.TagFormat:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return st.TagFormat(
        begin=fmt.call_begin(function["name"]),
        content=_json_content(prepare_schema(parameters)),
        end=fmt.call_end,
    )


def _json_content(schema: dict[str, Any]) -> st.JSONSchemaFormat:
    return st.JSONSchemaFormat(json_schema=schema)  # made closed and compact by ``_compile``


# --- schema rewriting ------------------------------------------------------------------------

_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_VALUES = (
    "items",
    "additionalProperties",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
)


# One unescaped JSON string character, as UTF-8 allows it: no control characters, quote or
# backslash, no surrogates (a negated class would also admit malformed byte sequences). The
# bounds are the characters themselves: xgrammar's regex reads no \U escape.
_JSON_CHAR = "[ !#-\\[\\]-\x7f\x80-\ud7ff\ue000-\U0010ffff]"


def prepare_schema(schema: Any) -> Any:
    """The schema as xgrammar should see it: same meaning, lengths as patterns (see module doc)."""
    if not isinstance(schema, dict):
        return schema
    out = {key: _prepare_child(key, value) for key, value in schema.items()}
    if not ("minLength" in out or "maxLength" in out) or "pattern" in out or "format" in out:
        return out
    kinds = out.get("type", "string")
    if kinds == "string" or kinds == ["string"]:  # no type: lengths constrain only strings
        return _length_as_pattern(out)
    if isinstance(kinds, list) and "string" in kinds:  # {"type": ["string", "null"], ...}
        others = {**out, "type": [k for k in kinds if k != "string"]}
        others.pop("minLength", None)
        others.pop("maxLength", None)
        return {"anyOf": [_length_as_pattern({**out, "type": "string"}), others]}
    return out


def _length_as_pattern(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    low, high = out.pop("minLength", 0), out.pop("maxLength", "")
    out["pattern"] = f"^{_JSON_CHAR}{{{low},{high}}}$"
    return out


def _prepare_child(key: str, value: Any) -> Any:
    if key in _SCHEMA_VALUES:
        return prepare_schema(value)
    if key in _SCHEMA_LISTS and isinstance(value, list):
        return [prepare_schema(v) for v in value]
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        return {name: prepare_schema(v) for name, v in value.items()}
    return value


# --- compiling -------------------------------------------------------------------------------


class Grammars:
    """Compiles grammars for one tokenizer, keeping the last ``MAX_CACHED_GRAMMARS`` by spec.

    ``compile`` is thread-safe and may run off the step thread: it only touches xgrammar's own
    objects. ``tokenizer_info`` reads the Hugging Face tokenizer, so the engine builds it once on
    the step thread (``prepare``) before the first compile.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self.num_hits = 0
        self.num_misses = 0
        self._info: xgr.TokenizerInfo | None = None
        self._compiler: xgr.GrammarCompiler | None = None
        self._cache: OrderedDict[GrammarSpec, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def is_prepared(self) -> bool:
        return self._compiler is not None

    def prepare(self) -> None:
        """Build the tokenizer's vocabulary view (a fraction of a second; once)."""
        if self._compiler is not None:
            return
        self._info = tokenizer_info(self.tokenizer, self.vocab_size, self.stop_token_ids)
        self._compiler = xgr.GrammarCompiler(
            self._info, max_threads=COMPILE_THREADS, cache_enabled=False
        )

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is not None:
                self._cache.move_to_end(spec)
                self.num_hits += 1
                return compiled
            self.prepare()
            assert self._compiler is not None
            with map_grammar_errors(spec.param):
                compiled = _compile(self._compiler, spec)
            self.num_misses += 1
            self._cache[spec] = compiled
            if len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
            return compiled

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def _compile(compiler: xgr.GrammarCompiler, spec: GrammarSpec) -> xgr.CompiledGrammar:
    if spec.kind == "structural_tag":
        tag = _compact_json(json.loads(spec.source))
        return compiler.compile_structural_tag(json.dumps(tag, ensure_ascii=False))
    return compiler.compile_json_schema(spec.source, any_whitespace=False, strict_mode=True)


def _compact_json(node: Any) -> Any:
    """A structural tag with each ``json_schema`` format replaced by the EBNF of the schema,
    closed and compact as ``compile_json_schema`` would make it (see the module doc)."""
    if isinstance(node, list):
        return [_compact_json(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema":  # a format node: the user's schema is not walked
        schema = json.dumps(node["json_schema"], ensure_ascii=False)
        grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True)
        return {"type": "grammar", "grammar": str(grammar)}
    return {key: _compact_json(value) for key, value in node.items()}


def tokenizer_info(tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> xgr.TokenizerInfo:
    """xgrammar's view of the vocabulary, with special tokens (but the stop tokens) left out.

    xgrammar treats a token whose text is empty as special and never allows it; Hugging Face
    vocabularies spell special tokens as text (``<|im_start|>``), so they are blanked here.
    """
    base = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids
    )
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    special |= set(tokenizer.all_special_ids)
    special -= set(stop_token_ids)
    encoded = [""] * vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < vocab_size and token_id not in special:
            encoded[token_id] = token
    return xgr.TokenizerInfo(
        encoded,
        base.vocab_type,
        vocab_size=vocab_size,
        stop_token_ids=stop_token_ids,
        add_prefix_space=base.add_prefix_space,
    )


@contextmanager
def map_grammar_errors(param: str) -> Iterator[None]:
    """xgrammar's compile errors (a schema or pattern it cannot read) → a 400 naming ``param``."""
    try:
        yield
    except (ValueError, RuntimeError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InvalidRequestError(
            f"{param}: the grammar engine cannot compile this schema: {detail}. "
            "Simplify the schema (a pattern without lookbehind, backreferences, \\b or \\p{...}).",
            param=param,
        ) from exc


# --- decoding --------------------------------------------------------------------------------


class GrammarProcessor:
    """A sequence's grammar: one matcher per choice; masks the logits of the live rows."""

    def __init__(self, compiled: xgr.CompiledGrammar, num_choices: int, vocab_size: int) -> None:
        self.matchers = [xgr.GrammarMatcher(compiled) for _ in range(num_choices)]
        self.num_accepted = [0] * num_choices
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(num_choices, vocab_size)

    def __call__(self, logits: torch.Tensor, rows: list[int], output_ids: list[list[int]]) -> None:
        needs_mask = False
        for i, (row, ids) in enumerate(zip(rows, output_ids, strict=True)):
            self._catch_up(row, ids)
            needs_mask |= self.matchers[row].fill_next_token_bitmask(self.bitmask, i)
        if not needs_mask:  # every row may take any token (free text of tool_choice=auto)
            return
        bitmask = self.bitmask[: len(rows)]
        if logits.device.type != "cpu":
            bitmask = bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size)

    def _catch_up(self, row: int, ids: list[int]) -> None:
        matcher = self.matchers[row]
        for token in ids[self.num_accepted[row] :]:
            if not matcher.accept_token(token):
                raise InternalError(f"the grammar rejected token {token}, which it had allowed")
        self.num_accepted[row] = len(ids)
