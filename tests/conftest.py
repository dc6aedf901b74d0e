"""Shared fixtures: where ../shared/data is, and whether its absence skips or fails a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepcovidxr.phantom_tasks import write_view_tree as make_phantom_tree  # tests import it from here

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


# A machine whose locale is plain ASCII (CI ran under one): Python's default text encoding is then
# ASCII, so any text file opened without encoding="utf-8" fails on a non-ASCII byte.
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def run_script(
    script: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a stage script as a user would, in a subprocess, from the repo root; ``env`` adds to
    (or overrides) the environment, e.g. ``ASCII_LOCALE``."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.fixture(scope="session")
def lung_cropper():
    """One U-Net for the whole session: the weights shipped in unet/."""
    from deepcovidxr.lungs.cropper import LungCropper

    assert UNET_WEIGHTS.is_file(), f"shipped U-Net weights missing: {UNET_WEIGHTS}"
    return LungCropper(UNET_WEIGHTS, batch_size=8)


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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``, the default in pyproject.toml) a module's tests stay
    on one worker, so its module-scoped fixtures (trees, members, exports) are built once; the
    tests of every module that uses the session's ``phantom_member`` share one group, so that
    member (the suite's longest fixture, about 15 minutes here) is trained once, not on both
    workers, and that group is scheduled first."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = "phantom_member" if "phantom_member" in fixtures else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    # The longest group first: one worker trains the member while the other takes the rest.
    items.sort(key=lambda item: "phantom_member" not in getattr(item, "fixturenames", ()))
