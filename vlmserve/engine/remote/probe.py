"""The start-up check that a replica bills what vlmserve counts.

vlmserve counts prompts with the model's own processor (``engine/local/counter.py``) and sizes
pictures before sending them. A replica whose processor sizes or tiles them differently bills
another number than ``/v1/token/count`` promised: SmolVLM (idefics3) on vLLM upscales every
picture to the full tile grid unless told otherwise by ``mm_processor_kwargs`` (the family's
``upstream_processor_kwargs``), which vLLM honours only when started with
``--trust-request-mm-kwargs``. So before a replica takes requests, one small picture, smaller
than the low-detail budget (where an upscaling processor would add tiles), is counted here and
billed there (a one-token completion); a replica that disagrees stays out of rotation, with a
message that names the flag to add.
"""

from __future__ import annotations

from vlmserve.engine.types import MediaInput, MediaPart, Message, Prompt, TextPart

PROBE_TEXT = "vlmserve count check: describe the picture."
TRUST_FLAG = "--trust-request-mm-kwargs"


def probe_size(image_edges: tuple[int, int] | None) -> tuple[int, int]:
    """A 4:3 picture a little smaller than the low-detail edge (320x240 for SmolVLM's 512)."""
    low = image_edges[0] if image_edges else 512
    width = max(16, low * 5 // 8)
    return width, max(12, width * 3 // 4)


def probe_prompt(image_edges: tuple[int, int] | None) -> Prompt:
    from PIL import Image  # only when a replica is checked

    width, height = probe_size(image_edges)
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)]
    )
    message = Message("user", (MediaPart(0), TextPart(PROBE_TEXT)))
    media = MediaInput("image", (image,), identity=f"vlmserve-probe-{width}x{height}")
    return Prompt((message,), (media,))


def mismatch_message(
    replica: str, counted: int, billed: int, size: tuple[int, int], kwargs: dict[str, object]
) -> str:
    sent = f" and sent mm_processor_kwargs {kwargs}" if kwargs else ""
    return (
        f"count check failed: a {size[0]}x{size[1]} picture is {counted} prompt tokens in "
        f"vlmserve's count{sent}, but {replica} billed {billed}; the replica's processor sizes "
        f"pictures differently. Start vLLM with {TRUST_FLAG} (so it honours the processor "
        "options vlmserve sends) and serve the same model files to both"
    )


def refused_message(replica: str, reason: str, kwargs: dict[str, object]) -> str:
    return (
        f"count check failed: {replica} refused the processor options {kwargs} that vlmserve "
        f"counted with ({reason}); start vLLM with {TRUST_FLAG}"
    )
