"""vlmserve: the Step vision-model API, self-hosted on open vision-language models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Settings", "__version__", "create_app"]

if TYPE_CHECKING:
    from vlmserve.api.app import create_app
    from vlmserve.settings import Settings


def __getattr__(name: str) -> Any:
    # Lazy, so `import vlmserve` (and the CLI's --version) does not import FastAPI or torch.
    if name == "create_app":
        from vlmserve.api.app import create_app

        return create_app
    if name == "Settings":
        from vlmserve.settings import Settings

        return Settings
    raise AttributeError(name)
