"""Video sampling benchmark (issue 4): vlmserve's sampler against decoding every frame.

Run by hand, never in tests:

    .venv/bin/python bench/bench_video.py [--repeats 5] [--write docs/benchmarks.md]

The clips are 60 s of 1080p H.264 at 30 fps with moving synthetic content (a scrolling texture,
a moving block, changing colours), made here with PyAV (libx264, preset superfast, CABAC,
B-frames) and kept in /tmp between runs. Two keyframe intervals: 2 s (phone cameras and streaming
services use 1-2 s) and x264's default of 250 frames (8.3 s), the worst case for seeking.

Both paths read the same file from disk and give the same frames: vlmserve's ``prepare_video``
(default settings: 32 frames, frames 512 px on the longest side) picks them; the baseline decodes
every frame in order, as video loaders that sample after decoding do, and keeps the frames with
those timestamps, converted by the same swscale call. "exact" is vlmserve with
``video_keyframe_snap`` off (each segment's middle frame: seek to the keyframe before it, decode
forward). Times are medians of interleaved rounds in one process; peak memory is the growth of
the resident set (VmHWM) in a fresh process per path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlmserve.media import videosampler  # noqa: E402
from vlmserve.media.types import PreparedVideo, VideoPolicy  # noqa: E402
from vlmserve.media.video import prepare_video, sizing_for  # noqa: E402
from vlmserve.settings import MediaSettings  # noqa: E402

SECONDS, FPS, SIZE = 60, 30, (1920, 1080)
GOPS = {"2 s (60 frames)": 60, "x264 default (250 frames)": 250}
EDGE = 512  # SmolVLM-256M's detail=low edge, the default model's frame size

from benchlib import spawn, status_kb, write_section  # noqa: E402 - bench/ is the script's own folder

SECTION = "## Video sampling (issue 4)"
WHERE = "the video"


def clip(gop: int) -> Path:
    path = Path(f"/tmp/vlmserve-bench-video-{SIZE[1]}p-{SECONDS}s-gop{gop}.mp4")
    if path.exists():
        return path
    tmp = path.with_suffix(".part.mp4")
    width, height = SIZE
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (height // 16 + 1, (width + 4 * FPS * SECONDS) // 16 + 2))
    texture = np.kron(tile.astype(np.uint8), np.ones((16, 16), np.uint8))
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "superfast"})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(FPS * SECONDS):
            luma = texture[:height, i * 4 : i * 4 + width].copy()
            x = (i * 23) % (width - 300)
            luma[400:700, x : x + 300] = 255 - (i % 200)
            chroma = np.full((height // 2, width), 128, np.uint8)
            chroma[: height // 4] = (60 + i) % 256
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    tmp.rename(path)
    return path


def policy(snap: bool) -> VideoPolicy:
    settings = MediaSettings()
    return VideoPolicy(
        fps=settings.video_fps,
        max_frames=settings.video_max_frames,
        frame_edge=EDGE,
        keyframe_snap=snap,
    )


def ours(path: Path, snap: bool) -> tuple[PreparedVideo, int]:
    """vlmserve's sampler; also how many frames it decoded."""
    decoded = 0
    frames = videosampler.Sampler._frames

    def counting(self: videosampler.Sampler) -> Any:
        nonlocal decoded
        for picked in frames(self):
            decoded += 1
            yield picked

    videosampler.Sampler._frames = counting  # type: ignore[method-assign]
    try:
        with open(path, "rb") as file:
            sizing = sizing_for(policy(snap), MediaSettings())
            return prepare_video(file, path.stat().st_size, sizing, WHERE), decoded
    finally:
        videosampler.Sampler._frames = frames  # type: ignore[method-assign]


def decode_all(path: Path, timestamps: tuple[float, ...], size: tuple[int, int]) -> int:
    """The baseline: every frame decoded in order; the frames at ``timestamps`` converted."""
    wanted = {round(t, 3) for t in timestamps}
    kept, decoded = [], 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = _start(stream)
        for frame in container.decode(stream):
            decoded += 1
            if frame.time is not None and round(frame.time - start, 3) in wanted:
                rgb = frame.reformat(size[0], size[1], "rgb24", interpolation="AREA")
                kept.append(rgb.to_image())  # type: ignore[no-untyped-call]
    assert len(kept) == len(wanted), (len(kept), len(wanted))
    return decoded


