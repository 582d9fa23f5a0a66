"""Video sampling (``media/video.py``, ``videoplan.py``): containers, the frames picked, rotation,
variable frame rates, limits, and every broken file a 400 (never a 500)."""

from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import av
import pytest
from PIL import Image

from tests.media.videos import (
    CONTAINERS,
    audio_only,
    corner,
    encode,
    frame_index,
    streamed_webm,
)
from tests.storage.samples import image
from vlmserve.errors import MediaError, UnsupportedContentError
from vlmserve.media.types import PreparedVideo, VideoPolicy
from vlmserve.media.video import map_av_errors, prepare_video, sizing_for
from vlmserve.media.videoframe import from_display_matrix
from vlmserve.media.videoplan import Segment, num_frames, plan
from vlmserve.media.videosampler import Deadline, Sampler
from vlmserve.settings import MediaSettings

WHERE = "video 1 (messages[0].content[0].video_url.url)"
SHAPE = lambda frame: Image.new("RGB", (1, 1))  # noqa: E731 - frames are not looked at here
POLICY = VideoPolicy(frame_edge=32)


@functools.cache
def clip(container: str = "MP4", **kwargs: object) -> bytes:
    return encode(container, **kwargs)  # type: ignore[arg-type]


def sample(
    data: bytes, policy: VideoPolicy = POLICY, settings: MediaSettings | None = None
) -> PreparedVideo:
    sizing = sizing_for(policy, settings or MediaSettings())
    return prepare_video(io.BytesIO(data), len(data), sizing, WHERE)


def refused(data: bytes, match: str, policy: VideoPolicy = POLICY, **settings: object) -> str:
    with pytest.raises((MediaError, UnsupportedContentError), match=match) as caught:
        sample(data, policy, MediaSettings(**settings))  # type: ignore[arg-type]
    assert caught.value.status == 400
    return caught.value.message


# --- what is sampled ---


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_every_container_gives_one_frame_per_second_in_order(container: str) -> None:
    video = sample(clip(container))  # 3 s at 10 fps, a keyframe every second
    assert video.format == container and video.duration == pytest.approx(3.0)
    assert len(video.frames) == 3 and list(video.timestamps) == sorted(video.timestamps)
    indexes = [frame_index(f) for f in video.frames]
    assert indexes == [round(t * 10) for t in video.timestamps]  # each frame is the one at its time
    assert all(f.size == video.size == (32, 24) and f.mode == "RGB" for f in video.frames)
    assert video.original_size == (64, 48) and video.fps == pytest.approx(1.0)


def test_without_keyframe_snap_frames_are_the_middles_of_their_segments() -> None:
    video = sample(clip("MP4"), VideoPolicy(frame_edge=32, keyframe_snap=False))
    assert video.timestamps == (0.5, 1.5, 2.5)
    assert [frame_index(f) for f in video.frames] == [5, 15, 25]


def test_skipping_b_frames_on_the_way_still_gives_the_exact_middle_frames() -> None:
    data = clip("MP4", seconds=3.6, fps=10, gop=36)  # one GOP, B-frames skipped until near
    video = sample(data, VideoPolicy(keyframe_snap=False))
    assert video.timestamps == (0.4, 1.3, 2.2, 3.1)  # on screen at 0.45, 1.35, 2.25, 3.15 s
    assert [frame_index(f) for f in video.frames] == [4, 13, 22, 31]


def test_keyframe_snap_takes_each_segments_keyframe() -> None:
    video = sample(clip("MP4"))
    assert video.timestamps == (0.0, 1.0, 2.0)


def test_max_frames_and_token_budget_cap_the_number_of_frames() -> None:
    assert len(sample(clip("MP4"), VideoPolicy(max_frames=2)).frames) == 2
    budget = VideoPolicy(max_frames=32, max_tokens=100, frame_tokens=50)
    assert budget.budget_frames == 2 and len(sample(clip("MP4"), budget).frames) == 2


def test_fps_setting_changes_the_rate() -> None:
    video = sample(clip("MP4"), VideoPolicy(fps=2.0, keyframe_snap=False))
    assert len(video.frames) == 6 and video.fps == pytest.approx(2.0)


