"""Tiny dummy models of every family and running ``LocalEngine``s over them (built once)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.local.helpers import FAMILIES, start_engine
from vlmserve.dummy import FAMILIES as ALL_FAMILIES
from vlmserve.dummy import make_dummy_model
from vlmserve.engine.local import LocalEngine


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("local-engine-models")
    return {family: make_dummy_model(root / family, family, "tiny") for family in ALL_FAMILIES}


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Iterator[LocalEngine]:
    engine = start_engine(tiny_models[request.param])
    yield engine
    asyncio.run(engine.close())