def _start(stream: av.VideoStream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def shown_at_middles(path: Path, duration: float, n: int) -> tuple[float, ...]:
    """From a full decode: the time of the frame on screen at each segment's middle."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = _start(stream)
        times = sorted(f.time - start for f in container.decode(stream) if f.time is not None)
    middles = [(i + 0.5) * duration / n for i in range(n)]
    return tuple(round(max(t for t in times if t <= m + 1e-3), 3) for m in middles)


def time_gop(gop: int, repeats: int) -> dict[str, Any]:
    path = clip(gop)
    snapped, decoded_snap = ours(path, True)
    exact, decoded_exact = ours(path, False)
    expected = shown_at_middles(path, exact.duration, len(exact.frames))
    assert exact.timestamps == expected, (exact.timestamps, expected)  # "exact" is exact
    runs: dict[str, list[float]] = {"all": [], "snap": [], "exact": []}
    decoded_all = 0
    for _ in range(repeats):
        for name in runs:
            start = time.perf_counter()
            if name == "all":
                decoded_all = decode_all(path, snapped.timestamps, snapped.size)
            else:
                ours(path, name == "snap")
            runs[name].append(time.perf_counter() - start)
    return {
        "medians": {name: statistics.median(times) for name, times in runs.items()},
        "decoded": {"all": decoded_all, "snap": decoded_snap, "exact": decoded_exact},
        "num_frames": len(snapped.frames),
        "size": snapped.size,
        "bytes": path.stat().st_size,
        "exact_frames": len(exact.frames),
    }


def peak_memory(gop: int, which: str) -> float:
    """MB of peak RSS above the level before sampling (VmHWM reset via /proc/self/clear_refs)."""
    path = clip(gop)
    snapped, _ = ours(path, True)  # the timestamps (and warm imports) for the baseline
    timestamps, size = snapped.timestamps, snapped.size
    del snapped
    Path("/proc/self/clear_refs").write_text("5")
    baseline_kb = status_kb("VmRSS")
    if which == "all":
        decode_all(path, timestamps, size)
    else:
        ours(path, which == "snap")
    return (status_kb("VmHWM") - baseline_kb) / 1024


def table(repeats: int) -> str:
    rows = [
        "| keyframe interval | frames | decode every frame s | vlmserve s | speed-up | "
        "vlmserve exact s | speed-up | frames decoded (every / vlmserve / exact) | "
        "peak MB (every / vlmserve / exact) | sampled frames MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, gop in GOPS.items():
        clip(gop)
        r = spawn(__file__, "time", gop, repeats)
        mem = {which: spawn(__file__, "memory", gop, which) for which in ("all", "snap", "exact")}
        m, d = r["medians"], r["decoded"]
        w, h = r["size"]
        frames_mb = r["num_frames"] * w * h * 3 / 2**20
        rows.append(
            f"| {name}, {r['bytes'] / 2**20:.0f} MB | {r['num_frames']} at {w}x{h} | "
            f"{m['all']:.2f} | {m['snap']:.2f} | {m['all'] / m['snap']:.1f}x | "
            f"{m['exact']:.2f} | {m['all'] / m['exact']:.1f}x | "
            f"{d['all']} / {d['snap']} / {d['exact']} | "
            f"{mem['all']:.0f} / {mem['snap']:.0f} / {mem['exact']:.0f} | {frames_mb:.1f} |"
        )
        print(rows[-1], file=sys.stderr)
    return "\n".join(rows)


INTRO = """\
Sampling a 60 s 1080p H.264 clip (30 fps, 1,800 frames) to the default frame count (32 frames,
512 px on the longest side) from a file on disk: vlmserve's `prepare_video` against decoding every
frame in order and keeping the same frames (converted by the same swscale call), in interleaved
rounds of one run; medians. The clips are made by the script with PyAV (libx264 preset superfast:
CABAC, B-frames; moving synthetic content). vlmserve cuts the video into 32 equal segments and
takes each segment's keyframe when it has one (`video_keyframe_snap`, the default; one seek and
one decoded frame), else the frame at the segment's middle (a seek to the keyframe before it, then
decoding forward, or decoding on when that keyframe was already passed, with the frames no other
frame refers to skipped until half a second before the target); "exact" always takes the middle
frames, and the script checks they are the frames a full decode shows at those instants. Both
decoders run with PyAV's default threading (slice threads). Peak memory is the growth of the
resident set while sampling, one fresh process per path; "sampled frames MB" is the size of the 32
RGB frames kept."""

NOTES = """\
Target of issue 4: at least 5x faster than decoding every frame: 8.9x with keyframes every 2 s,
the interval of phone cameras (1-2 s) and streaming services. With x264's default interval of
8.3 s most of the 32 segments hold no keyframe, so most frames must be decoded anyway: 2.0x (the
skipped B-frames are what is left to save). "exact" decodes forward to every segment's middle
whatever the interval: 2.2x and 1.7x.
Memory stays bounded by the frames kept: every frame is scaled to 512x288 as soon as it is picked,
so the peak is those 13.5 MB plus the decoder's reference frames, the same as the baseline's and
independent of the video's length. Other jobs kept the 2 cores busy during this run (load average
5 to 9), which inflates every absolute time alike; the ratios come from interleaved rounds."""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="replace our section in this markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = json.loads(args.child)
        print(json.dumps(time_gop(*rest) if what == "time" else peak_memory(*rest)))
        return
    rows = table(args.repeats)
    print(rows)
    if args.write:
        command = f"    .venv/bin/python bench/bench_video.py --repeats {args.repeats} --write FILE"
        body = "\n\n".join([SECTION, INTRO, command.replace("FILE", str(args.write)), rows, NOTES])
        write_section(args.write, SECTION, body + "\n")


if __name__ == "__main__":
    main()
