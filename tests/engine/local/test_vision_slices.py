"""Vision encodings paused between layers: the same bits as one call, on every family's tower."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.engine.local.helpers import image
from vlmserve.dummy import FAMILIES
from vlmserve.engine.local.vision_slices import SlicedCall, install_pauses, vision_layers


def picture_inputs(path: Path) -> dict[str, Any]:
    processor: Any = AutoProcessor.from_pretrained(path)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[[image(80, 60, 3)]], return_tensors="pt"))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_paused_between_every_vision_layer_gives_the_same_logits(
    family: str, tiny_models: dict[str, Path]
) -> None:
    auto: Any = AutoModelForImageTextToText
    model = auto.from_pretrained(tiny_models[family], dtype=torch.float32).eval()
    inputs = picture_inputs(tiny_models[family])
    layers = vision_layers(model)
    assert layers is not None and install_pauses(model) == len(layers)
    assert not any(layers is m for m in model.get_decoder().modules())
    with torch.inference_mode():
        whole = model(**inputs).logits
        call = SlicedCall(lambda: model(**inputs).logits)
        slices = 0
        while not call.advance(0.0):  # a slice of nothing: one layer each
            slices += 1
    assert slices >= len(layers) - 1  # paused before every layer but the first of each call
    assert torch.equal(call.result, whole)


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_call_outside_a_slice_never_pauses() -> None:
    stack = Stack()
    install_pauses(stack)
    call = SlicedCall(lambda: stack(torch.ones(1, 4)))
    assert call.advance(math.inf)  # no deadline: one go
    assert call.num_slices == 1
    assert torch.equal(call.result, stack(torch.ones(1, 4)))  # plain calls run as before


def test_closing_a_paused_call_unwinds_it_now() -> None:
    stack = Stack()
    install_pauses(stack)
    unwound: list[bool] = []

    def encode() -> torch.Tensor:
        try:
            return stack(torch.ones(1, 4))
        finally:
            unwound.append(True)

    call = SlicedCall(encode)
    assert not call.advance(0.0)
    assert unwound == []
    call.close()
    assert unwound == [True] and call.dead


def test_an_error_inside_a_slice_reaches_the_caller() -> None:
    stack = Stack()
    install_pauses(stack)
    call = SlicedCall(lambda: stack(torch.ones(1, 5)))  # wrong width: the first layer fails
    with pytest.raises(RuntimeError):
        call.advance(0.0)
    assert call.dead