def test_variable_frame_rate_frames_carry_their_real_times() -> None:
    times = [0.0, 0.1, 0.15, 1.0, 1.05, 2.5, 2.9]
    video = sample(encode("MKV", times=times), VideoPolicy(keyframe_snap=False))
    assert video.timestamps == (0.15, 1.05, 2.5)  # on screen at 0.5, 1.5, 2.5 s
    assert [frame_index(f) for f in video.frames] == [2, 4, 5]


def test_a_still_stretch_is_sampled_once() -> None:
    video = sample(encode("MKV", times=[0.0, 2.9], fps=1), VideoPolicy(keyframe_snap=False))
    # 3.9 s, three segments; the first frame is on screen for two of them: taken once
    assert video.duration == pytest.approx(3.9) and video.timestamps == (0.0, 2.9)


def test_webm_without_a_duration_is_scanned_for_its_end() -> None:
    video = sample(streamed_webm(seconds=3.0))  # as a browser's MediaRecorder writes it
    assert video.duration == pytest.approx(3.0, abs=0.15) and len(video.frames) == 3


def test_audio_track_is_ignored() -> None:
    video = sample(encode("MP4", audio=True))
    assert len(video.frames) == 3


# --- seeking ---


def open_sampler(data: bytes) -> Sampler:
    container = av.open(io.BytesIO(data))
    assert isinstance(container, av.container.InputContainer)
    deadline = Deadline(time.monotonic() + 30, 30, WHERE)
    return Sampler(container, container.streams.video[0], deadline)


def test_sampling_a_long_video_seeks_instead_of_decoding_every_frame() -> None:
    data = clip("MP4", seconds=20.0, fps=10)  # 200 frames, a keyframe every second
    for snap, most in ((True, 10), (False, 60)):
        sampler = open_sampler(data)
        policy = VideoPolicy(max_frames=8, keyframe_snap=snap)
        duration = sampler.duration()
        picked = sampler.sample(plan(duration, policy, sampler.keyframes), duration, WHERE, SHAPE)
        assert len(picked) == 8 and sampler.num_seeks >= 6
        assert sampler.num_decoded <= most, (snap, sampler.num_decoded)


def test_targets_within_one_gop_decode_on_instead_of_seeking_back() -> None:
    data = clip("MP4", seconds=4.0, fps=10, gop=100)  # one keyframe for the whole video
    sampler = open_sampler(data)
    policy = VideoPolicy(fps=2.0, keyframe_snap=False)
    duration = sampler.duration()
    picked = sampler.sample(plan(duration, policy, sampler.keyframes), duration, WHERE, SHAPE)
    assert len(picked) == 8 and sampler.num_seeks <= 1 and sampler.num_decoded <= 41


# --- rotation ---


@pytest.mark.parametrize(
    ("rotation", "hflip", "size", "where"),
    [
        (-90, False, (48, 64), "top-right"),  # stored as "turn 90 degrees clockwise"
        (90, False, (48, 64), "bottom-left"),
        (180, False, (64, 48), "bottom-right"),
        (0, True, (64, 48), "top-right"),
        (-90, True, (48, 64), "top-left"),
    ],
)
def test_rotated_video_is_shown_upright(
    rotation: int, hflip: bool, size: tuple[int, int], where: str
) -> None:
    video = sample(clip("MP4", rotation=rotation, hflip=hflip), VideoPolicy())
    assert video.size == video.original_size == size
    assert {corner(f) for f in video.frames} == {where}


def test_display_matrix_angles_that_are_not_right_angles_are_left_alone() -> None:
    half = 46341  # 0.7071 in 16.16 fixed point: 45 degrees
    assert from_display_matrix((half, half, 0, -half, half, 0, 0, 0, 1 << 30)) == (0, None)
    assert from_display_matrix((0, 0, 0, 0, 0, 0, 0, 0, 0)) == (0, None)


# --- limits ---


def test_video_over_the_duration_limit_is_400_naming_the_limit() -> None:
    message = refused(clip("MP4"), "at most 2 s", VideoPolicy(max_seconds=2.0))
    assert WHERE in message and "3.0 s" in message


