"""Image intake benchmark (issue 3): vlmserve's intake against the plain path peers use.

Run by hand, never in tests:

    .venv/bin/python bench/bench_intake.py [--repeats 7] [--write docs/benchmarks.md]

Plain path (what most servers do): base64-decode the data URL, ``Image.open``, ``convert("RGB")``,
``resize`` with LANCZOS to the same final size vlmserve produces. Times come from interleaved
rounds in one subprocess (medians, ms per image); "repeat" is the same image sent again in a later
turn (a new string with the same content), served from the content-addressed cache. Peak memory
is measured in a fresh subprocess per path: VmHWM above the level once the input is loaded.

Inputs are synthetic photos (smooth shading, hard-edged shapes, fine texture, sensor-like noise),
generated here with a fixed seed; their sizes are printed in the table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlmserve.media.intake import MediaIntake  # noqa: E402
from vlmserve.media.resize import fit  # noqa: E402
from vlmserve.media.types import ImagePolicy, MediaRef, PreparedImage  # noqa: E402
from vlmserve.settings import MediaSettings  # noqa: E402

POLICY = ImagePolicy(low_longest_edge=512, high_longest_edge=2048)  # SmolVLM-256M's budgets
CASES = {
    "12 MP JPEG": ("jpeg", (4032, 3024), 1),
    "2 MP PNG": ("png", (1920, 1080), 1),
    "20 x 1 MP JPEG, one request": ("jpeg", (1152, 864), 20),
}

from benchlib import spawn, status_kb, write_section  # noqa: E402 - bench/ is the script's own folder

SECTION = "## Image intake (issue 3)"
INTRO = """\
Preparing one image for the model: vlmserve's `MediaIntake.prepare_images` (strict base64, format
sniffing, header checks, JPEG decoded at reduced DCT scale where the target allows, Lanczos to the
final size, EXIF orientation, sRGB, metadata dropped, SHA-256 identity of the pixels, on the
intake's thread pool) against the plain path most servers use (`base64.b64decode`, `Image.open`,
`convert("RGB")`, `resize(LANCZOS)` to the same final size), in interleaved rounds of the same run.
Sizes are SmolVLM-256M's budgets: longest side 512 (`detail=low`) and 2048 (`detail=high`).
Inputs are synthetic photos made by the script (smooth shading, hard-edged shapes, texture, noise;
JPEG quality 92). "repeat" is the same image in a later turn of the conversation (a new string
with the same content), answered by the content-addressed cache; PSNR compares vlmserve's pixels
with the plain path's (the lowest over the request's images; 99 means identical); peak memory is
the growth of the resident set while preparing, one fresh process per path."""
NOTES = """\
The JPEG gains come from decoding in the DCT domain: 1/4 scale for 512 px, 1/2 scale plus a 1.6%
bilinear enlargement for 2048 px (`jpeg_draft_slack`, default 3%; 1/8 scale is never used short
of the target because its DC-only decode aliases). A PNG has no reduced-scale decode, so both paths
spend their time in zlib and the ratio stays near 1x; at `detail=high` the 1 MP images need no
resizing at all and vlmserve's extra work is the identity hash and the sanitizing, paid once per
image since every later turn is a cache hit. The many-image request runs on the intake's thread
pool (4 workers, 2 cores)."""
CACHE = Path(tempfile.gettempdir()) / "vlmserve-bench-intake"
_TINY = io.BytesIO()
Image.new("RGB", (2, 2)).save(_TINY, "PNG")
WARMUP = "data:image/png;base64," + base64.b64encode(_TINY.getvalue()).decode()


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 256 + 2, width // 256 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), np.float32)
    fine = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(fine).resize(size, Image.Resampling.BILINEAR), np.float32)
    pixels = 0.8 * base + 0.2 * texture + rng.normal(0, 3, (height, width, 3))
    im = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (
            int(rng.integers(width // 40, width // 6)),
            int(rng.integers(height // 40, height // 6)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour, outline=(0, 0, 0), width=3)
    return im


def encoded(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        photo(size, seed).save(buf, "JPEG", quality=92)
    else:
        photo(size, seed).save(buf, "PNG")
    return buf.getvalue()


def data_urls(case: str) -> list[str]:
    """The case's data URLs, generated once and kept in a temporary folder (so a child process
    reads them without the memory the generator needs)."""
    fmt, size, count = CASES[case]
    mime = "image/jpeg" if fmt == "jpeg" else "image/png"
    CACHE.mkdir(exist_ok=True)
    urls = []
    for i in range(count):
        path = CACHE / f"{fmt}-{size[0]}x{size[1]}-{i}.{fmt}"
        if not path.exists():
            path.write_bytes(encoded(fmt, size, i))
        urls.append(f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}")
    return urls


def plain(url: str, size: tuple[int, int]) -> Image.Image:
    data = base64.b64decode(url.partition(",")[2])
    return Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def refs(urls: list[str], detail: str) -> list[MediaRef]:
    # a fresh copy of each string, as a new request's JSON would carry
    return [
        MediaRef((u + " ")[:-1], "image", f"messages[{i}].content[0].image_url.url", i + 1, detail)  # type: ignore[arg-type]
        for i, u in enumerate(urls)
    ]


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = float((diff**2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def time_case(case: str, detail: str, repeats: int) -> dict[str, Any]:
    """Interleaved rounds (plain, vlmserve cold, vlmserve repeat) so load from other processes
    hits all three alike; medians in ms per image."""
    urls = data_urls(case)
    times: dict[str, list[float]] = {"plain": [], "ours": [], "repeat": []}
    prepared: list[PreparedImage] = []
    for _ in range(repeats):
        prepared, cold, warm = asyncio.run(_ours(urls, detail))
        times["ours"].append(cold)
        times["repeat"].append(warm)
        sizes = [p.size for p in prepared]
        start = time.perf_counter()
        for url, size in zip(urls, sizes, strict=True):
            plain(url, size)
        times["plain"].append(time.perf_counter() - start)
    result: dict[str, Any] = {k: statistics.median(v) * 1000 / len(urls) for k, v in times.items()}
    refs_ = [plain(u, p.size) for u, p in zip(urls, prepared, strict=True)]
    result["psnr"] = min(psnr(p.image, r) for p, r in zip(prepared, refs_, strict=True))
    result["size"] = prepared[0].size
    return result


async def _ours(urls: list[str], detail: str) -> tuple[list[PreparedImage], float, float]:
    intake = MediaIntake(MediaSettings())  # a cold cache each round
    await intake.prepare_images(refs([WARMUP], "low"), POLICY)  # a server's pool is warm
    first, again = refs(urls, detail), refs(urls, detail)
    start = time.perf_counter()
    prepared = await intake.prepare_images(first, POLICY)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    await intake.prepare_images(again, POLICY)  # the same images in a later turn
    warm = time.perf_counter() - start
    await intake.close()
    return prepared, cold, warm


def final_size(url: str, detail: str) -> tuple[int, int]:
    """vlmserve's output size, from the header alone (the inputs carry no EXIF orientation)."""
    header = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))
    edge = POLICY.low_longest_edge if detail == "low" else POLICY.high_longest_edge
    return fit(header.size, edge)


