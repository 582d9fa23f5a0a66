"""Mistral 3 (``mistral3``): a Pixtral vision tower (2-D rotary patches of 14 px, any aspect
ratio) whose patches a 2x2 merger joins, into a Ministral 3 decoder (``ministral3``: Mistral's
layer with YaRN rope and Llama 4's query scaling past the original context). An image is its
rows of ``[IMG]`` tokens, each row closed by ``[IMG_BREAK]``, the last by ``[IMG_END]``.

The release copied is mistralai/Ministral-3-3B-Instruct-2512, the smallest; the hub is out of
reach here, so its dimensions come from published copies of its config.json: the text model
(3072 wide, 26 layers, 32/8 heads of 128, 9216 MLP, 131072 vocab, tied embeddings, YaRN 16x over
16384 with ``llama_4_scaling_beta`` 0.1) as NVIDIA Megatron-Bridge's Ministral 3 page and
mlx-vlm's port of it list it, the vision tower (1024 wide, 24 layers, 16 heads, 1540 px, patch
14, merge 2) as Mistral Small 3.1's, which Ministral 3 reuses frozen and which transformers'
``Mistral3Config`` writes as its default. Its tokenizer is Tekken (``TokenizersBackend`` in
tokenizer_config.json; bos ``<s>``, eos ``</s>``, pad ``<pad>``): ids 0-999 are control tokens,
named as mistral-common's ``SpecialTokens`` name them (v13: ``[ARGS]`` 32, ``[CALL_ID]`` 33,
``[THINK]`` 34, ``[/THINK]`` 35), the rest ``<SPECIAL_n>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import (
    GenerationConfig,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PixtralImageProcessor,
    PixtralProcessor,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlmserve.dummy.builders.mistral3_template import MINISTRAL3_CHAT_TEMPLATE
from vlmserve.dummy.families import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Family,
    TokenizerFiles,
    _token_ids,
)
from vlmserve.dummy.shapes import TextShape
from vlmserve.dummy.tokenizer import TokenizerSpec

NUM_CONTROL_TOKENS = 1000
NAMED_CONTROL_TOKENS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[THINK]",
    35: "[/THINK]",
}
CONTROL_TOKENS = tuple(
    NAMED_CONTROL_TOKENS.get(i, f"<SPECIAL_{i}>") for i in range(NUM_CONTROL_TOKENS)
)
# The release's rope: YaRN 16x over 16384 positions (262144 in all), and Llama 4's query scaling
# (1 + 0.1 * log(1 + floor(position / 16384))), which is 1 inside the original context.
YARN_FACTOR = 16
LLAMA_4_SCALING_BETA = 0.1


@dataclass(frozen=True, slots=True)
class Mistral3Shape:
    text: TextShape
    head_dim: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_hidden_layers: int
    vision_num_attention_heads: int
    patch_size: int
    spatial_merge_size: int
    longest_edge: int  # the processor shrinks a picture to fit this square (never enlarges)
    dtype: str

    @property
    def rope_parameters(self) -> dict[str, Any]:
        return {
            "type": "yarn",
            "rope_type": "yarn",
            "rope_theta": self.text.rope_theta,
            "factor": float(YARN_FACTOR),
            "original_max_position_embeddings": self.text.max_position_embeddings // YARN_FACTOR,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": LLAMA_4_SCALING_BETA,
        }

    @property
    def max_image_tokens(self) -> int:
        """A picture at ``longest_edge`` square: its [IMG] tokens and a break or end per row."""
        side = self.longest_edge // (self.patch_size * self.spatial_merge_size)
        return side * side + side


MISTRAL3_SHAPES: dict[str, Mistral3Shape] = {
    # 28 px per token (14 px patches merged 2x2); a picture is at most 4x4 tokens + 4 row ends.
    # YaRN over 8192 / 16 = 512 positions: long test prompts reach the query scaling.
    "tiny": Mistral3Shape(
        text=TextShape(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_theta=1000000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        head_dim=16,
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        longest_edge=112,
        dtype="float32",
    ),
    # mistralai/Ministral-3-3B-Instruct-2512 config.json (sources in the module docstring)
    "ministral3-3b": Mistral3Shape(
        text=TextShape(
            vocab_size=131072,
            hidden_size=3072,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=262144,
            rope_theta=1000000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        head_dim=128,
        vision_hidden_size=1024,
        vision_intermediate_size=4096,
        vision_num_hidden_layers=24,
        vision_num_attention_heads=16,
        patch_size=14,
        spatial_merge_size=2,
        longest_edge=1540,
        dtype="bfloat16",
    ),
}


def mistral3_tokenizer_spec(shape: Mistral3Shape) -> TokenizerSpec:
    return TokenizerSpec(
        pipeline="tekken",
        vocab_size=shape.text.vocab_size,
        leading_special=CONTROL_TOKENS,
        added=(),
    )


def mistral3_tokenizer_files(shape: Mistral3Shape) -> TokenizerFiles:
    special: dict[str, str | None] = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    return TokenizerFiles("TokenizersBackend", special, shape.text.max_position_embeddings)


def mistral3_processor(shape: Mistral3Shape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    # the release's preprocessor_config.json: CLIP normalisation, bicubic, patch 14
    image = PixtralImageProcessor(
        size={"longest_edge": shape.longest_edge},
        patch_size={"height": shape.patch_size, "width": shape.patch_size},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        resample=Image.Resampling.BICUBIC,
        do_convert_rgb=True,
    )
    return PixtralProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        spatial_merge_size=shape.spatial_merge_size,
        chat_template=MINISTRAL3_CHAT_TEMPLATE,
    )


def mistral3_config(shape: Mistral3Shape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = _token_ids(tokenizer, "<s>", "</s>", "<pad>", "[IMG]")
    t = shape.text
    text: dict[str, Any] = {
        "model_type": "ministral3",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_parameters": shape.rope_parameters,
        "sliding_window": None,
        "hidden_act": "silu",
        "tie_word_embeddings": t.tie_word_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
    }
    vision = {
        "model_type": "pixtral",
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_num_hidden_layers,
        "num_attention_heads": shape.vision_num_attention_heads,
        "head_dim": shape.vision_hidden_size // shape.vision_num_attention_heads,
        "image_size": shape.longest_edge,
        "patch_size": shape.patch_size,
        "hidden_act": "silu",  # Mistral Small 3.1's vision_config (transformers' default: gelu)
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
    }
    return Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=ids["[IMG]"],
        spatial_merge_size=shape.spatial_merge_size,
        projector_hidden_act="gelu",
        multimodal_projector_bias=False,
        vision_feature_layer=-1,
        tie_word_embeddings=t.tie_word_embeddings,
        dtype=shape.dtype,
    )


def mistral3_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    ids = _token_ids(tokenizer, "<s>", "</s>", "<pad>")
    return GenerationConfig(
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]
    )


BUILDER = Family(
    "mistral3",
    Mistral3ForConditionalGeneration,
    mistral3_tokenizer_spec,
    mistral3_tokenizer_files,
    mistral3_processor,
    mistral3_config,
    mistral3_generation_config,
)
