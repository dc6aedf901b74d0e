"""Shared fixtures: where ../shared/data is, and whether its absence skips or fails a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEEPCOVIDXR_SHARED_DATA", REPO.parent / "shared" / "data"))
UNET_WEIGHTS = REPO / "unet" / "lung_unet.weights.h5"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when it is absent, unless
    DEEPCOVIDXR_REQUIRE_SHARED=1 (CI), where absence is a failure."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared data not found: {path} (set DEEPCOVIDXR_SHARED_DATA or clone ../shared beside the repo)"
        if os.environ.get("DEEPCOVIDXR_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a stage script as a user would, in a subprocess, from the repo root."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def lung_cropper():
    """One U-Net for the whole session: the weights shipped in unet/."""
    from deepcovidxr.lungs.cropper import LungCropper

    assert UNET_WEIGHTS.is_file(), f"shipped U-Net weights missing: {UNET_WEIGHTS}"
    return LungCropper(UNET_WEIGHTS, batch_size=8)


def make_phantom_tree(
    root: Path, count: int, size: int, seed: int = 0, splits=(0.6, 0.2, 0.2), opacity_boost: float = 0.0
) -> Path:
    """A dataset tree ``root/<size>/uncrop/{Train,Validation,Test}/{Negative,Positive}`` of
    synthetic phantoms, Lanczos-resized, without the U-Net (training tests need no crops).
    ``opacity_boost`` adds that many grey levels inside positives' opacities (a stronger signal
    for tests that must learn from random weights in a few CPU minutes).
    Returns the view folder (what train.py takes as -p)."""
    import numpy as np

    from deepcovidxr.imageio import write_gray
    from deepcovidxr.layout import DataTree, Label, Split
    from deepcovidxr.preprocess import lanczos_resize
    from deepcovidxr.synthetic import make_phantom

    tree = DataTree(root)
    bounds = [round(f * count) for f in (splits[0], splits[0] + splits[1])]
    for index in range(count):
        positive = index % 2 == 1
        phantom = make_phantom(seed * 100_000 + index, positive, height=256, width=256)
        image = phantom.image
        if opacity_boost:
            boosted = image.astype(np.float32) + opacity_boost * (phantom.opacity_mask > 0)
            image = np.clip(boosted, 0, 255).astype(np.uint8)
        split = Split.TRAIN if index < bounds[0] else Split.VALIDATION if index < bounds[1] else Split.TEST
        label = Label.POSITIVE if positive else Label.NEGATIVE
        write_gray(
            tree.class_dir(size, "uncrop", split, label) / f"phantom_{index:04d}.png",
            lanczos_resize(image, size),
        )
    return tree.view_dir(size, "uncrop")
