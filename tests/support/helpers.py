"""Paths and helpers tests import: where ../shared/data is (and whether its absence skips or
fails a test), running a stage script as a user would, saving random-weight members."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.phantom_tasks import write_view_tree as make_phantom_tree  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("DEEPCOVIDXR_SHARED_DATA", REPO.parent / "shared" / "data"))
UNET_WEIGHTS = REPO / "unet" / "lung_unet.weights.h5"


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


def save_random_members(folder: Path, names: tuple[str, ...], weights: dict[str, float] | None = None) -> Path:
    """Random-weight members (``weights=None``; member ``i`` seeded ``i``) saved in the member format
    in ``folder``, plus ``ensemble_weights.json`` when ``weights`` is given; returns ``folder``."""
    import json

    import keras

    from deepcovidxr.contract.layout import Member
    from deepcovidxr.networks.members import build_member, save_member

    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        member = Member.parse(name)
        keras.utils.set_random_seed(index)
        save_member(build_member(member.backbone, member.size, weights=None), folder / member.legacy_filename, member)
    if weights is not None:
        (folder / "ensemble_weights.json").write_text(json.dumps(weights), encoding="utf-8")
    return folder
