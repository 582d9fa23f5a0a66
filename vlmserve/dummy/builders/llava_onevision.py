"""LLaVA-OneVision (``llava_onevision``): SigLIP on 384 px views with AnyRes tiling (a base view
plus up to 3x3 of the grid pinpoints, pooled past 9), ``image_newline`` at row ends, a 2-layer
MLP into a Qwen2 decoder; videos are frames pooled 2x2.

The release (llava-hf/llava-onevision-qwen2-0.5b-ov-hf) has Qwen2's tokenizer with ``<image>``
and ``<video>`` added after ``<|im_end|>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    GenerationConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlmserve.dummy.families import Family, TokenizerFiles, _text_config, _token_ids
from vlmserve.dummy.shapes import TextShape
from vlmserve.dummy.tokenizer import AddedSpec, TokenizerSpec

LLAVA_OV_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
HALF = [0.5, 0.5, 0.5]

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf chat_template.json (transformers' conversion script):
# a message's images first, then its videos, then its texts each after a line break.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class LlavaOnevisionShape:
    text: TextShape
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_hidden_layers: int
    vision_num_attention_heads: int
    patch_size: int
    view_size: int  # SigLIP image_size; every view is this square
    max_grid: int  # pinpoints go up to max_grid x max_grid views
    dtype: str

    @property
    def num_image_tokens(self) -> int:
        return (self.view_size // self.patch_size) ** 2

    @property
    def pinpoints(self) -> list[list[int]]:
        sizes = range(self.view_size, self.view_size * self.max_grid + 1, self.view_size)
        return [[h, w] for h in sizes for w in sizes]


LLAVA_ONEVISION_SHAPES: dict[str, LlavaOnevisionShape] = {
    # 28 px views of 14 px patches: 4 tokens a view, up to 2x2 views (+ row newlines)
    "tiny": LlavaOnevisionShape(
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
        view_size=28,
        max_grid=2,
        dtype="float32",
    ),
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf: SigLIP-so400m (26 layers) + Qwen2-0.5B
    "llava-onevision-0.5b": LlavaOnevisionShape(
        text=TextShape(
            vocab_size=152000,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        vision_hidden_size=1152,
        vision_intermediate_size=4304,
        vision_num_hidden_layers=26,
        vision_num_attention_heads=16,
        patch_size=14,
        view_size=384,
        max_grid=6,
        dtype="bfloat16",
    ),
}


def llava_onevision_tokenizer_spec(shape: LlavaOnevisionShape) -> TokenizerSpec:
    return TokenizerSpec(
        pipeline="qwen2",
        vocab_size=shape.text.vocab_size,
        leading_special=(),
        added=tuple(AddedSpec(t) for t in LLAVA_OV_TOKENS),
    )


def llava_onevision_tokenizer_files(shape: LlavaOnevisionShape) -> TokenizerFiles:
    special: dict[str, str | None] = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "image_token": "<image>",
        "video_token": "<video>",
    }
    return TokenizerFiles("Qwen2Tokenizer", special, shape.text.max_position_embeddings)


def llava_onevision_processor(
    shape: LlavaOnevisionShape, tokenizer: PreTrainedTokenizerBase
) -> ProcessorMixin:
    size = {"height": shape.view_size, "width": shape.view_size}
    image = LlavaOnevisionImageProcessor(
        size=size,
        image_grid_pinpoints=shape.pinpoints,
        image_mean=HALF,
        image_std=HALF,
        do_pad=True,
        do_convert_rgb=True,
    )
    video = LlavaOnevisionVideoProcessor(size=size, image_mean=HALF, image_std=HALF)
    return LlavaOnevisionProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        num_image_tokens=shape.num_image_tokens,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )


def llava_onevision_config(
    shape: LlavaOnevisionShape, tokenizer: PreTrainedTokenizerBase
) -> PretrainedConfig:
    ids = _token_ids(tokenizer, *LLAVA_OV_TOKENS)
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
        "model_type": "siglip_vision_model",
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_num_hidden_layers,
        "num_attention_heads": shape.vision_num_attention_heads,
        "image_size": shape.view_size,
        "patch_size": shape.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=shape.pinpoints,
        vision_aspect_ratio="anyres_max_9",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=shape.text.tie_word_embeddings,
        dtype=shape.dtype,
    )


def llava_onevision_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    ids = _token_ids(tokenizer, "<|endoftext|>", "<|im_end|>")
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


BUILDER = Family(
    "llava_onevision",
    LlavaOnevisionForConditionalGeneration,
    llava_onevision_tokenizer_spec,
    llava_onevision_tokenizer_files,
    llava_onevision_processor,
    llava_onevision_config,
    llava_onevision_generation_config,
)
