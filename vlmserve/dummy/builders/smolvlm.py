"""SmolVLM2 (``smolvlm``): SmolVLM's SigLIP tiles + pixel shuffle + Llama decoder, with native
video (the processor expands ``<video>`` into timestamped frames, each a single 512 px view).

The real release (HuggingFaceTB/SmolVLM2-256M-Video-Instruct) has the SmolVLM tokenizer and image
processor and adds a video processor; only the model class, processor classes and chat template
differ from ``idefics3``, so the shapes and most builders are shared with it.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import (
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
)
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

from vlmserve.dummy.families import (
    Family,
    idefics3_config,
    idefics3_generation_config,
    idefics3_tokenizer_files,
    idefics3_tokenizer_spec,
)
from vlmserve.dummy.shapes import IDEFICS3_SHAPES, Idefics3Shape

# HuggingFaceTB/SmolVLM2-256M-Video-Instruct chat_template.json: SmolVLM's template plus a
# ``<video>`` placeholder for video parts.
SMOLVLM2_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}"
    "{{ '<video>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# SmolVLM2's checkpoints have the dimensions of their SmolVLM counterparts; tiny as idefics3's
# (4 tokens a 32 px tile, at most 2x2 tiles + the global view).
SMOLVLM_SHAPES: dict[str, Idefics3Shape] = {
    "tiny": IDEFICS3_SHAPES["tiny"],
    # HuggingFaceTB/SmolVLM2-256M-Video-Instruct: SmolLM2-135M-sized decoder, 93M SigLIP
    "smolvlm2-256m": IDEFICS3_SHAPES["smolvlm-256m"],
}


def smolvlm_processor(shape: Idefics3Shape, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    common: dict[str, Any] = {
        "do_convert_rgb": True,
        "resample": Image.Resampling.LANCZOS,
        "max_image_size": {"longest_edge": shape.tile_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
    }
    image_processor = SmolVLMImageProcessor(
        do_resize=True,
        size={"longest_edge": shape.longest_edge},
        do_image_splitting=True,
        **common,
    )
    # The release's video_sampling: 1 fps, at most 64 frames, each one view at the tile size.
    sampling: dict[str, Any] = {
        "video_sampling": {
            "fps": 1,
            "max_frames": 64,
            "video_size": {"longest_edge": shape.tile_size},
        }
    }
    video_processor = SmolVLMVideoProcessor(
        do_resize=True, size={"longest_edge": shape.tile_size}, **sampling, **common
    )
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_len=shape.image_seq_len,
        chat_template=SMOLVLM2_CHAT_TEMPLATE,
    )


def smolvlm_config(shape: Idefics3Shape, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    base = idefics3_config(shape, tokenizer).to_dict()
    vision = {**base["vision_config"], "model_type": "smolvlm_vision"}
    return SmolVLMConfig(
        text_config=base["text_config"],
        vision_config=vision,
        scale_factor=shape.scale_factor,
        image_token_id=base["image_token_id"],
        tie_word_embeddings=shape.text.tie_word_embeddings,
        dtype=shape.dtype,
    )


BUILDER = Family(
    "smolvlm",
    SmolVLMForConditionalGeneration,
    idefics3_tokenizer_spec,
    idefics3_tokenizer_files,
    smolvlm_processor,
    smolvlm_config,
    idefics3_generation_config,
)
