"""The sizes a dummy model can have, per family.

``tiny`` exists for every family: a few MB, built in about a second, an image costs a few tens of
tokens and one forward pass takes milliseconds on a CPU, but the context window is 8192 tokens
(rotary positions cost nothing) so long prompts can be tested. The other shapes copy a real
model's dimensions so that compute and memory match it; only the weights are random:

- ``smolvlm-256m`` (idefics3): HuggingFaceTB/SmolVLM-256M-Instruct.
- ``qwen2-vl-2b`` (qwen2_vl): Qwen/Qwen2-VL-2B-Instruct.
- ``tiny-h32`` (every family): ``tiny`` with 32-wide attention heads (``tiny``'s are 16), the
  smallest that vLLM's CPU attention accepts; for the tests against a real vLLM replica.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class TextShape:
    """A Llama/Qwen2-style decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool


@dataclass(frozen=True, slots=True)
class Idefics3Shape:
    """SmolVLM: SigLIP tower on square tiles, pixel-shuffle connector, Llama decoder."""

    text: TextShape
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_hidden_layers: int
    vision_num_attention_heads: int
    patch_size: int
    tile_size: int  # vision image_size and the processor's max_image_size longest_edge
    scale_factor: int
    longest_edge: int  # the processor resizes an image's longest edge to this, then tiles it
    dtype: str

    @property
    def image_seq_len(self) -> int:
        """Tokens per tile: (tile / patch)^2 patches, pixel-shuffled by scale_factor^2."""
        return (self.tile_size // self.patch_size) ** 2 // self.scale_factor**2


@dataclass(frozen=True, slots=True)
class Qwen2VLShape:
    """Qwen2-VL: native-resolution ViT, 2x2 patch merger, M-RoPE decoder."""

    text: TextShape
    mrope_section: tuple[int, int, int]  # sums to head_dim / 2
    vision_embed_dim: int
    vision_depth: int
    vision_num_heads: int
    vision_mlp_ratio: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    video_min_pixels: int
    video_max_pixels: int
    dtype: str


Shape = Idefics3Shape | Qwen2VLShape

IDEFICS3_SHAPES: dict[str, Idefics3Shape] = {
    # 32 px tiles of 8 px patches, scale 2: 4 tokens a tile; a 64 px longest edge gives at most
    # 2x2 tiles + the global tile, about 34 tokens an image with the tile markers.
    "tiny": Idefics3Shape(
        text=TextShape(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=2,
        patch_size=8,
        tile_size=32,
        scale_factor=2,
        longest_edge=64,
        dtype="float32",
    ),
    "smolvlm-256m": Idefics3Shape(
        text=TextShape(
            vocab_size=49280,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        vision_hidden_size=768,
        vision_intermediate_size=3072,
        vision_num_hidden_layers=12,
        vision_num_attention_heads=12,
        patch_size=16,
        tile_size=512,
        scale_factor=4,
        longest_edge=2048,
        dtype="bfloat16",
    ),
}

QWEN2_VL_SHAPES: dict[str, Qwen2VLShape] = {
    # A 28x28 px block is one token; images get 4..36 tokens, video frames 4..16 per 2 frames.
    "tiny": Qwen2VLShape(
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
        mrope_section=(2, 3, 3),
        vision_embed_dim=32,
        vision_depth=2,
        vision_num_heads=2,
        vision_mlp_ratio=2,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=28 * 28 * 36,
        video_min_pixels=56 * 56,
        video_max_pixels=28 * 28 * 16,
        dtype="float32",
    ),
    "qwen2-vl-2b": Qwen2VLShape(
        text=TextShape(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        mrope_section=(16, 24, 24),
        vision_embed_dim=1280,
        vision_depth=32,
        vision_num_heads=16,
        vision_mlp_ratio=4,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=56 * 56,
        max_pixels=28 * 28 * 16384,  # 12845056, the released preprocessor_config.json
        video_min_pixels=128 * 28 * 28,  # transformers' Qwen2VLVideoProcessor defaults
        video_max_pixels=28 * 28 * 768,
        dtype="bfloat16",
    ),
}

# vLLM's CPU attention refuses head_dim 16: the same tiny models with two 32-wide heads.
IDEFICS3_SHAPES["tiny-h32"] = replace(
    IDEFICS3_SHAPES["tiny"],
    text=replace(IDEFICS3_SHAPES["tiny"].text, num_attention_heads=2, num_key_value_heads=1),
)
QWEN2_VL_SHAPES["tiny-h32"] = replace(
    QWEN2_VL_SHAPES["tiny"],
    text=replace(QWEN2_VL_SHAPES["tiny"].text, num_attention_heads=2, num_key_value_heads=1),
    mrope_section=(4, 6, 6),  # sums to head_dim / 2 = 16
)

SHAPES_BY_FAMILY: dict[str, dict[str, Idefics3Shape] | dict[str, Qwen2VLShape]] = {
    "idefics3": IDEFICS3_SHAPES,
    "qwen2_vl": QWEN2_VL_SHAPES,
}
