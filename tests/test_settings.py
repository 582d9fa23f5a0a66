"""Settings: one reader of the environment, a TOML file, validation at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlmserve.settings import Settings, load_settings


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMSERVE_SERVER__PORT", "9123")
    monkeypatch.setenv("VLMSERVE_MEDIA__ALLOW_LOOPBACK", "true")
    settings = load_settings()
    assert settings.server.port == 9123
    assert settings.media.allow_loopback is True


def test_toml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "vlmserve.toml"
    config.write_text('[server]\nport = 7000\nstream_usage = "step"\n[catalog]\nmodel = "/m"\n')
    settings = load_settings(config)
    assert (settings.server.port, settings.server.stream_usage) == (7000, "step")
    assert settings.catalog.model == "/m"
    monkeypatch.setenv("VLMSERVE_SERVER__PORT", "7001")
    assert load_settings(config).server.port == 7001


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "vlmserve.toml"
    config.write_text("[server]\nport = 7000\n")
    assert load_settings(config, server={"port": 7002}).server.port == 7002


def test_invalid_value_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMSERVE_SERVER__PORT", "not-a-port")
    with pytest.raises(ValidationError):
        load_settings()


def test_unknown_setting_is_an_error_not_ignored(tmp_path: Path) -> None:
    config = tmp_path / "vlmserve.toml"
    config.write_text("[server]\nprot = 7000\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().server.port = 1  # type: ignore[misc]
