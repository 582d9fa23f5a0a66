"""The families added in builders/: each dummy directory loads through the Auto classes into the
release's classes, renders the release's chat template, and its real shape copies the release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vlmserve.dummy import FAMILY_SHAPES, make_dummy_model
from vlmserve.dummy.builders.gemma3 import GEMMA3_SHAPES
from vlmserve.dummy.builders.internvl import INTERNVL_SHAPES
from vlmserve.dummy.builders.llava_onevision import LLAVA_ONEVISION_SHAPES
from vlmserve.dummy.builders.mistral3 import MISTRAL3_SHAPES
from vlmserve.dummy.builders.qwen2_5_vl import QWEN2_5_VL_SHAPES
from vlmserve.dummy.builders.qwen3_vl import QWEN3_VL_SHAPES
from vlmserve.dummy.builders.smolvlm import SMOLVLM_SHAPES

# model_type → (the release's model class, processor class): what a hub download loads into.
RELEASE_CLASSES = {
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "internvl": ("InternVLForConditionalGeneration", "InternVLProcessor"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor"),
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
    "mistral3": ("Mistral3ForConditionalGeneration", "PixtralProcessor"),
}
# Ministral 3's template writes this when the conversation has no system message ({today} and
# {yesterday} are left as they are: transformers does not fill them).
MINISTRAL3_DEFAULT_SYSTEM = (
    "You are Ministral-3-3B-Instruct-2512, a Large Language Model (LLM) created by Mistral "
    "AI, a French startup headquartered in Paris.\n"
    "You power an AI assistant called Le Chat.\n"
    "Your knowledge base was last updated on 2023-10-01.\n"
    "The current date is {today}.\n"
    "\n"
    "When you're not sure about some information or when the user's request requires "
    "up-to-date or specific data, you must use the available tools to fetch the "
    "information. Do not hesitate to use tools whenever they can provide a more accurate "
    "or complete response. If no relevant tools are available, then clearly state that you "
    "don't have the information and avoid making up anything.\n"
    "If the user's question is not clear, ambiguous, or does not provide enough context "
    "for you to accurately answer the question, you do not try to answer it right away and "
    'you rather ask the user to clarify their request (e.g. "What are some good '
    'restaurants around me?" => "Where are you?" or "When is the next flight to Tokyo" => '
    '"Where do you travel from?").\n'
    "You are always very attentive to dates, in particular you try to resolve dates (e.g. "
    '"yesterday" is {yesterday}) and when asked about information at specific dates, you '
    "discard information that is at another date.\n"
    "You follow these instructions in all languages, and always respond to the user in the "
    "language they use or request.\n"
    "Next sections describe the capabilities that you have.\n"
    "\n"
    "# WEB BROWSING INSTRUCTIONS\n"
    "\n"
    "You cannot perform any web search or access internet to open URLs, links etc. If it "
    "seems like the user is expecting you to do so, you clarify the situation and ask the "
    "user to copy paste the text directly in the chat.\n"
    "\n"
    "# MULTI-MODAL INSTRUCTIONS\n"
    "\n"
    "You have the ability to read images, but you cannot generate images. You also cannot "
    "transcribe audio files or videos.\n"
    "You cannot read nor transcribe audio files or videos.\n"
    "\n"
    "# TOOL CALLING INSTRUCTIONS\n"
    "\n"
    "You may have access to tools that you can use to fetch information or perform "
    "actions. You must use these tools in the following situations:\n"
    "\n"
    "1. When the request requires up-to-date information.\n"
    "2. When the request requires specific data that you do not have in your knowledge "
    "base.\n"
    "3. When the request involves actions that you cannot perform without tools.\n"
    "\n"
    "Always prioritize using tools to provide the most accurate and helpful response. If "
    "tools are not available, inform the user that you cannot perform the requested action "
    "at the moment."
)

# What each release's template makes of [user: image, "Hi"] with a generation prompt.
RENDERED = {
    "smolvlm": "<|im_start|>User:<image>Hi<end_of_utterance>\nAssistant:",
    "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n",
    "qwen3_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
    "<|im_start|>assistant\n",
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nHi<|im_end|>\n<|im_start|>assistant\n",
    "llava_onevision": "<|im_start|>user\n<image>\nHi<|im_end|><|im_start|>assistant\n",
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>Hi<end_of_turn>\n<start_of_turn>model\n",
    "mistral3": (
        f"<s>[SYSTEM_PROMPT]{MINISTRAL3_DEFAULT_SYSTEM}[/SYSTEM_PROMPT][INST][IMG]Hi[/INST]"
    ),
}
# The release's video placeholder in the template, for families with native video.
VIDEO_PART = {
    "smolvlm": "<video>",
    "qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "internvl": "<video>\n",
    "llava_onevision": "<video>",
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: make_dummy_model(root / f, f, "tiny") for f in RELEASE_CLASSES}


def _processor(path: Path) -> Any:
    return AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("family", sorted(RELEASE_CLASSES))
def test_auto_classes_load_the_release_classes(dirs: dict[str, Path], family: str) -> None:
    model_class, processor_class = RELEASE_CLASSES[family]
    assert AutoConfig.from_pretrained(dirs[family]).model_type == family  # type: ignore[no-untyped-call]
    assert type(_processor(dirs[family])).__name__ == processor_class
    model = AutoModelForImageTextToText.from_pretrained(dirs[family])
    assert type(model).__name__ == model_class


@pytest.mark.parametrize("family", sorted(RELEASE_CLASSES))
def test_the_release_chat_template_renders(dirs: dict[str, Path], family: str) -> None:
    processor = _processor(dirs[family])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == RENDERED[family]
    if family not in VIDEO_PART:
        return
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(video, add_generation_prompt=True, tokenize=False)
    assert VIDEO_PART[family] in text


def test_qwen3_vl_template_writes_its_own_tools_section(dirs: dict[str, Path]) -> None:
    processor = _processor(dirs["qwen3_vl"])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '"name": "f"' in text and "</tools>" in text


def test_every_family_has_tiny_and_a_real_shape() -> None:
    for family in RELEASE_CLASSES:
        assert FAMILY_SHAPES[family][0] == "tiny" and len(FAMILY_SHAPES[family]) >= 2


def test_real_shapes_copy_the_released_dimensions() -> None:
    smol = SMOLVLM_SHAPES["smolvlm2-256m"]
    assert (smol.text.hidden_size, smol.text.num_hidden_layers, smol.image_seq_len) == (576, 30, 64)
    q25 = QWEN2_5_VL_SHAPES["qwen2.5-vl-3b"]
    assert (q25.text.hidden_size, q25.text.num_hidden_layers, q25.vision.depth) == (2048, 36, 32)
    q3 = QWEN3_VL_SHAPES["qwen3-vl-2b"]
    assert (q3.text.hidden_size, q3.text.num_hidden_layers, q3.deepstack_visual_indexes) == (
        2048,
        28,
        (5, 11, 17),
    )
    intern = INTERNVL_SHAPES["internvl3-1b"]
    assert (intern.text.hidden_size, intern.image_seq_length, intern.text.vocab_size) == (
        896,
        256,
        151674,
    )
    llava = LLAVA_ONEVISION_SHAPES["llava-onevision-0.5b"]
    assert (llava.num_image_tokens, llava.vision_num_hidden_layers, llava.pinpoints[-1]) == (
        729,
        26,
        [2304, 2304],
    )
    ministral = MISTRAL3_SHAPES["ministral3-3b"]
    assert (ministral.text.hidden_size, ministral.text.num_hidden_layers, ministral.head_dim) == (
        3072,
        26,
        128,
    )
    assert (
        ministral.text.vocab_size,
        ministral.vision_num_hidden_layers,
        ministral.max_image_tokens,
    ) == (
        131072,
        24,
        55 * 56,
    )
    assert ministral.rope_parameters["original_max_position_embeddings"] == 16384
    gemma = GEMMA3_SHAPES["gemma3-4b"]
    assert (gemma.text.hidden_size, gemma.text.num_hidden_layers, gemma.mm_tokens_per_image) == (
        2560,
        34,
        256,
    )


def test_gemma3_template_puts_the_system_text_in_the_first_user_turn(dirs: dict[str, Path]) -> None:
    processor = _processor(dirs["gemma3"])
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_ministral3_tokenizer_keeps_the_release_control_token_ids(dirs: dict[str, Path]) -> None:
    tokenizer = _processor(dirs["mistral3"]).tokenizer
    named = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 9: "[TOOL_CALLS]"}
    named |= {10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 17: "[SYSTEM_PROMPT]"}
    named |= {5: "[AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 32: "[ARGS]", 999: "<SPECIAL_999>"}
    for token_id, token in named.items():
        assert tokenizer.convert_ids_to_tokens(token_id) == token
    assert len(tokenizer) == MISTRAL3_SHAPES["tiny"].text.vocab_size
    text = "[INST]Héllo 你好 🙂 42[/INST]"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_ministral3_template_writes_system_tools_and_calls_its_own_way(
    dirs: dict[str, Path],
) -> None:
    processor = _processor(dirs["mistral3"])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "42"},
    ]
    text = processor.apply_chat_template(messages, tools=tools, tokenize=False)
    assert text == (
        "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][AVAILABLE_TOOLS]"
        f"{json.dumps(tools)}[/AVAILABLE_TOOLS][INST][IMG]Hi[/INST]"
        '[TOOL_CALLS]f[ARGS]{"a": 1}</s>[TOOL_RESULTS]42[/TOOL_RESULTS]'
    )
