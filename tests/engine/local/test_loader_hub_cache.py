"""The loader takes a hub id or a local directory unchanged: a dummy directory laid out as a hub
download (in a Hugging Face cache, offline) loads by its hub id, and a family pin is enforced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import free_port
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local.loader import check_family

REVISION = "0123456789abcdef0123456789abcdef01234567"
LOAD = """
import sys
from tests.conftest import free_port
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local.loader import load_model
from vlmserve.settings import EngineSettings
loaded = load_model(EngineBinding(model=sys.argv[1]), EngineSettings(device="cpu"))
print(type(loaded.family).__name__, loaded.model.config.model_type, loaded.max_model_len)
"""


def _as_hub_cache(model_dir: Path, cache: Path, repo_id: str) -> None:
    """Lay ``model_dir`` out as huggingface_hub leaves a download: snapshots/<rev> + refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


@pytest.mark.parametrize(
    ("family", "repo_id", "family_class"),
    [
        ("qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3VL"),
        ("internvl", "OpenGVLab/InternVL3-1B-hf", "InternVL"),
    ],
)
def test_a_hub_id_loads_from_the_cache_offline(
    tiny_models: dict[str, Path], tmp_path: Path, family: str, repo_id: str, family_class: str
) -> None:
    _as_hub_cache(tiny_models[family], tmp_path / "hub", repo_id)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # no network: nothing listens there
        "OMP_NUM_THREADS": "1",
    }
    cwd = Path(__file__).resolve().parents[3]  # this worktree's vlmserve
    out = subprocess.run(
        [sys.executable, "-c", LOAD, repo_id],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [family_class, family, "8192"]


def test_a_model_of_another_family_than_the_binding_pins_is_refused() -> None:
    binding = EngineBinding(model="/srv/m", family="qwen2_5_vl")
    with pytest.raises(ValueError, match="model_type 'gemma3'"):
        check_family(binding, SimpleNamespace(model_type="gemma3"))
    check_family(binding, SimpleNamespace(model_type="qwen2_5_vl"))
    check_family(EngineBinding(model="/srv/m"), SimpleNamespace(model_type="gemma3"))
