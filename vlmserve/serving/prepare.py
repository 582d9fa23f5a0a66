"""The steps chat and token counting share: model lookup, rendering, media intake.

Both endpoints go through ``PromptPreparer.prepare`` so ``/v1/token/count`` counts exactly the
prompt that chat bills.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vlmserve.catalog.registry import Catalog
from vlmserve.catalog.spec import EngineBinding, ModelSpec
from vlmserve.engine.client import EngineClient
from vlmserve.engine.types import EngineHealth, MediaInput, Message, Prompt, TextPart
from vlmserve.errors import ContextLengthError
from vlmserve.media.intake import MediaIntake
from vlmserve.media.types import ImagePolicy, PreparedImage, PreparedVideo, VideoPolicy
from vlmserve.protocol.chat import ChatMessageIn
from vlmserve.serving.render import render_messages
from vlmserve.settings import MediaSettings

# No tokenizer of a supported family has a token longer than this many characters, so a prompt
# with more than ``context window x MAX_CHARS_PER_TOKEN`` characters of text cannot fit and is
# refused before any tokenization: a 20 MB message is a 400 in milliseconds instead of tying up
# the tokenizer for tens of seconds (and everyone queued behind it).
MAX_CHARS_PER_TOKEN = 128


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    spec: ModelSpec
    engine: EngineClient
    prompt: Prompt


class PromptPreparer:
    def __init__(
        self,
        catalog: Catalog,
        engines: Mapping[EngineBinding, EngineClient],
        intake: MediaIntake,
        media_settings: MediaSettings,
    ) -> None:
        self._catalog = catalog
        self._engines = engines
        self._intake = intake
        self._media_settings = media_settings
        self._video_models = tuple(spec.id for spec in catalog if spec.accepts_video)

    def lookup(self, model: str) -> tuple[ModelSpec, EngineClient]:
        spec = self._catalog.get(model)
        return spec, self._engines[spec.binding]

    async def prepare(
        self, model: str, messages: Sequence[ChatMessageIn], tenant: str = ""
    ) -> PreparedPrompt:
        spec, engine = self.lookup(model)
        rendered = render_messages(messages, spec, self._video_models)
        check_text_fits(rendered.messages, spec.id, await self.context_window(spec, engine))
        media: tuple[MediaInput, ...] = ()
        if rendered.has_video:
            health = await engine.health()
            prepared = await self._intake.prepare_media(
                rendered.refs,
                self._image_policy(spec, health),
                self._video_policy(spec, health),
                owner=tenant,
            )
            media = tuple(_media_input(item) for item in prepared)
        elif rendered.refs:
            policy = self._image_policy(spec, await engine.health())
            images = await self._intake.prepare_images(rendered.image_refs, policy, owner=tenant)
            media = tuple(MediaInput("image", (img.image,), img.identity) for img in images)
        return PreparedPrompt(spec, engine, Prompt(rendered.messages, media))

    async def image_policy(self, spec: ModelSpec, engine: EngineClient) -> ImagePolicy:
        """The sizing and limits a chat request's images get from ``spec`` on ``engine``."""
        return self._image_policy(spec, await engine.health())

    def _image_policy(self, spec: ModelSpec, health: EngineHealth) -> ImagePolicy:
        edges = health.image_edges
        return ImagePolicy(
            max_images=spec.max_images,
            max_side=spec.max_image_side,
            max_total_bytes=spec.max_image_bytes,
            default_detail=spec.default_detail,
            low_longest_edge=edges[0] if edges else None,
            high_longest_edge=edges[1] if edges else None,
            downscale_oversized=self._media_settings.downscale_oversized,
        )

    def _video_policy(self, spec: ModelSpec, health: EngineHealth) -> VideoPolicy:
        """Frames at the model's detail=low size; the token budget is the setting's, and never
        more than half of the context window, so a video leaves room for the conversation."""
        s = self._media_settings
        window = min(spec.context_window, health.max_model_len or spec.context_window)
        edges = health.image_edges
        return VideoPolicy(
            max_videos=s.video_max_per_request,
            max_bytes=spec.max_video_bytes,
            max_seconds=spec.max_video_seconds,
            fps=s.video_fps,
            max_frames=s.video_max_frames,
            max_tokens=min(s.video_max_tokens, window // 2),
            frame_tokens=health.video_frame_tokens,
            frame_edge=s.video_frame_edge or (edges[0] if edges else None),
            keyframe_snap=s.video_keyframe_snap,
        )

    async def context_window(self, spec: ModelSpec, engine: EngineClient) -> int:
        """The window a client can rely on: the smaller of the catalogue's and the model's."""
        model_len = (await engine.health()).max_model_len
        return min(spec.context_window, model_len) if model_len else spec.context_window


def check_text_fits(messages: Sequence[Message], model: str, window: int) -> None:
    """Refuse, without tokenizing, text that cannot fit the window even at the longest token."""
    num_chars = sum(
        len(part.text) for msg in messages for part in msg.parts if isinstance(part, TextPart)
    )
    num_chars += sum(len(call.arguments) for msg in messages for call in msg.tool_calls)
    if num_chars > window * MAX_CHARS_PER_TOKEN:
        raise ContextLengthError(
            f"The messages hold {num_chars} characters of text, more than can fit {model}'s "
            f"context window of {window} tokens (at most {MAX_CHARS_PER_TOKEN} characters per "
            "token); shorten the conversation.",
            param="messages",
        )


def _media_input(item: PreparedImage | PreparedVideo) -> MediaInput:
    if isinstance(item, PreparedImage):
        return MediaInput("image", (item.image,), item.identity)
    return MediaInput("video", item.frames, item.identity, item.timestamps, item.fps)