def peak_memory(case: str, detail: str, path: str) -> float:
    """MB of peak RSS above the level once the input is loaded. VmHWM, reset through
    /proc/self/clear_refs: getrusage's maxrss would include the parent's peak (kept over exec)."""
    urls = data_urls(case)
    sizes = [final_size(u, detail) for u in urls]
    Path("/proc/self/clear_refs").write_text("5")
    baseline_kb = status_kb("VmRSS")
    if path == "plain":
        outs = [plain(u, s) for u, s in zip(urls, sizes, strict=True)]
        del outs
    else:
        asyncio.run(_ours(urls, detail))
    return (status_kb("VmHWM") - baseline_kb) / 1024


def table(repeats: int) -> str:
    rows = [
        "| input | detail | final size | plain ms/img | vlmserve ms/img | speed-up | "
        "repeat ms/img | repeat vs first | PSNR dB (min) | peak MB plain / vlmserve |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        urls = data_urls(case)
        kb = sum(len(u.partition(",")[2]) * 3 // 4 for u in urls) / len(urls) / 1024
        for detail in ("low", "high"):
            r = spawn(__file__, "time", case, detail, repeats)
            mem_plain = spawn(__file__, "memory", case, detail, "plain")
            mem_ours = spawn(__file__, "memory", case, detail, "ours")
            w, h = r["size"]
            rows.append(
                f"| {case} ({kb:,.0f} KB each) | {detail} | {w}x{h} | {r['plain']:.1f} | "
                f"{r['ours']:.1f} | {r['plain'] / r['ours']:.1f}x | {r['repeat']:.2f} | "
                f"{r['ours'] / r['repeat']:.0f}x | {r['psnr']:.1f} | "
                f"{mem_plain:.0f} / {mem_ours:.0f} |"
            )
            print(rows[-1], file=sys.stderr)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", type=Path, help="replace our section in this markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = json.loads(args.child)
        print(json.dumps(time_case(*rest) if what == "time" else peak_memory(*rest)))
        return
    rows = table(args.repeats)
    print(rows)
    if args.write:
        command = (
            f"    .venv/bin/python bench/bench_intake.py --repeats {args.repeats} --write FILE"
        )
        body = "\n\n".join([SECTION, INTRO, command.replace("FILE", str(args.write)), rows, NOTES])
        write_section(args.write, SECTION, body + "\n")


if __name__ == "__main__":
    main()
