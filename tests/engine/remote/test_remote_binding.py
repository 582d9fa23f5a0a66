"""``--upstream``: settings → catalogue → remote engine, with or without a local processor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydantic
import pytest

from vlmserve import cli
from vlmserve.api.services import default_engine_factory, token_counts
from vlmserve.catalog.registry import catalog_from_settings
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.remote.processor import local_processor, missing_files
from vlmserve.settings import CatalogSettings, EngineSettings, Settings

A, B = "http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a model directory holds besides weights (only their presence matters here)."""
    directory = tmp_path_factory.mktemp("binding")
    for name in ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_text("{}")
    return directory


def test_upstreams_bind_every_entry_to_one_remote_engine(model_dir: Path) -> None:
    settings = CatalogSettings(model=str(model_dir), upstreams=(A, B + "/"))
    catalog = catalog_from_settings(settings, EngineSettings())
    (binding,) = catalog.bindings()
    assert len(catalog) == 4 and all(spec.binding == binding for spec in catalog)
    assert binding.kind == "remote" and binding.upstreams == (A, B)
    assert binding.model == str(model_dir)
    assert binding.upstream_model == str(model_dir)  # what `vllm serve DIR` calls it


def test_upstream_model_names_what_the_replicas_serve() -> None:
    settings = CatalogSettings(upstreams=(A,), upstream_model="Qwen/Qwen2-VL-2B-Instruct")
    (binding,) = catalog_from_settings(settings, EngineSettings()).bindings()
    assert binding.upstream_model == "Qwen/Qwen2-VL-2B-Instruct"
    assert binding.model == "HuggingFaceTB/SmolVLM-256M-Instruct"  # the catalogue's default


@pytest.mark.parametrize(
    ("urls", "complaint"),
    [
        (("ftp://10.0.0.5/v1",), "not an http"),
        (("10.0.0.5:8000/v1",), "not an http"),
        ((A, A + "/"), "twice"),
    ],
)
def test_bad_upstream_is_refused_at_start_up(urls: tuple[str, ...], complaint: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=complaint):
        CatalogSettings(upstreams=urls)


def test_processor_files_are_found_in_a_directory_only_when_complete(
    model_dir: Path, tmp_path: Path
) -> None:
    assert local_processor(str(model_dir)) == model_dir
    partial = tmp_path / "weights-only"
    shutil.copytree(model_dir, partial)
    (partial / "tokenizer.json").unlink()
    (partial / "tokenizer_config.json").unlink()
    assert local_processor(str(partial)) is None
    assert missing_files(partial) == ["tokenizer.json or tokenizer_config.json"]


def test_processor_files_are_found_in_the_hub_cache_without_network(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--vlm"
    shutil.copytree(model_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert local_processor("org/vlm") == repo / "snapshots" / "abc123"
    assert local_processor("org/never-downloaded") is None


def test_remote_engine_counts_locally_only_with_processor_files(
    model_dir: Path, tmp_path: Path
) -> None:
    with_files = catalog_from_settings(
        CatalogSettings(model=str(model_dir), upstreams=(A,)), EngineSettings()
    ).bindings()[0]
    without = catalog_from_settings(
        CatalogSettings(model=str(tmp_path), upstreams=(A,)), EngineSettings()
    ).bindings()[0]
    engine = default_engine_factory(with_files, Settings())
    assert isinstance(engine, RemoteEngine) and engine._token_counter is not None
    engine = default_engine_factory(without, Settings())
    assert isinstance(engine, RemoteEngine) and engine._token_counter is None
    assert token_counts(with_files) == "local processor"
    assert token_counts(without) == "upstream"


def models_rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert cli.main(["models", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_models_says_where_token_counts_come_from(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = models_rows(capsys, "--model", str(model_dir), "--upstream", A, "--upstream", B)
    assert {r["token_counts"] for r in rows} == {"local processor"}
    assert all(r["engine"] == "remote" and r["upstreams"] == [A, B] for r in rows)
    rows = models_rows(capsys, "--model", str(tmp_path), "--upstream", A, "--upstream-model", "m")
    assert {r["token_counts"] for r in rows} == {"upstream"}
    assert {r["upstream_model"] for r in rows} == {"m"}
    rows = models_rows(capsys, "--model", str(model_dir))
    assert {r["token_counts"] for r in rows} == {"local processor"}
    assert all("upstreams" not in r for r in rows)


def test_models_refuses_a_bad_upstream_with_exit_code_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["models", "--upstream", "localhost:8000"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
