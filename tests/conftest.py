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
