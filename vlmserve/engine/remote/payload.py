"""``GenerationRequest`` → the upstream's OpenAI chat payload.

This is the upstream's contract, not ours: it is built here and never from ``vlmserve.protocol``
(STYLE.md: two contracts that may drift apart).

Images travel as ``data:`` URLs of the pixels vlmserve already prepared (oriented, stripped,
resized), so replicas never fetch anything themselves and only see what our limits allowed.
Encoding (``RemoteEngineSettings.image_encoding="auto"``):

- pictures with at most 256 distinct colours (screenshots, charts, diagrams, text) → PNG: lossless
  where a JPEG's ringing would blur thin lines and glyphs, and smaller than JPEG for flat colour;
- everything else (photos) → JPEG, quality 90, 4:4:4 chroma: visually lossless and 5-10x smaller
  than PNG for photographic content, which keeps the payload and the replica's decode cheap.

Encoding is deterministic and cached by (identity, frame, size), so every turn of a conversation
sends byte-identical URLs: the replica's multimodal prefix cache (which hashes what it receives)
hits across turns, and we encode each picture once.

Videos are sent as their sampled frames, in order, each frame an image preceded by its timestamp
(``"[frame at 1.50 s]"``): every OpenAI-compatible server accepts images, re-encoding frames into a
video file would be lossy and slow, and the replica would re-sample a ``video_url`` at its own fps.
The catch: the replica must allow that many images per prompt (``--limit-mm-per-prompt``).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

from vlmserve.engine.types import (
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    SamplingParams,
    TextPart,
)

if TYPE_CHECKING:
    from PIL.Image import Image

ImageEncoding = Literal["auto", "jpeg", "png"]
Json = dict[str, Any]

MAX_PNG_COLOURS = 256
# Below this many new pixels (a 256x256 picture: well under a millisecond to encode), encoding on
# the event loop is cheaper than the hop to a worker thread and back.
INLINE_ENCODE_PIXELS = 256 * 256


class ImageEncoder:
    """Prepared pixels → ``data:`` URL, with a byte-bounded LRU cache; safe across threads."""

    def __init__(self, encoding: ImageEncoding, jpeg_quality: int, cache_bytes: int) -> None:
        self.encoding: ImageEncoding = encoding
        self.jpeg_quality = jpeg_quality
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._num_cached_bytes = 0
        self._lock = threading.Lock()

    def data_url(self, image: Image, identity: str, frame: int = 0) -> str:
        key = (identity, frame, image.size, image.mode)
        with self._lock:
            url = self._cache.get(key)
            if url is not None:
                self._cache.move_to_end(key)
                return url
        url = encode_data_url(image, self.encoding, self.jpeg_quality)
        self._remember(key, url)
        return url

    def num_pending_pixels(self, media: tuple[MediaInput, ...]) -> int:
        """The pixels of ``media`` still to encode (0: every frame is cached)."""
        with self._lock:
            return sum(
                frame.size[0] * frame.size[1]
                for item in media
                for i, frame in enumerate(item.frames)
                if (item.identity, i, frame.size, frame.mode) not in self._cache
            )

    def _remember(self, key: tuple[object, ...], url: str) -> None:
        if len(url) > self.cache_bytes:
            return
        with self._lock:
            if key not in self._cache:
                self._cache[key] = url
                self._num_cached_bytes += len(url)
            while self._num_cached_bytes > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._num_cached_bytes -= len(evicted)


def image_format(image: Image, encoding: ImageEncoding) -> Literal["JPEG", "PNG"]:
    if encoding == "png":
        return "PNG"
    if encoding == "jpeg":
        return "JPEG"
    # getcolors gives up (None) as soon as it has seen more than MAX_PNG_COLOURS colours.
    return "PNG" if image.getcolors(MAX_PNG_COLOURS) is not None else "JPEG"


def encode_data_url(image: Image, encoding: ImageEncoding, jpeg_quality: int) -> str:
    fmt = image_format(image, encoding)
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{data}"


def render_media(media: MediaInput, encoder: ImageEncoder) -> list[Json]:
    if media.kind == "image":
        return [_image_part(encoder.data_url(media.frames[0], media.identity))]
    parts: list[Json] = []
    for i, frame in enumerate(media.frames):
        if i < len(media.timestamps):
            parts.append({"type": "text", "text": f"[frame at {media.timestamps[i]:.2f} s]"})
        parts.append(_image_part(encoder.data_url(frame, media.identity, i)))
    return parts


def _image_part(url: str) -> Json:
    return {"type": "image_url", "image_url": {"url": url}}


def render_content(message: Message, prompt: Prompt, encoder: ImageEncoder) -> str | list[Json]:
    """A lone text part stays a plain string (what every server accepts); otherwise a part list."""
    if len(message.parts) == 1 and isinstance(message.parts[0], TextPart):
        return message.parts[0].text
    if not message.parts:
        return ""
    content: list[Json] = []
    for part in message.parts:
        if isinstance(part, MediaPart):
            content.extend(render_media(prompt.media[part.index], encoder))
        else:
            content.append({"type": "text", "text": part.text})
    return content


def render_message(message: Message, prompt: Prompt, encoder: ImageEncoder) -> Json:
    rendered: Json = {"role": message.role, "content": render_content(message, prompt, encoder)}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if rendered["content"] == "":
            rendered["content"] = None
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def render_messages(prompt: Prompt, encoder: ImageEncoder) -> list[Json]:
    return [render_message(message, prompt, encoder) for message in prompt.messages]


def sampling_fields(sampling: SamplingParams) -> Json:
    fields: Json = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "n": sampling.n,
        "frequency_penalty": sampling.frequency_penalty,
        "presence_penalty": sampling.presence_penalty,
    }
    if sampling.max_tokens is not None:
        fields["max_tokens"] = sampling.max_tokens
    if sampling.stop:
        fields["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    return fields


def passthrough_fields(request: GenerationRequest) -> Json:
    """Fields the upstream interprets itself; the place for future OpenAI options, too."""
    fields: Json = {}
    if request.response_format is not None:
        fields["response_format"] = request.response_format
    if request.tools is not None:
        fields["tools"] = list(request.tools)
    if request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice
    if request.tools is not None and not request.parallel_tool_calls:
        fields["parallel_tool_calls"] = False
    return fields


def stream_options(continuous_usage: bool) -> Json:
    options: Json = {"include_usage": True}
    if continuous_usage:
        options["continuous_usage_stats"] = True
    return options


def build_payload(
    request: GenerationRequest, model: str, encoder: ImageEncoder, continuous_usage: bool
) -> Json:
    return {
        "model": model,
        "messages": render_messages(request.prompt, encoder),
        **sampling_fields(request.sampling),
        **passthrough_fields(request),
        "stream": True,
        "stream_options": stream_options(continuous_usage),
    }


def tokenize_payload(
    prompt: Prompt, model: str, encoder: ImageEncoder, tools: tuple[Json, ...] = ()
) -> Json:
    """vLLM's ``POST /tokenize`` body (also read by vlmserve's ``/v1/token/count``): counts the
    prompt exactly as the chat endpoint would, with the tools the chat template renders."""
    payload: Json = {
        "model": model,
        "messages": render_messages(prompt, encoder),
        "add_generation_prompt": True,
    }
    if tools:
        payload["tools"] = list(tools)
    return payload


def to_json_bytes(payload: Json) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
