"""``Family.upstream_processor_kwargs``: the options under which vLLM tiles pictures as we count."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmserve.dummy import make_dummy_model
from vlmserve.engine.local.counter import load_preparer
from vlmserve.engine.local.families import Family
from vlmserve.engine.local.families.idefics3 import _rescaled, _split_grid


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory: pytest.TempPathFactory) -> Family:
    model = make_dummy_model(tmp_path_factory.mktemp("m") / "idefics3", "idefics3", "tiny")
    return load_preparer(Path(model))[1]


@pytest.mark.parametrize("size", [(20, 15), (40, 30), (33, 20), (64, 48), (30, 60), (64, 64)])
def test_vllm_count_and_processing_keep_the_grid_we_count(
    idefics3: Family, size: tuple[int, int]
) -> None:
    kwargs = idefics3.upstream_processor_kwargs([size])
    longest = kwargs["size"]["longest_edge"]
    tile = 32  # the tiny shape's tile
    wanted = _split_grid(*size, tile)
    image_processor = idefics3.processor.image_processor
    counted = image_processor.get_number_of_image_patches(size[1], size[0], kwargs)
    assert tuple(counted[1:]) == wanted  # vLLM's placeholders
    assert _split_grid(*_rescaled(*size, longest), tile) == wanted  # its pixels


def test_pictures_of_one_grid_share_a_size(idefics3: Family) -> None:
    assert idefics3.upstream_processor_kwargs([(20, 15), (24, 18)]) == {
        "size": {"longest_edge": 24}
    }


def test_pictures_of_different_grids_get_no_size_rather_than_a_wrong_one(
    idefics3: Family,
) -> None:
    assert idefics3.upstream_processor_kwargs([(20, 15), (64, 48)]) == {}


def test_no_pictures_no_options(idefics3: Family) -> None:
    assert idefics3.upstream_processor_kwargs([]) == {}
