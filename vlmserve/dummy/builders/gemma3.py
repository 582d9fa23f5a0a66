"""Gemma 3 (``gemma3``): SigLIP at a fixed 896 px, average-pooled to 256 soft tokens an image
(``<start_of_image>`` + 256 ``<image_soft_token>`` + ``<end_of_image>``, bidirectional attention
among them), into a Gemma 3 decoder with interleaved sliding-window and global layers.

The release (google/gemma-3-4b-it) has the Gemma tokenizer (SentencePiece-style BPE with byte
fallback; transformers' ``GemmaTokenizer``) and names the image tokens in tokenizer_config.json.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlmserve.dummy.families import Family, TokenizerFiles, _token_ids
from vlmserve.dummy.shapes import TextShape
from vlmserve.dummy.tokenizer import AddedSpec, TokenizerSpec

GEMMA_LEADING = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA3_ADDED = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
HALF = [0.5, 0.5, 0.5]

# google/gemma-3-4b-it chat_template.json: a system message becomes a prefix of the first user
# turn (its first text part), roles must alternate, the assistant is "model", text parts are
# trimmed, an image is ``<start_of_image>`` (the processor expands it).
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


@dataclass(frozen=True, slots=True)
class Gemma3Shape:
    text: TextShape
    head_dim: int
    sliding_window: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_hidden_layers: int
    vision_num_attention_heads: int
    patch_size: int
    image_size: int
    mm_tokens_per_image: int  # a square number: the pooled grid
    dtype: str


GEMMA3_SHAPES: dict[str, Gemma3Shape] = {
    # 56 px images of 14 px patches pooled to 2x2: 4 soft tokens an image
    "tiny": Gemma3Shape(
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
            tie_word_embeddings=True,
        ),
        head_dim=16,
        sliding_window=512,
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=2,
        patch_size=14,
        image_size=56,
        mm_tokens_per_image=4,
        dtype="float32",
    ),
    # google/gemma-3-4b-it config.json
    "gemma3-4b": Gemma3Shape(
        text=TextShape(
            vocab_size=262208,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=131072,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        head_dim=256,
        sliding_window=1024,
        vision_hidden_size=1152,
        vision_intermediate_size=4304,
        vision_num_hidden_layers=27,
        vision_num_attention_heads=16,
        patch_size=14,
        image_size=896,
        mm_tokens_per_image=256,
        dtype="bfloat16",
    ),
}


def gemma3_tokenizer_spec(shape: Gemma3Shape) -> TokenizerSpec:
    return TokenizerSpec(
        pipeline="gemma",
        vocab_size=shape.text.vocab_size,
        leading_special=GEMMA_LEADING,
        added=tuple(AddedSpec(t) for t in GEMMA3_ADDED),
    )


def gemma3_tokenizer_files(shape: Gemma3Shape) -> TokenizerFiles:
    special: dict[str, str | None] = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    return TokenizerFiles("GemmaTokenizer", special, shape.text.max_position_embeddings)


def gemma3_processor(shape: Gemma3Shape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    image = Gemma3ImageProcessor(
        size={"height": shape.image_size, "width": shape.image_size},
        image_mean=HALF,
        image_std=HALF,
        do_convert_rgb=True,
        do_pan_and_scan=False,
    )
    return Gemma3Processor(
        image_processor=image,
        tokenizer=tokenizer,
        image_seq_length=shape.mm_tokens_per_image,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )


def gemma3_config(shape: Gemma3Shape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    ids = _token_ids(tokenizer, "<bos>", "<eos>", "<pad>", *GEMMA3_ADDED)
    t = shape.text
    text = {
        "model_type": "gemma3_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "sliding_window": shape.sliding_window,
        "query_pre_attn_scalar": shape.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "initializer_range": 0.02,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "pad_token_id": ids["<pad>"],
    }
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_num_hidden_layers,
        "num_attention_heads": shape.vision_num_attention_heads,
        "image_size": shape.image_size,
        "patch_size": shape.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=shape.mm_tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=t.tie_word_embeddings,
        dtype=shape.dtype,
    )


def gemma3_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    ids = _token_ids(tokenizer, "<bos>", "<eos>", "<pad>", "<end_of_turn>")
    return GenerationConfig(
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
    )


BUILDER = Family(
    "gemma3",
    Gemma3ForConditionalGeneration,
    gemma3_tokenizer_spec,
    gemma3_tokenizer_files,
    gemma3_processor,
    gemma3_config,
    gemma3_generation_config,
)
