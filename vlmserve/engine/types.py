"""What travels between ``serving`` and an engine: frozen domain objects, never wire models.

A ``GenerationRequest`` carries the conversation as ``Message``s whose parts are text or references
(by index) into ``Prompt.media``; the engine renders them with the bound model's own chat template
(local) or into an upstream payload (remote).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from PIL.Image import Image

Role = Literal["system", "user", "assistant", "tool"]


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class MediaPart:
    """A reference to ``Prompt.media[index]``, at this place in the message."""

    index: int


Part = TextPart | MediaPart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the client sent or the model produced it


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaInput:
    """One prepared image (``frames`` has one picture) or video (several frames, in order).

    ``identity`` is the content hash of the canonical pixels (see ``media/identity.py``): equal
    identities mean equal pixels, so every cache may key on it.
    """

    kind: Literal["image", "video"]
    frames: tuple[Image, ...]
    identity: str
    timestamps: tuple[float, ...] = ()  # seconds, one per frame, videos only
    fps: float | None = None  # sampled frames per second, videos only


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: tuple[Message, ...]
    media: tuple[MediaInput, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.5
    top_p: float = 0.9
    max_tokens: int | None = None  # None: whatever the context window leaves
    n: int = 1
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tenant: str = ""  # salts caches so tenants never share state
    # Output constraints as OpenAI JSON, validated and normalized by ``serving/tools.py``: the
    # local engine enforces them by grammar, a remote engine passes them on. None: not asked.
    # response_format: {"type": "json_object"} or {"type": "json_schema", "json_schema":
    # {"name", "schema", "strict"}} (never "text"); tools: {"type": "function", "function":
    # {"name", "description"?, "parameters"}} with an object-rooted ``parameters``;
    # tool_choice (set when tools are): "none" / "auto" / "required" / {"type": "function",
    # "function": {"name"}}.
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True  # False: at most one call per choice
    # The catalogue entry's context window; the engine uses the smaller of it and the model's own.
    context_window: int | None = None


@dataclass(frozen=True, slots=True)
class PromptUsage:
    prompt_tokens: int
    image_tokens: int = 0
    video_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Started:
    """First event of every generation: the prompt was accepted and measured."""

    usage: PromptUsage


@dataclass(frozen=True, slots=True)
class Delta:
    """New text for choice ``index``; ``num_tokens`` tokens were generated to produce it.

    ``text`` may be empty (a token that completes no character yet, or text held back because it
    may start a stop string).
    """

    index: int
    text: str
    num_tokens: int


@dataclass(frozen=True, slots=True)
class Finished:
    """Last event of choice ``index``.

    ``tool_calls``: the calls of this choice, complete, when the engine parsed them (remote
    upstreams that stream structured tool calls). An engine reports a choice's calls either
    here or as ``ToolCallDelta`` events (the local engine), never both. ``usage``: set on the
    last ``Finished`` of a generation by engines that learn the prompt's final usage only at the
    end (a vLLM replica reports ``cached_tokens`` in its last chunk); when set it supersedes
    ``Started.usage``.
    """

    index: int
    reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    usage: PromptUsage | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call ``call_index`` (0, 1, ... within choice ``index``), as it is generated.

    The first piece of a call carries its ``id`` and ``name``; every piece may carry
    ``arguments`` text, and a call's pieces concatenated give its arguments JSON. Tokens are
    counted on ``Delta`` events only (the local engine emits a ``Delta``, possibly with empty text,
    for every token, tool-call tokens included).
    """

    index: int
    call_index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


Event = Started | Delta | ToolCallDelta | Finished


@dataclass(frozen=True, slots=True)
class PromptCacheStats:
    """The automatic prompt cache of an engine that has one (the local engine): the prefix KV
    cache (256-token blocks) and the vision-encoder cache, counted since the engine started."""

    num_requests: int = 0  # prefills that looked their prompt up
    num_hit_requests: int = 0  # ... that reused at least one block
    num_prompt_tokens: int = 0  # prompt tokens of those prefills
    num_cached_tokens: int = 0  # ... served from the cache (usage.cached_tokens, summed)
    num_blocks: int = 0
    kv_bytes: int = 0  # memory the cached blocks hold
    kv_max_bytes: int = 0
    num_evicted_blocks: int = 0
    num_encoder_hits: int = 0  # media items whose features came from the encoder cache
    num_encoder_misses: int = 0  # ... that ran the vision tower
    encoder_bytes: int = 0
    encoder_max_bytes: int = 0
    num_evicted_encodings: int = 0

    @property
    def token_hit_rate(self) -> float:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

    @property
    def request_hit_rate(self) -> float:
        return self.num_hit_requests / self.num_requests if self.num_requests else 0.0


@dataclass(frozen=True, slots=True)
class EngineHealth:
    ready: bool
    detail: str
    max_model_len: int | None = None  # the bound model's own context window, once known
    # The processor's longest-edge budgets for detail=low and detail=high, once known (media sizes
    # images to these before the processor sees them).
    image_edges: tuple[int, int] | None = None
    num_running: int = 0  # sequences generating now
    num_waiting: int = 0  # sequences queued behind them (preempted ones included)
    num_preempted: int = 0  # waiting sequences whose KV was freed to be recomputed later
    num_preemptions: int = 0  # how many times a running sequence was preempted, in all
    kv_cache_bytes: int = 0  # KV that running sequences hold now (local engine)
    kv_cache_max_bytes: int = 0  # the engine's KV budget; 0: not managed (remote engine)
    kv_cache_usage: float = 0.0  # kv_cache_bytes / kv_cache_max_bytes (0 when not managed)
    prompt_cache: PromptCacheStats | None = None  # None: the engine has no prompt cache (or off)
    # About how many prompt tokens one sampled video frame costs at the detail=low size, once
    # known (media fits a video's frame count to its token budget with it); None: unknown.
    video_frame_tokens: int | None = None
