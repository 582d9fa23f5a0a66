"""What each model family needs: tokenizer layout, configs, processor, model class.

A family is named by transformers' ``model_type``. Each one mirrors the files of its real hub
release (class names, special tokens and their order, processor settings), scaled by a shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import (
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from vlmserve.dummy.shapes import Idefics3Shape, Qwen2VLShape, TextShape
from vlmserve.dummy.templates import QWEN2_VL_CHAT_TEMPLATE, SMOLVLM_CHAT_TEMPLATE
from vlmserve.dummy.tokenizer import AddedSpec, TokenizerSpec

INITIALIZER_RANGE = 0.02  # the real configs' value; keeps 30+ random layers finite

# CLIP normalization, Qwen2-VL's preprocessor_config.json.
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True, slots=True)
class TokenizerFiles:
    """What goes into tokenizer_config.json besides the added tokens."""

    tokenizer_class: str
    special: dict[str, str | None]  # bos_token, eos_token, pad_token, unk_token
    model_max_length: int


# --- idefics3 (SmolVLM) ---------------------------------------------------------------------

IDEFICS3_IMAGE_TOKENS = (
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
)


def idefics3_tokenizer_spec(shape: Idefics3Shape) -> TokenizerSpec:
    return TokenizerSpec(
        pipeline="gpt2",
        vocab_size=shape.text.vocab_size,
        leading_special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        added=tuple(AddedSpec(t) for t in IDEFICS3_IMAGE_TOKENS),
    )


def idefics3_tokenizer_files(shape: Idefics3Shape) -> TokenizerFiles:
    # SmolVLM-256M-Instruct's tokenizer_config.json: GPT2Tokenizer, bos <|im_start|>.
    special: dict[str, str | None] = {
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
    }
    return TokenizerFiles("GPT2Tokenizer", special, shape.text.max_position_embeddings)


def idefics3_processor(shape: Idefics3Shape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    image_processor = Idefics3ImageProcessor(
        do_convert_rgb=True,
        do_resize=True,
        size={"longest_edge": shape.longest_edge},
        resample=Image.Resampling.LANCZOS,
        do_image_splitting=True,
        max_image_size={"longest_edge": shape.tile_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=shape.image_seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def idefics3_config(shape: Idefics3Shape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = _token_ids(tokenizer, "<|im_start|>", "<|im_end|>", "<image>")
    text = _text_config(shape.text) | {
        "model_type": "llama",
        "head_dim": shape.text.hidden_size // shape.text.num_attention_heads,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|im_end|>"],
    }
    vision = {
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_num_hidden_layers,
        "num_attention_heads": shape.vision_num_attention_heads,
        "num_channels": 3,
        "image_size": shape.tile_size,
        "patch_size": shape.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "initializer_range": INITIALIZER_RANGE,
    }
    return Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=shape.scale_factor,
        image_token_id=ids["<image>"],
        tie_word_embeddings=shape.text.tie_word_embeddings,
        pad_token_id=ids["<|im_end|>"],  # type: ignore[call-arg]  # popped by __post_init__
        dtype=shape.dtype,
    )


def idefics3_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    ids = _token_ids(tokenizer, "<|im_start|>", "<|im_end|>", "<end_of_utterance>")
    return GenerationConfig(
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=ids["<|im_end|>"],
    )


# --- qwen2_vl -------------------------------------------------------------------------------

QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN2_VL_PLAIN_ADDED_TOKENS = ("<tool_call>", "</tool_call>")  # not special: they must decode


def qwen2_vl_tokenizer_spec(shape: Qwen2VLShape) -> TokenizerSpec:
    added = [AddedSpec(t) for t in QWEN2_VL_SPECIAL_TOKENS]
    added += [AddedSpec(t, special=False) for t in QWEN2_VL_PLAIN_ADDED_TOKENS]
    return TokenizerSpec(
        pipeline="qwen2", vocab_size=shape.text.vocab_size, leading_special=(), added=tuple(added)
    )


def qwen2_vl_tokenizer_files(shape: Qwen2VLShape) -> TokenizerFiles:
    special: dict[str, str | None] = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
    }
    return TokenizerFiles("Qwen2Tokenizer", special, shape.text.max_position_embeddings)


def qwen2_vl_processor(shape: Qwen2VLShape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    common: dict[str, Any] = {
        "patch_size": shape.patch_size,
        "temporal_patch_size": shape.temporal_patch_size,
        "merge_size": shape.merge_size,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
    }
    image_processor = Qwen2VLImageProcessor(
        min_pixels=shape.min_pixels, max_pixels=shape.max_pixels, **common
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=shape.video_min_pixels,
        max_pixels=shape.video_max_pixels,
        cap_pixels_per_frame=True,  # qwen-vl-utils' total-pixel budget; transformers' next default
        **common,
    )
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def qwen2_vl_config(shape: Qwen2VLShape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = _token_ids(tokenizer, *QWEN2_VL_SPECIAL_TOKENS)
    text = _text_config(shape.text) | {
        "model_type": "qwen2_vl_text",
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
    vision = {
        "depth": shape.vision_depth,
        "embed_dim": shape.vision_embed_dim,
        "hidden_size": shape.text.hidden_size,
        "hidden_act": "quick_gelu",
        "mlp_ratio": shape.vision_mlp_ratio,
        "num_heads": shape.vision_num_heads,
        "in_channels": 3,
        "patch_size": shape.patch_size,
        "spatial_merge_size": shape.merge_size,
        "temporal_patch_size": shape.temporal_patch_size,
        "initializer_range": INITIALIZER_RANGE,
    }
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.text.tie_word_embeddings,
        dtype=shape.dtype,
    )


def qwen2_vl_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    ids = _token_ids(tokenizer, "<|endoftext|>", "<|im_end|>")
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )


# --- shared ---------------------------------------------------------------------------------


def _text_config(text: TextShape) -> dict[str, Any]:
    return {
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "max_position_embeddings": text.max_position_embeddings,
        "rope_theta": text.rope_theta,
        "rms_norm_eps": text.rms_norm_eps,
        "tie_word_embeddings": text.tie_word_embeddings,
        "initializer_range": INITIALIZER_RANGE,
    }


def _token_ids(tokenizer: PreTrainedTokenizerBase, *tokens: str) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    assert not missing, f"tokenizer lacks {missing}"
    return ids  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    model_class: type[PreTrainedModel]
    tokenizer_spec: Any  # (shape) -> TokenizerSpec
    tokenizer_files: Any  # (shape) -> TokenizerFiles
    processor: Any  # (shape, tokenizer) -> ProcessorMixin
    config: Any  # (shape, tokenizer) -> PretrainedConfig
    generation_config: Any  # (tokenizer) -> GenerationConfig


FAMILY_BUILDERS: dict[str, Family] = {
    "idefics3": Family(
        "idefics3",
        Idefics3ForConditionalGeneration,
        idefics3_tokenizer_spec,
        idefics3_tokenizer_files,
        idefics3_processor,
        idefics3_config,
        idefics3_generation_config,
    ),
    "qwen2_vl": Family(
        "qwen2_vl",
        Qwen2VLForConditionalGeneration,
        qwen2_vl_tokenizer_spec,
        qwen2_vl_tokenizer_files,
        qwen2_vl_processor,
        qwen2_vl_config,
        qwen2_vl_generation_config,
    ),
}
