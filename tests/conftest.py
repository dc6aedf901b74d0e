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


def phantom_crop_box(lung_mask):
    """The square box crop_img.py would cut from a phantom, from its true lung mask (the U-Net's
    boxes on phantoms keep 99.9 % of this lung, see test_crop): 8 px padding at 256 scale, then
    squared inside the image."""
    import numpy as np

    from deepcovidxr.lungs import segment
    from deepcovidxr.lungs.segment import Box

    height, width = lung_mask.shape
    ys, xs = np.nonzero(lung_mask)
    pad_x, pad_y = round(8 * width / 256), round(8 * height / 256)
    tight = Box(
        max(0, int(xs.min()) - pad_x),
        max(0, int(ys.min()) - pad_y),
        min(width, int(xs.max()) + 1 + pad_x),
        min(height, int(ys.max()) + 1 + pad_y),
    )
    return segment.square_box(tight, width, height)


def phantom_image(index: int, seed: int = 0, opacity_boost: float = 0.0):
    """The phantom behind ``phantom_<index>.png`` of :func:`make_phantom_tree` (odd: positive)."""
    import numpy as np

    from deepcovidxr.synthetic import make_phantom

    phantom = make_phantom(seed * 100_000 + index, index % 2 == 1, height=256, width=256)
    image = phantom.image
    if opacity_boost:
        boosted = image.astype(np.float32) + opacity_boost * (phantom.opacity_mask > 0)
        image = np.clip(boosted, 0, 255).astype(np.uint8)
    return phantom, image


def make_phantom_tree(
    root: Path,
    count: int,
    size: int,
    seed: int = 0,
    splits=(0.6, 0.2, 0.2),
    opacity_boost: float = 0.0,
    view: str = "uncrop",
) -> Path:
    """A dataset tree ``root/<size>/<view>/{Train,Validation,Test}/{Negative,Positive}`` of
    synthetic phantoms, Lanczos-resized, without the U-Net (``view="crop"`` cuts
    :func:`phantom_crop_box`). ``opacity_boost`` adds that many grey levels inside positives'
    opacities (a stronger signal for tests that must learn from random weights in a few CPU
    minutes). Returns the view folder (what train.py takes as -p)."""
    from deepcovidxr.imageio import write_gray
    from deepcovidxr.layout import DataTree, Label, Split
    from deepcovidxr.preprocess import lanczos_resize

    tree = DataTree(root)
    bounds = [round(f * count) for f in (splits[0], splits[0] + splits[1])]
    for index in range(count):
        phantom, image = phantom_image(index, seed, opacity_boost)
        if view == "crop":
            image = phantom_crop_box(phantom.lung_mask).crop(image)
        split = Split.TRAIN if index < bounds[0] else Split.VALIDATION if index < bounds[1] else Split.TEST
        label = Label.POSITIVE if phantom.label else Label.NEGATIVE
        write_gray(tree.class_dir(size, view, split, label) / f"phantom_{index:04d}.png", lanczos_resize(image, size))
    return tree.view_dir(size, view)


LEARNING_SIZE = 128  # 4x4 final feature maps: the least that Grad-CAM can point with
LEARNING_COUNT = 400
LEARNING_BOOST = 40.0


@pytest.fixture(scope="session")
def phantom_member(tmp_path_factory) -> tuple[Path, Path]:
    """train.py, run from the command line, on 400 cropped phantoms at 128 px from random
    weights (ResNet-50, Adam, 12 epochs; about 4 CPU minutes). Returns (view folder, output)."""
    root = tmp_path_factory.mktemp("phantom_member")
    view = make_phantom_tree(root / "data", LEARNING_COUNT, LEARNING_SIZE, opacity_boost=LEARNING_BOOST, view="crop")
    output = root / "members"
    result = run_script(
        "train.py",
        *("-m", "ResNet-50", "-s", LEARNING_SIZE, "-p", view, "-o", output),
        *("-w", "none", "--optimizer", "adam", "--epochs", 12, "--batch-size", 32, "--seed", 0),
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return view, output
