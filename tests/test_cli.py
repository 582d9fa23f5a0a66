"""The command line: version, catalogue listing, dummy models, bad input → exit 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmserve import __version__
from vlmserve.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_models_lists_the_catalogue_with_limits_and_bindings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "--model", "/srv/models/smol"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {"step-1o-turbo-vision", "step-1o-vision-32k", "step-1v-8k", "step-1v-32k"}
    assert by_id["step-1o-turbo-vision"]["max_images"] == 60
    assert by_id["step-1v-8k"]["max_images"] == 50
    assert by_id["step-1v-8k"]["context_window"] == 8192
    assert all(row["model"] == "/srv/models/smol" for row in rows)


def test_make_dummy_model_rejects_an_unknown_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["make-dummy-model", str(tmp_path / "m"), "--family", "llama"]) == 2
    assert "idefics3" in capsys.readouterr().err


def test_bad_config_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_inspect_image_reports_what_the_model_sees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from vlmserve.dummy import make_dummy_model

    model = make_dummy_model(tmp_path / "model", "idefics3", "tiny")
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    exif[0x8825] = {2: (1.0, 2.0, 3.0)}  # GPS latitude
    Image.new("RGB", (400, 300), (200, 30, 30)).save(photo, exif=exif.tobytes())
    saved = tmp_path / "seen.png"
    args = ["inspect-image", str(photo), "--model", str(model), "--detail", "high"]
    assert main([*args, "--save", str(saved)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "JPEG"
    assert report["original_size"] == [300, 400]  # orientation applied
    assert max(report["size"]) <= 64  # the tiny model's high-detail edge
    assert report["tokens"] > 0
    assert "gps" in report["metadata_removed"]
    with Image.open(saved) as seen:
        assert list(seen.size) == report["size"]
        assert not seen.getexif()


def test_inspect_image_of_a_missing_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect-image", str(tmp_path / "none.jpg")]) == 2
    assert "none.jpg" in capsys.readouterr().err


def test_keys_create_prints_the_key_once_and_list_never_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VLMSERVE_STORAGE__DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--name", "ci", "--tier", "V2", "--quota", "500"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith("sk-") and created["tier"] == "V2"
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert '"ci"' in listed and created["key"] not in listed
    assert main(["keys", "create", "--name", "x", "--tier", "V9"]) == 2
    assert "V0, V1" in capsys.readouterr().err
    assert main(["keys", "revoke", "ci"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0 and capsys.readouterr().out == ""
    assert main(["usage"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 0


def test_serve_without_the_hub_fails_fast_with_one_paragraph(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import free_port

    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens: the hub is away
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache
        "VLMSERVE_STORAGE__DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "vlmserve", "serve", "--model", "some-org/some-vlm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert time.monotonic() - started < 60
    err = done.stderr.strip()
    assert "Traceback" not in err and "retry" not in err.lower()
    assert "'some-org/some-vlm'" in err and "cannot be reached" in err
    assert "--model ./local/dir" in err and "vlmserve make-dummy-model" in err
    assert len(err.splitlines()) == 1  # one paragraph


def test_serve_a_missing_directory_says_it_is_not_there(tmp_path: Path) -> None:
    from vlmserve.engine.local.loader import locate
    from vlmserve.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="not a directory"):
        locate(str(tmp_path / "nope"))
    assert locate(str(tmp_path)) == str(tmp_path)
