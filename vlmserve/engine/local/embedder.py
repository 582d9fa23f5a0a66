"""Prompt embeddings built by the engine: token embeddings with each media item's vision features
scattered over its placeholder tokens, for any tail ``[start:]`` of the prompt.

This is what the model's own forward does (embed, run the vision tower, ``masked_scatter`` over
the placeholder ids), done here so that
- features come from the ``EncoderCache`` when the item was encoded before (one vision-tower call
  encodes all the missing items together, exactly as the model would), and
- a prefill may start anywhere, even inside an image: the features of the items that overlap the
  tail are sliced to the placeholders that lie in it. Vision features depend on the item's pixels
  only (idefics3 tiles are separate batch rows; Qwen2-VL attends within each item), so a slice
  equals what a full prefill scatters there.

Items are what the processor sees: an image, a Qwen2-VL video (``<|video_pad|>`` tokens, its
frames encoded together), or, for families that show a video as frames, each frame as an image
(prompt.py names them ``identity#i``).

``layout`` maps the prompt's media (``PreparedPrompt.media_identities``, in prompt order) to their
placeholder tokens; it returns None when that mapping cannot be proven from the inputs (an unknown
family, counts that disagree), and the runner then prefills the whole prompt the model's own way
without the prefix cache.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import torch

from vlmserve.engine.local.encoder_cache import EncoderCache
from vlmserve.engine.local.families import Family, Idefics3, Mistral3, Qwen2VL, Qwen3VL


@dataclass(frozen=True, slots=True)
class MediaSlot:
    """One media item of a prompt: ``[start, end)`` spans its placeholder tokens (the first to the
    last; idefics3 puts tile markers between them) and it owns ``num_features`` of them."""

    kind: str  # "image" or "video"
    identity: str
    index: int  # among the prompt's items of the same kind (their pixel inputs come in this order)
    start: int
    end: int
    num_features: int


class Embedder:
    """Family-agnostic part; subclasses say how items are found and encoded."""

    # kind → the config attribute naming its placeholder token id
    placeholder_names: ClassVar[dict[str, str]] = {}

    def __init__(self, model: Any, encoder_cache: EncoderCache | None) -> None:
        self.model = model
        self.encoder_cache = encoder_cache
        config = model.config
        self.placeholder_ids = {
            kind: int(getattr(config, name)) for kind, name in self.placeholder_names.items()
        }

    def layout(
        self, inputs: dict[str, torch.Tensor], identities: tuple[str, ...]
    ) -> tuple[MediaSlot, ...] | None:
        """The prompt's media items in prompt order, or None when they cannot be told apart."""
        input_ids = inputs["input_ids"][0]
        found = self._items(inputs, input_ids)
        if found is None or len(found) != len(identities):
            return None
        slots, seen = [], dict.fromkeys(self.placeholder_ids, 0)
        for (kind, positions), identity in zip(found, identities, strict=True):
            slots.append(
                MediaSlot(
                    kind, identity, seen[kind], positions[0], positions[-1] + 1, len(positions)
                )
            )
            seen[kind] += 1
        for kind, token_id in self.placeholder_ids.items():  # every placeholder belongs to an item
            if int((input_ids == token_id).sum()) != sum(
                s.num_features for s in slots if s.kind == kind
            ):
                return None
        return tuple(slots)

    def units(self, slots: tuple[MediaSlot, ...], start: int) -> list[tuple[MediaSlot, int]]:
        """The vision-encoding units that tokens ``[start:]`` still need, in order: (item, unit)
        for every item the encoder cache lacks; ``encode_unit`` runs one."""
        cache = self.encoder_cache
        todo = []
        for slot in slots:
            if slot.end <= start:
                continue
            found = cache.peek(slot.kind, slot.identity) if cache else None
            if found is None or found.shape[0] != slot.num_features:
                todo += [(slot, unit) for unit in range(self.num_units(slot))]
        return todo

    def num_units(self, slot: MediaSlot) -> int:
        """How many separately encodable units an item has (tiling families: its tiles)."""
        return 1

    def encode_unit(
        self,
        inputs: dict[str, torch.Tensor],
        slots: tuple[MediaSlot, ...],
        slot: MediaSlot,
        unit: int,
    ) -> torch.Tensor:
        """The features of unit ``unit`` of ``slot``; an item's units, concatenated in order,
        are its features."""
        every = [s for s in slots if s.kind == slot.kind]
        return self._encode(inputs, every, [slot])[0]

    def embed(
        self,
        inputs: dict[str, torch.Tensor],
        slots: tuple[MediaSlot, ...],
        start: int,
        encoded: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int, int]:
        """``inputs_embeds`` for tokens ``[start:]``; also (items encoded, items from the cache).
        ``encoded``: features encoded ahead (by identity, from ``encode_unit``)."""
        input_ids = inputs["input_ids"]
        embeds = self.model.get_input_embeddings()(input_ids[:, start:])
        num_encoded = num_cached = 0
        for kind, token_id in self.placeholder_ids.items():
            needed = [s for s in slots if s.kind == kind and s.end > start]
            if not needed:
                continue
            every = [s for s in slots if s.kind == kind]
            features, fresh = self._features(inputs, kind, every, needed, encoded or {})
            num_encoded, num_cached = num_encoded + fresh, num_cached + len(needed) - fresh
            rows = [
                f[_num_before(input_ids[0], s, token_id, start) :]
                for s, f in zip(needed, features, strict=True)
            ]
            mask = (input_ids[:, start:] == token_id).unsqueeze(-1)
            merged = torch.cat(rows).to(embeds.device, embeds.dtype)
            embeds = embeds.masked_scatter(mask, merged)
        return embeds, num_encoded, num_cached

    def _features(
        self,
        inputs: dict[str, torch.Tensor],
        kind: str,
        every: list[MediaSlot],
        slots: list[MediaSlot],
        encoded: dict[str, torch.Tensor],
    ) -> tuple[list[torch.Tensor], int]:
        cache = self.encoder_cache
        found: list[torch.Tensor | None] = []
        for s in slots:
            ahead = encoded.get(s.identity)
            if ahead is not None:
                if cache is not None:
                    cache.count_miss()
                    cache.put(s.kind, s.identity, ahead)
                found.append(ahead)
            else:
                found.append(cache.get(s.kind, s.identity) if cache else None)
        found = [  # an identity stands for the sizing too; a row count that differs is a miss
            f if f is not None and f.shape[0] == s.num_features else None
            for s, f in zip(slots, found, strict=True)
        ]
        missing = [s for s, f in zip(slots, found, strict=True) if f is None]
        if missing:
            fresh = iter(self._encode(inputs, every, missing))
            for i, features in enumerate(found):
                if features is None:
                    found[i] = features = next(fresh)
                    if cache is not None:  # a copy: a view would keep the whole batch alive
                        cache.put(kind, slots[i].identity, features.clone())
        for slot, features in zip(slots, found, strict=True):
            assert features is not None and features.shape[0] == slot.num_features
        num_ahead = sum(s.identity in encoded for s in slots)
        return [f for f in found if f is not None], len(missing) + num_ahead

    def _items(
        self, inputs: dict[str, torch.Tensor], input_ids: torch.Tensor
    ) -> list[tuple[str, list[int]]] | None:
        """(kind, placeholder positions) of each item in prompt order."""
        raise NotImplementedError

    def _encode(
        self, inputs: dict[str, torch.Tensor], every: list[MediaSlot], missing: list[MediaSlot]
    ) -> list[torch.Tensor]:
        """Features of ``missing`` (one vision-tower call), in that order; ``every`` lists all the
        prompt's items of their kind, whose pixel inputs come one after another."""
        raise NotImplementedError