def test_video_over_the_byte_limit_is_400_before_decoding() -> None:
    refused(clip("MP4"), "at most", VideoPolicy(max_bytes=1000))


def test_frames_over_the_pixel_cap_are_400() -> None:
    refused(clip("MP4"), "pixels per frame", max_pixels=1000)


def test_decoding_past_the_deadline_is_400() -> None:
    refused(clip("MP4", seconds=2.0), "longer than", video_decode_timeout_s=1e-6)


# --- broken files: 400 within bounded time, never 500 ---


def test_zero_length_file_is_400() -> None:
    refused(b"", "empty")


@pytest.mark.parametrize("container", ["MP4", "MKV", "WEBM"])
def test_audio_only_file_is_400(container: str) -> None:
    refused(audio_only(container), "no video stream")


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_truncated_file_is_400(container: str) -> None:
    data = clip(container)
    refused(data[: len(data) // 2], "truncated")


def test_truncated_faststart_mp4_is_400_from_its_index(tmp_path: Path) -> None:
    path = tmp_path / "fast.mp4"
    encode("MP4", out=path, options={"movflags": "faststart"})
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first
    refused(data[: len(data) * 9 // 10], "truncated")


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_garbage_after_the_header_is_400(container: str) -> None:
    data = clip(container)
    refused(data[:200] + bytes(range(256)) * 20, "truncated|corrupt|no video|no frame")


def test_image_in_a_video_part_is_refused_naming_it() -> None:
    message = refused(image("PNG"), "PNG image")
    assert "image_url" in message


def test_every_pyav_error_class_becomes_a_400() -> None:
    classes = [c for c in vars(av.error).values() if isinstance(c, type)]
    ffmpeg = [c for c in classes if issubclass(c, av.FFmpegError)]
    assert len(ffmpeg) > 20
    for cls in ffmpeg:
        with pytest.raises(MediaError) as caught, map_av_errors(WHERE, "MP4"):
            raise cls(1, "boom")
        assert caught.value.status == 400 and "MP4" in caught.value.message
    for exc in (MemoryError(), ValueError("x"), OSError("y"), EOFError()):
        with pytest.raises(MediaError), map_av_errors(WHERE, "MP4"):
            raise exc


# --- identity ---


def test_remuxed_copy_has_the_same_identity() -> None:
    data = clip("MP4")
    buf = io.BytesIO()
    with av.open(io.BytesIO(data), "r") as source, av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    policy = VideoPolicy(keyframe_snap=False)
    a, b = sample(data, policy), sample(buf.getvalue(), policy)
    assert a.format != b.format and a.identity == b.identity


def test_identity_changes_with_the_frames_and_their_times() -> None:
    base = sample(clip("MP4"))
    assert sample(clip("MP4")).identity == base.identity
    assert sample(clip("MP4"), VideoPolicy(frame_edge=16)).identity != base.identity
    assert sample(clip("MP4"), VideoPolicy(frame_edge=32, fps=2.0)).identity != base.identity


# --- the plan ---


def test_plan_cuts_equal_segments_and_snaps_to_the_keyframe_nearest_each_middle() -> None:
    segments = plan(4.0, VideoPolicy(), keyframes=(0.0, 0.9, 1.2, 3.99))
    assert [(s.start, s.end) for s in segments] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [s.keyframe for s in segments] == [0.9, 1.2, None, 3.99]
    assert segments[2].middle == 2.5


def test_plan_without_snap_ignores_keyframes() -> None:
    policy = VideoPolicy(keyframe_snap=False)
    assert all(s.keyframe is None for s in plan(4.0, policy, keyframes=(0.0, 1.0)))


def test_plan_for_a_short_or_empty_video_has_one_segment() -> None:
    assert plan(0.2, VideoPolicy()) == [Segment(0.0, 0.2)]
    assert plan(0.0, VideoPolicy()) == [Segment(0.0, 0.0)]


def test_frame_count_rounds_duration_times_fps_and_respects_caps() -> None:
    assert num_frames(10.4, VideoPolicy()) == 10
    assert num_frames(300.0, VideoPolicy()) == 32
    assert num_frames(300.0, VideoPolicy(max_tokens=1000, frame_tokens=300)) == 3
