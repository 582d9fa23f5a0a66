"""A vision encoding run in time slices between decode steps, paused at the vision tower's layer
boundaries.

One vision-encoding unit (an image, or one tile for tiling families) is the smallest piece the
embedder can encode on its own; on a small CPU a SmolVLM tile costs ~1.5 s and a 2B Qwen image
several seconds, and every running stream waits that long for its next token. The vision tower is
a stack of identical layers (SigLIP's ``encoder.layers``, Qwen2-VL's ``visual.blocks``, ...), so
the engine runs the encoding as a ``SlicedCall``: once its slice of time is spent, a pre-forward
hook on the next layer hands control back to the step loop, which decodes a step for the running
rows and resumes the encoding where it stopped. The computation is the same call, only paused, so
the features are bit-identical to one uninterrupted call.

Why greenlet (not a thread, not a rewrite of each tower's forward): the pause must happen inside
transformers' own forward, for any family, without a second OS thread: a second thread running
torch ops starts a second OpenMP team and slows every decode step (prep_pool.py). A greenlet is a
second stack on the *same* thread (same OpenMP team, same torch thread-local modes); transformers'
per-call context variables are per greenlet (greenlet >= 1.0 gives each its own context).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import greenlet
from torch import nn


class SlicedCall(greenlet.greenlet):  # type: ignore[misc]  # greenlet ships no type stubs
    """``fn()`` run a slice at a time on the calling thread; ``advance`` runs the next slice."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(run=fn)
        self.deadline = math.inf
        self.result: Any = None
        self.num_slices = 0
        self.layer_start: float | None = None  # when the running layer started

    def advance(self, slice_s: float) -> bool:
        """Run until ``fn`` returns (True; its value in ``result``) or until the next layer would
        end past ``slice_s`` seconds (False). At least one layer runs per slice, and what follows
        the tower's last layer runs in the last slice (the connector; in a whole-prompt forward,
        the language model's prefill, which does not pause), so a slice is longer than
        ``slice_s`` only by those. ``fn``'s exception is raised here."""
        self.deadline = time.perf_counter() + slice_s
        self.num_slices += 1
        value = self.switch()
        if self.dead:
            self.result = value
            return True
        return False

    def close(self) -> None:
        """Abandon a paused call (its sequence was freed): unwind its frames now, on this
        thread, instead of whenever the collector finds it."""
        if bool(self) and not self.dead:
            self.throw(greenlet.GreenletExit)


def install_pauses(model: nn.Module) -> int:
    """Hook the vision tower's layers so that a ``SlicedCall`` running them pauses between two
    layers once its slice is spent; calls outside a ``SlicedCall`` are untouched. Returns how
    many layers were hooked (0: no tower found, encodings then run whole)."""
    layers = vision_layers(model)
    if layers is None:
        return 0
    for layer in layers:
        layer.register_forward_pre_hook(_pause_if_spent)
    return len(layers)


def vision_layers(model: nn.Module) -> nn.ModuleList | None:
    """The vision tower's stack of layers: the longest ``nn.ModuleList`` outside the language
    model's decoder (the towers of every family we serve are one such stack)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    inside = {id(m) for m in decoder.modules()} if isinstance(decoder, nn.Module) else set()
    stacks = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and id(m) not in inside and len(m) >= 2
    ]
    return max(stacks, key=len, default=None)


def _pause_if_spent(module: nn.Module, args: Any) -> None:
    """Before a layer: pause when another layer like the last one would end past the deadline
    (never before the slice's first layer)."""
    current = greenlet.getcurrent()
    if not isinstance(current, SlicedCall):
        return
    now = time.perf_counter()
    if current.layer_start is not None:
        last_layer_s = now - current.layer_start
        if now + last_layer_s > current.deadline:
            current.parent.switch()
            now = time.perf_counter()
    current.layer_start = now
