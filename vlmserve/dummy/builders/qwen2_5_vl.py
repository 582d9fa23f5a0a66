"""Qwen2.5-VL (``qwen2_5_vl``): window-attention ViT with SwiGLU and RMSNorm, a 2x2 patch merger
and an M-RoPE decoder whose video positions follow absolute time (``second_per_grid_ts``).

The release (Qwen/Qwen2.5-VL-3B-Instruct) keeps Qwen2-VL's tokenizer layout (plus the FIM and
repo tokens), image/video processors and chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from vlmserve.dummy.families import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    QWEN2_VL_PLAIN_ADDED_TOKENS,
    QWEN2_VL_SPECIAL_TOKENS,
    Family,
    TokenizerFiles,
    _text_config,
    _token_ids,
    qwen2_vl_generation_config,
)
from vlmserve.dummy.shapes import TextShape
from vlmserve.dummy.templates import QWEN2_VL_CHAT_TEMPLATE
from vlmserve.dummy.tokenizer import AddedSpec, TokenizerSpec

# Qwen2.5's added tokens after <tool_call></tool_call>, in their real order.
QWEN2_5_MORE_TOKENS = (
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)


@dataclass(frozen=True, slots=True)
class QwenVisionShape:
    """A Qwen2.5-VL / Qwen3-VL vision tower and the processors' pixel budgets."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    video_min_pixels: int
    video_max_pixels: int


@dataclass(frozen=True, slots=True)
class Qwen25VLShape:
    text: TextShape
    mrope_section: tuple[int, int, int]
    vision: QwenVisionShape
    window_size: int
    fullatt_block_indexes: tuple[int, ...]
    dtype: str


def _tiny_text(rope_theta: float) -> TextShape:
    return TextShape(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_theta=rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


QWEN2_5_VL_SHAPES: dict[str, Qwen25VLShape] = {
    # a 28x28 px block is one token: images get 4..400 tokens, video frames 4..16 per 2 frames
    "tiny": Qwen25VLShape(
        text=_tiny_text(1000000.0),
        mrope_section=(2, 3, 3),
        vision=QwenVisionShape(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=56 * 56,
            max_pixels=28 * 28 * 400,  # high edge 560 px > low 448: detail changes cost
            video_min_pixels=56 * 56,
            video_max_pixels=28 * 28 * 16,
        ),
        window_size=56,
        fullatt_block_indexes=(1,),
        dtype="float32",
    ),
    # Qwen/Qwen2.5-VL-3B-Instruct config.json and preprocessor_config.json
    "qwen2.5-vl-3b": Qwen25VLShape(
        text=TextShape(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        mrope_section=(16, 24, 24),
        vision=QwenVisionShape(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=3136,
            max_pixels=12845056,
            video_min_pixels=128 * 28 * 28,
            video_max_pixels=28 * 28 * 768,
        ),
        window_size=112,
        fullatt_block_indexes=(7, 15, 23, 31),
        dtype="bfloat16",
    ),
}


def qwen_tokenizer_spec(vocab_size: int, more: tuple[str, ...]) -> TokenizerSpec:
    """Qwen2's specials, then <tool_call></tool_call> (plain), then ``more`` (plain)."""
    added = [AddedSpec(t) for t in QWEN2_VL_SPECIAL_TOKENS]
    added += [AddedSpec(t, special=False) for t in (*QWEN2_VL_PLAIN_ADDED_TOKENS, *more)]
    return TokenizerSpec(
        pipeline="qwen2", vocab_size=vocab_size, leading_special=(), added=tuple(added)
    )


def qwen2_5_vl_tokenizer_spec(shape: Qwen25VLShape) -> TokenizerSpec:
    return qwen_tokenizer_spec(shape.text.vocab_size, QWEN2_5_MORE_TOKENS)


def qwen_tokenizer_files(shape: Any) -> TokenizerFiles:
    special: dict[str, str | None] = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
    }
    return TokenizerFiles("Qwen2Tokenizer", special, shape.text.max_position_embeddings)


def qwen_processors(
    vision: QwenVisionShape, mean: list[float], std: list[float]
) -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    common: dict[str, Any] = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.merge_size,
        "image_mean": mean,
        "image_std": std,
    }
    image = Qwen2VLImageProcessor(
        min_pixels=vision.min_pixels, max_pixels=vision.max_pixels, **common
    )
    video = Qwen2VLVideoProcessor(
        min_pixels=vision.video_min_pixels,
        max_pixels=vision.video_max_pixels,
        cap_pixels_per_frame=True,
        **common,
    )
    return image, video


def qwen2_5_vl_processor(
    shape: Qwen25VLShape, tokenizer: PreTrainedTokenizerBase
) -> ProcessorMixin:
    image, video = qwen_processors(shape.vision, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return Qwen2_5_VLProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def qwen_text_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return _token_ids(tokenizer, *QWEN2_VL_SPECIAL_TOKENS)


def qwen2_5_vl_config(shape: Qwen25VLShape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = qwen_text_ids(tokenizer)
    text = _text_config(shape.text) | {
        "model_type": "qwen2_5_vl_text",
        "hidden_act": "silu",
        "use_sliding_window": False,
        "max_window_layers": shape.text.num_hidden_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": shape.text.rope_theta,
            "mrope_section": list(shape.mrope_section),
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    v = shape.vision
    vision = {
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "out_hidden_size": shape.text.hidden_size,
        "hidden_act": "silu",
        "in_channels": 3,
        "patch_size": v.patch_size,
        "spatial_merge_size": v.merge_size,
        "temporal_patch_size": v.temporal_patch_size,
        "tokens_per_second": 2,
        "window_size": shape.window_size,
        "fullatt_block_indexes": list(shape.fullatt_block_indexes),
        "initializer_range": 0.02,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.text.tie_word_embeddings,
        dtype=shape.dtype,
    )


BUILDER = Family(
    "qwen2_5_vl",
    Qwen2_5_VLForConditionalGeneration,
    qwen2_5_vl_tokenizer_spec,
    qwen_tokenizer_files,
    qwen2_5_vl_processor,
    qwen2_5_vl_config,
    qwen2_vl_generation_config,
)
