"""Paths and helpers tests import: where ../shared/data is (and whether its absence skips or
fails a test), running a stage script as a user would, saving random-weight members."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.phantom_tasks import write_view_tree as make_phantom_tree  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("DEEPCOVIDXR_SHARED_DATA", REPO.parent / "shared" / "data"))
UNET_WEIGHTS = REPO / "unet" / "lung_unet.weights.h5"


def _absent(message: str) -> None:
    """Skip the test, or fail it under DEEPCOVIDXR_REQUIRE_SHARED=1 (CI), where what it needs must be there."""
    if os.environ.get("DEEPCOVIDXR_REQUIRE_SHARED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def shared(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when it is absent, unless
    DEEPCOVIDXR_REQUIRE_SHARED=1 (CI), where absence is a failure."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        _absent(f"shared data not found: {path} (set DEEPCOVIDXR_SHARED_DATA or clone ../shared beside the repo)")
    return path


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[object]:
    """One Ray for a test module, started in this process on 127.0.0.1 by the package's own start
    (``runtime.ray_cluster``) and stopped with ``ray.shutdown()`` at the end. Ray is an optional
    extra: without it the module is skipped, unless DEEPCOVIDXR_REQUIRE_SHARED=1 (CI installs it
    through requirements-dev.txt), where its absence is a failure."""
    from deepcovidxr.errors import UsageError
    from deepcovidxr.runtime.ray_cluster import RayCluster, connected, import_ray

    try:
        import_ray()
    except UsageError as missing:
        _absent(str(missing))

    with connected(RayCluster(num_cpus=num_cpus)) as ray:
        yield ray


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """A TimeoutError in the main thread after ``seconds`` (SIGALRM): an in-process run waiting
    on a cluster that never answers fails the test instead of hanging the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


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
