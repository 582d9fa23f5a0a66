"""InternVL 3 (``internvl``, the ``-hf`` releases): InternViT on 448 px tiles (dynamic tiling plus
a thumbnail), pixel unshuffle by 0.5 and an MLP into a Qwen2.5 decoder. An image is
``<img>`` + 256 ``<IMG_CONTEXT>`` per tile + ``</img>``; a video is ``FrameN: <img>...</img>``
lines, one tile per frame.

The release (OpenGVLab/InternVL3-1B-hf) has Qwen2.5's tokenizer plus InternVL's tokens, named
in tokenizer_config.json (``start_image_token`` etc.), which the processor reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    GenerationConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlmserve.dummy.builders.qwen2_5_vl import QWEN2_5_MORE_TOKENS, qwen_tokenizer_spec
from vlmserve.dummy.families import Family, TokenizerFiles, _text_config, _token_ids
from vlmserve.dummy.shapes import TextShape
from vlmserve.dummy.tokenizer import TokenizerSpec

INTERNVL_TOKENS = (
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# OpenGVLab/InternVL3-1B-hf chat_template.json: ChatML, no default system prompt, an image is
# ``<IMG_CONTEXT>\n`` (the processor expands it), a video ``<video>\n``.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\\n' }}{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


@dataclass(frozen=True, slots=True)
class InternVLShape:
    text: TextShape
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_hidden_layers: int
    vision_num_attention_heads: int
    patch_size: int
    tile_size: int
    max_patches: int  # tiles per image besides the thumbnail
    dtype: str

    @property
    def image_seq_length(self) -> int:
        """Tokens per tile: (tile / patch)^2 patches, unshuffled by 0.5 in both directions."""
        return (self.tile_size // self.patch_size) ** 2 // 4


INTERNVL_SHAPES: dict[str, InternVLShape] = {
    # 56 px tiles of 14 px patches: 4 tokens a tile, at most 4 tiles + the thumbnail
    "tiny": InternVLShape(
        text=TextShape(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=2,
        patch_size=14,
        tile_size=56,
        max_patches=4,
        dtype="float32",
    ),
    # OpenGVLab/InternVL3-1B-hf: InternViT-300M + Qwen2.5-0.5B
    "internvl3-1b": InternVLShape(
        text=TextShape(
            vocab_size=151674,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        vision_hidden_size=1024,
        vision_intermediate_size=4096,
        vision_num_hidden_layers=24,
        vision_num_attention_heads=16,
        patch_size=14,
        tile_size=448,
        max_patches=12,
        dtype="bfloat16",
    ),
}


def internvl_tokenizer_spec(shape: InternVLShape) -> TokenizerSpec:
    # ``<video>`` is named in tokenizer_config.json (``video_token``), so it is an added token
    # too; listing it keeps len(tokenizer) at the model's vocab_size.
    more = (*QWEN2_5_MORE_TOKENS, *INTERNVL_TOKENS, "<video>")
    return qwen_tokenizer_spec(shape.text.vocab_size, more)


def internvl_tokenizer_files(shape: InternVLShape) -> TokenizerFiles:
    special: dict[str, str | None] = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    return TokenizerFiles("Qwen2Tokenizer", special, shape.text.max_position_embeddings)


def internvl_processor(shape: InternVLShape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    common: dict[str, Any] = {
        "size": {"height": shape.tile_size, "width": shape.tile_size},
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "do_convert_rgb": True,
    }
    image = GotOcr2ImageProcessor(
        crop_to_patches=True, min_patches=1, max_patches=shape.max_patches, **common
    )
    video = InternVLVideoProcessor(**common)
    return InternVLProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        image_seq_length=shape.image_seq_length,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )


def internvl_config(shape: InternVLShape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = _token_ids(tokenizer, "<|endoftext|>", "<|im_end|>", "<IMG_CONTEXT>")
    text = _text_config(shape.text) | {
        "model_type": "qwen2",
        "hidden_act": "silu",
        "use_sliding_window": False,
        "max_window_layers": shape.text.num_hidden_layers,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_num_hidden_layers,
        "num_attention_heads": shape.vision_num_attention_heads,
        "image_size": [shape.tile_size, shape.tile_size],
        "patch_size": [shape.patch_size, shape.patch_size],
        "hidden_act": "gelu",
        "norm_type": "layer_norm",
        "use_qk_norm": False,
        "layer_scale_init_value": 0.1,
        "initializer_range": 0.02,
    }
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=shape.image_seq_length,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=shape.text.tie_word_embeddings,
        dtype=shape.dtype,
    )


def internvl_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    ids = _token_ids(tokenizer, "<|endoftext|>", "<|im_end|>")
    return GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


BUILDER = Family(
    "internvl",
    InternVLForConditionalGeneration,
    internvl_tokenizer_spec,
    internvl_tokenizer_files,
    internvl_processor,
    internvl_config,
    internvl_generation_config,
)
