"""Shared fixtures: where ../shared/data is, and whether its absence skips or fails a test."""

from __future__ import annotations

import os

import pytest

from tests.support.helpers import UNET_WEIGHTS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def lung_cropper():
    """One U-Net for the whole session: the weights shipped in unet/."""
    from deepcovidxr.lungs.cropper import LungCropper

    assert UNET_WEIGHTS.is_file(), f"shipped U-Net weights missing: {UNET_WEIGHTS}"
    return LungCropper(UNET_WEIGHTS, batch_size=8)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest module first: under xdist (``--dist loadfile --no-loadscope-reorder``,
    pyproject.toml; xdist would otherwise put the modules with most tests first and this 2-test
    module last) one worker trains test_phantom_learning's member while the other takes the rest."""
    items.sort(key=lambda item: not item.module.__name__.endswith("test_phantom_learning"))
