"""Byte-mutation fuzzing of valid JPEG, PNG, GIF and WebP files (truncations, bit flips, inserted
and duplicated bytes, inserted segments/chunks): every mutant is served or refused with a 400,
never a 500 and never a hang. Fixed seeds, so a failure reproduces; pytest turns warnings into
errors, so a warning Pillow emits on hostile bytes counts as a crash here."""

from __future__ import annotations

import random
import struct
import time
import zlib

import httpx
import pytest

from tests.media.images import (
    data_url,
    encode,
    exif_bytes,
    exif_segment,
    gradient,
    jpeg_segment,
    with_segments,
)
from tests.media.test_prepare import prepare
from vlmserve.errors import VlmserveError

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
SEEDS = (0, 1)
NUM_DIRECT = 400  # mutants per format and seed through the pipeline itself
NUM_HTTP = 25  # ... and through the HTTP API
MAX_SECONDS = 5.0  # one small image; anything slower is a hang


def originals() -> dict[str, bytes]:
    im = gradient(48, 36)
    jpeg = with_segments(encode(im, "JPEG", quality=80), exif_segment(exif_bytes(6, gps=True)))
    return {
        "JPEG": jpeg,
        "PNG": encode(im, "PNG"),
        "GIF": encode(im, "GIF"),
        "WEBP": encode(im, "WEBP", quality=80),
    }


def _segment(fmt: str, rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randint(0, 96))
    if fmt == "JPEG":
        return jpeg_segment(rng.choice((0xE0, 0xE1, 0xE2, 0xED, 0xEE, 0xFE, 0xDB, 0xC4)), body)
    if fmt == "PNG":
        kind = rng.choice((b"tEXt", b"zTXt", b"iCCP", b"eXIf", b"tRNS", b"PLTE", b"acTL", b"abCd"))
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )
    if fmt == "GIF":
        return b"\x21" + bytes([rng.choice((0xF9, 0xFE, 0xFF, 0x01))]) + bytes([len(body)]) + body
    kind = rng.choice((b"EXIF", b"XMP ", b"ICCP", b"ANIM", b"ANMF", b"VP8X", b"ALPH"))
    return kind + struct.pack("<I", len(body)) + body


def mutate(data: bytes, fmt: str, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out)) if out else 0
        op = rng.randrange(5)
        if op == 0:  # truncation
            del out[max(at, 1) :]
        elif op == 1 and out:  # bit flips
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif op == 2:  # inserted bytes
            out[at:at] = rng.randbytes(rng.randint(1, 32))
        elif op == 3:  # a duplicated stretch
            out[at:at] = out[at : at + rng.randint(1, 256)]
        else:  # an inserted segment / chunk, near the header where the parsers look
            where = {"JPEG": 2, "PNG": 33, "GIF": 13, "WEBP": 12}[fmt]
            out[where:where] = _segment(fmt, rng)
    return bytes(out)


def mutants(fmt: str, seed: int, count: int) -> list[bytes]:
    rng = random.Random(f"{fmt}-{seed}")
    original = originals()[fmt]
    return [mutate(original, fmt, rng) for _ in range(count)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fmt", list(MIME))
def test_mutated_image_is_prepared_or_refused_never_an_exception(fmt: str, seed: int) -> None:
    for i, data in enumerate(mutants(fmt, seed, NUM_DIRECT)):
        started = time.monotonic()
        try:
            prepare(data)
        except VlmserveError as exc:
            assert exc.status == 400, f"{fmt} seed {seed} mutant {i}: {exc.status} {exc.message}"
        except Exception as exc:  # pragma: no cover - the failure being prevented
            raise AssertionError(f"{fmt} seed {seed} mutant {i}: {exc!r}") from exc
        assert time.monotonic() - started < MAX_SECONDS, f"{fmt} seed {seed} mutant {i} hung"


@pytest.mark.parametrize("fmt", list(MIME))
def test_mutated_image_over_http_is_200_or_400(http: httpx.Client, fmt: str) -> None:
    for i, data in enumerate(mutants(fmt, 7, NUM_HTTP)):
        part = {"type": "image_url", "image_url": {"url": data_url(data, MIME[fmt])}}
        body = {"model": "step-1v-8k", "messages": [{"role": "user", "content": [part]}]}
        started = time.monotonic()
        resp = http.post("/v1/chat/completions", json=body, timeout=MAX_SECONDS * 2)
        assert resp.status_code in (200, 400), f"{fmt} mutant {i}: {resp.text}"
        assert time.monotonic() - started < MAX_SECONDS, f"{fmt} mutant {i} hung"
