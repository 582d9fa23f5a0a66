"""Qwen3-VL (``qwen3_vl``): SigLIP-2-style ViT with learned, interpolated position embeddings,
DeepStack (features of three vision layers added to the first decoder layers), interleaved M-RoPE,
and videos as timestamped frame groups (``<t seconds><|vision_start|>...``).

The release (Qwen/Qwen3-VL-2B-Instruct) has the Qwen3 tokenizer (Qwen2.5's tokens plus
``<tool_response>``/``<think>`` pairs), 16 px patches and mean/std 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from vlmserve.dummy.builders.qwen2_5_vl import (
    QWEN2_5_MORE_TOKENS,
    QwenVisionShape,
    qwen_text_ids,
    qwen_tokenizer_files,
    qwen_tokenizer_spec,
)
from vlmserve.dummy.builders.qwen3_vl_template import QWEN3_VL_CHAT_TEMPLATE
from vlmserve.dummy.families import Family, _text_config, qwen2_vl_generation_config
from vlmserve.dummy.shapes import TextShape
from vlmserve.dummy.tokenizer import TokenizerSpec

QWEN3_MORE_TOKENS = (
    *QWEN2_5_MORE_TOKENS,
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
HALF = [0.5, 0.5, 0.5]


@dataclass(frozen=True, slots=True)
class Qwen3VLShape:
    text: TextShape
    head_dim: int
    mrope_section: tuple[int, int, int]
    vision: QwenVisionShape
    num_position_embeddings: int  # a square number: the learned grid is interpolated
    deepstack_visual_indexes: tuple[int, ...]
    dtype: str


QWEN3_VL_SHAPES: dict[str, Qwen3VLShape] = {
    # a 32x32 px block is one token: images get 4..400 tokens, video frames 4..16 per 2 frames
    "tiny": Qwen3VLShape(
        text=TextShape(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_theta=5000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        head_dim=16,
        mrope_section=(2, 3, 3),
        vision=QwenVisionShape(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=64 * 64,
            max_pixels=32 * 32 * 400,  # high edge 640 px > low 448: detail changes cost
            video_min_pixels=64 * 64,
            video_max_pixels=32 * 32 * 16,
        ),
        num_position_embeddings=64,
        deepstack_visual_indexes=(0, 1),
        dtype="float32",
    ),
    # Qwen/Qwen3-VL-2B-Instruct config.json, preprocessor and video preprocessor configs
    "qwen3-vl-2b": Qwen3VLShape(
        text=TextShape(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            max_position_embeddings=262144,
            rope_theta=5000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        head_dim=128,
        mrope_section=(24, 20, 20),
        vision=QwenVisionShape(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=65536,
            max_pixels=16777216,
            video_min_pixels=4096,
            video_max_pixels=25165824,
        ),
        num_position_embeddings=2304,
        deepstack_visual_indexes=(5, 11, 17),
        dtype="bfloat16",
    ),
}


def qwen3_vl_tokenizer_spec(shape: Qwen3VLShape) -> TokenizerSpec:
    return qwen_tokenizer_spec(shape.text.vocab_size, QWEN3_MORE_TOKENS)


def qwen3_vl_processor(shape: Qwen3VLShape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    v = shape.vision
    common: dict[str, Any] = {
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "merge_size": v.merge_size,
        "image_mean": HALF,
        "image_std": HALF,
    }
    image = Qwen2VLImageProcessor(
        size={"shortest_edge": v.min_pixels, "longest_edge": v.max_pixels}, **common
    )
    video = Qwen3VLVideoProcessor(
        size={"shortest_edge": v.video_min_pixels, "longest_edge": v.video_max_pixels},
        fps=2,
        min_frames=4,
        max_frames=768,
        do_sample_frames=True,
        **common,
    )
    return Qwen3VLProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def qwen3_vl_config(shape: Qwen3VLShape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = qwen_text_ids(tokenizer)
    text = _text_config(shape.text) | {
        "model_type": "qwen3_vl_text",
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": shape.text.rope_theta,
            "mrope_section": list(shape.mrope_section),
            "mrope_interleaved": True,
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
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": v.patch_size,
        "spatial_merge_size": v.merge_size,
        "temporal_patch_size": v.temporal_patch_size,
        "num_position_embeddings": shape.num_position_embeddings,
        "deepstack_visual_indexes": list(shape.deepstack_visual_indexes),
        "initializer_range": 0.02,
    }
    return Qwen3VLConfig(
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
    "qwen3_vl",
    Qwen3VLForConditionalGeneration,
    qwen3_vl_tokenizer_spec,
    qwen_tokenizer_files,
    qwen3_vl_processor,
    qwen3_vl_config,
    qwen2_vl_generation_config,
)