class Idefics3Embedder(Embedder):
    """Each image is its tiles then a global view, each view ``image_seq_len`` ``<image>``
    tokens; an image ends with ``<global-img>``, its tokens and ``<fake_token_around_image>``."""

    placeholder_names: ClassVar[dict[str, str]] = {"image": "image_token_id"}

    def __init__(self, model: Any, processor: Any, encoder_cache: EncoderCache | None) -> None:
        super().__init__(model, encoder_cache)
        self.seq_len = int(processor.image_seq_len)
        self.global_id = int(processor.tokenizer.convert_tokens_to_ids("<global-img>"))

    def _items(
        self, inputs: dict[str, torch.Tensor], input_ids: torch.Tensor
    ) -> list[tuple[str, list[int]]] | None:
        placeholders = torch.nonzero(input_ids == self.placeholder_ids["image"]).view(-1).tolist()
        ends = [g + 1 + self.seq_len for g in torch.nonzero(input_ids == self.global_id).view(-1)]
        runs = _cut(placeholders, ends)
        if any(not run or len(run) % self.seq_len for run in runs):
            return None
        pixel_values = inputs.get("pixel_values")
        num_tiles = 0 if pixel_values is None else pixel_values.shape[1]
        taken = sum(len(run) for run in runs)
        if taken != len(placeholders) or taken != num_tiles * self.seq_len:
            return None
        return [("image", run) for run in runs]

    def _encode(
        self, inputs: dict[str, torch.Tensor], every: list[MediaSlot], missing: list[MediaSlot]
    ) -> list[torch.Tensor]:
        tiles = [s.num_features // self.seq_len for s in every]
        picked = _rows(tiles, [s.index for s in missing]).to(inputs["pixel_values"].device)
        mask = inputs.get("pixel_attention_mask")
        out = self.model.model.get_image_features(
            inputs["pixel_values"][:, picked],
            None if mask is None else mask[:, picked],
            return_dict=True,
        )
        return list(out.pooler_output[0].split([s.num_features for s in missing]))

    def num_units(self, slot: MediaSlot) -> int:
        return slot.num_features // self.seq_len

    def encode_unit(
        self,
        inputs: dict[str, torch.Tensor],
        slots: tuple[MediaSlot, ...],
        slot: MediaSlot,
        unit: int,
    ) -> torch.Tensor:
        tiles = [s.num_features // self.seq_len for s in slots if s.kind == slot.kind]
        row = int(_rows(tiles, [slot.index])[unit])
        mask = inputs.get("pixel_attention_mask")
        out = self.model.model.get_image_features(
            inputs["pixel_values"][:, row : row + 1],
            None if mask is None else mask[:, row : row + 1],
            return_dict=True,
        )
        return out.pooler_output[0]


class Qwen2VLEmbedder(Embedder):
    """Each item is one run of ``<|image_pad|>`` (or ``<|video_pad|>``) tokens between
    ``<|vision_start|>`` and ``<|vision_end|>``: grid t*h*w / merge_size^2 of them."""

    placeholder_names: ClassVar[dict[str, str]] = {
        "image": "image_token_id",
        "video": "video_token_id",
    }
    _inputs: ClassVar[dict[str, tuple[str, str]]] = {
        "image": ("pixel_values", "image_grid_thw"),
        "video": ("pixel_values_videos", "video_grid_thw"),
    }

    def _items(
        self, inputs: dict[str, torch.Tensor], input_ids: torch.Tensor
    ) -> list[tuple[str, list[int]]] | None:
        kinds = {token_id: kind for kind, token_id in self.placeholder_ids.items()}
        items: list[tuple[str, list[int]]] = []
        previous = -2
        for position, token_id in enumerate(input_ids.tolist()):
            kind = kinds.get(token_id)
            if kind is None:
                continue
            if position == previous + 1 and items[-1][0] == kind:
                items[-1][1].append(position)
            else:
                items.append((kind, [position]))
            previous = position
        for kind in self.placeholder_ids:
            counts = [len(p) for k, p in items if k == kind]
            if counts != self._sizes(inputs, kind):
                return None
        return items

    def _encode(
        self, inputs: dict[str, torch.Tensor], every: list[MediaSlot], missing: list[MediaSlot]
    ) -> list[torch.Tensor]:
        kind = missing[0].kind
        pixels_name, grid_name = self._inputs[kind]
        grid = inputs[grid_name]
        indices = [s.index for s in missing]
        picked = _rows(grid.prod(-1).tolist(), indices).to(inputs[pixels_name].device)
        sub_grid = grid[torch.tensor(indices, device=grid.device)]
        model = self.model.model
        get = model.get_image_features if kind == "image" else model.get_video_features
        return list(get(inputs[pixels_name][picked], sub_grid, return_dict=True).pooler_output)

    def _sizes(self, inputs: dict[str, torch.Tensor], kind: str) -> list[int]:
        grid = inputs.get(self._inputs[kind][1])
        if grid is None:
            return []
        merge = int(self.model.config.vision_config.spatial_merge_size)
        return [int(n) // merge**2 for n in grid.prod(-1).tolist()]


class Mistral3Embedder(Embedder):
    """Each image is its rows of ``[IMG]`` tokens, each row closed by ``[IMG_BREAK]`` and the
    last by ``[IMG_END]``: one feature per ``[IMG]``. Pixtral encodes every image alone (a
    block-diagonal mask over their patches) and the merger works per image, so an image's
    features do not depend on the others in the batch."""

    placeholder_names: ClassVar[dict[str, str]] = {"image": "image_token_id"}

    def __init__(self, model: Any, family: Mistral3, encoder_cache: EncoderCache | None) -> None:
        super().__init__(model, encoder_cache)
        self.end_id = int(family.processor.image_end_token_id)
        self.token_side = family.token_side()

    def _items(
        self, inputs: dict[str, torch.Tensor], input_ids: torch.Tensor
    ) -> list[tuple[str, list[int]]] | None:
        placeholders = torch.nonzero(input_ids == self.placeholder_ids["image"]).view(-1).tolist()
        runs = _cut(placeholders, torch.nonzero(input_ids == self.end_id).view(-1).tolist())
        sizes = inputs.get("image_sizes")
        wanted = [] if sizes is None else [h * w for h, w in (sizes // self.token_side).tolist()]
        if sum(len(run) for run in runs) != len(placeholders) or [len(r) for r in runs] != wanted:
            return None
        return [("image", run) for run in runs]

    def _encode(
        self, inputs: dict[str, torch.Tensor], every: list[MediaSlot], missing: list[MediaSlot]
    ) -> list[torch.Tensor]:
        picked = torch.tensor([s.index for s in missing], device=inputs["pixel_values"].device)
        out = self.model.model.get_image_features(
            inputs["pixel_values"][picked],
            inputs["image_sizes"][picked.to(inputs["image_sizes"].device)],
            return_dict=True,
        )
        return list(out.pooler_output)


class TextOnlyEmbedder(Embedder):
    """Families whose media the engine cannot rebuild from embeddings (Qwen3-VL's DeepStack adds
    vision features inside the decoder) or whose layout it does not know: text-only prompts use
    the prefix cache; a prompt with media is prefilled whole, the model's own way."""

    def layout(
        self, inputs: dict[str, torch.Tensor], identities: tuple[str, ...]
    ) -> tuple[MediaSlot, ...] | None:
        return None if identities else ()

    def _items(
        self, inputs: dict[str, torch.Tensor], input_ids: torch.Tensor
    ) -> list[tuple[str, list[int]]] | None:
        return None

    def _encode(
        self, inputs: dict[str, torch.Tensor], every: list[MediaSlot], missing: list[MediaSlot]
    ) -> list[torch.Tensor]:
        raise AssertionError("a text-only layout has no media to encode")


def embedder_for(
    family: Family, model: Any, processor: Any, encoder_cache: EncoderCache | None
) -> Embedder | None:
    """The embedder of ``family``: media-aware where the engine knows the layout."""
    if isinstance(family, Idefics3):
        return Idefics3Embedder(model, processor, encoder_cache)
    if isinstance(family, Qwen2VL) and not isinstance(family, Qwen3VL):
        return Qwen2VLEmbedder(model, encoder_cache)
    if isinstance(family, Mistral3):
        return Mistral3Embedder(model, family, encoder_cache)
    return TextOnlyEmbedder(model, encoder_cache)


def _num_before(input_ids: torch.Tensor, slot: MediaSlot, token_id: int, start: int) -> int:
    """How many of ``slot``'s placeholders lie before ``start`` (already in the cached prefix)."""
    if start <= slot.start:
        return 0
    return int((input_ids[slot.start : start] == token_id).sum())


def _cut(placeholders: list[int], ends: list[int]) -> list[list[int]]:
    """``placeholders`` (ascending prompt positions) cut at each of ``ends`` (ascending): those
    before the first end, then those between it and the second, ...; any past the last end are
    left out (the callers count them as a layout they do not know)."""
    bounds = [bisect.bisect_left(placeholders, end) for end in ends]
    return [placeholders[lo:hi] for lo, hi in pairwise([0, *bounds])]


def _rows(sizes: list[int], indices: list[int]) -> torch.Tensor:
    """The rows of the items ``indices`` in a tensor holding items of ``sizes`` rows in a row."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return torch.cat([torch.arange(starts[i], starts[i] + sizes[i]) for i in indices])
