"""train_all.py with ``--backend ray`` (docs/distributed.md) on one local Ray for the module
(127.0.0.1, 2 CPUs): each member a Ray task; a failed member retried ``--retries`` times, then
listed; finished members never sent; both members of a two-member run written where the local
backend writes them, and equal to the local backend's.

What holds for determinism (the slow test checks it): on CPU, a member trained as a Ray task with
the same seed is bitwise equal to the local backend's (every weight, the training log), because
``train_member`` seeds Python, numpy and TensorFlow from ``--seed`` in whichever process runs it
and TensorFlow's CPU kernels for these layers give the same sums at any thread count. On GPUs it
is not promised: cuDNN picks its convolution algorithms per run and some of them add in a varying
order, and the project does not turn on TensorFlow's op determinism (it slows training).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from deepcovidxr import cli
from tests.support.helpers import local_ray, make_phantom_tree, time_limit

MEMBERS = ("res_32_uncrop", "res_32_crop")
TRAINING = ["--epochs", "1", "--batch-size", "4", "--optimizer", "adam", "--seed", "0"]


@pytest.fixture(scope="module")
def cluster():
    with local_ray(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px phantom tree with both views the members need (the crop view a copy)."""
    view = make_phantom_tree(tmp_path_factory.mktemp("tree") / "data", 24, 32, seed=3)
    shutil.copytree(view, view.parent / "crop")
    return view.parent.parent


def _jobs(tree: Path, output: Path) -> dict:
    from deepcovidxr.config.training_stages import TrainAllConfig
    from deepcovidxr.contract.layout import DataTree, Member
    from deepcovidxr.stages.train_all import _member_config

    config = TrainAllConfig(data=tree, output=output, members=MEMBERS)
    return {name: _member_config(config, DataTree(tree), Member.parse(name)) for name in MEMBERS}


def test_a_failed_member_is_retried_then_listed_and_the_others_go_on(cluster, tree: Path, tmp_path: Path) -> None:
    """A stand-in for train_member (no TensorFlow: seconds): the uncrop member fails its first
    attempt only, the crop member every attempt. With --retries 1 the first is trained on its
    second attempt, the second is listed after two, each attempt in a fresh worker."""
    from deepcovidxr.runtime.ray_cluster import RayCluster
    from deepcovidxr.training.ray_jobs import train_on_ray

    def flaky(config) -> str:  # defined here, so Ray sends it by value
        import os

        marker = Path(config.output) / f"{config.member.short_name}.attempts"
        pids = marker.read_text(encoding="utf-8").split() if marker.exists() else []
        marker.write_text(" ".join([*pids, str(os.getpid())]), encoding="utf-8")
        if config.member.crop.value == "crop" or not pids:
            raise RuntimeError(f"attempt {len(pids) + 1} failed")
        return "trained"

    output = tmp_path / "members"
    output.mkdir()
    with time_limit(120):
        failures = train_on_ray(_jobs(tree, output), RayCluster(), 0, retries=1, train=flaky)
    assert list(failures) == ["res_32_crop"] and "attempt 2 failed" in str(failures["res_32_crop"])
    for name in MEMBERS:
        attempts = (output / f"{name}.attempts").read_text(encoding="utf-8").split()
        assert len(attempts) == 2 and len(set(attempts)) == 2  # max_calls=1: a fresh process each


def _weights(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:

        def keep(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):
                found[name] = item[()]

        handle.visititems(keep)
    return found


@pytest.mark.slow  # about two minutes here: three ResNet-50 trainings (covered by docs/distributed.md's figures)
def test_train_all_on_ray_writes_both_members_as_the_local_backend_does(cluster, tree: Path, tmp_path: Path) -> None:
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    flags = ["-d", str(tree), *TRAINING]
    with time_limit(900):
        assert cli.main("train_all", [*flags, "-o", str(ray_out), "--members", *MEMBERS, "--backend", "ray"]) == 0
    assert cli.main("train_all", [*flags, "-o", str(local_out), "--members", MEMBERS[0]]) == 0
    for stem in ("ResNet50_32_up_uncrop", "ResNet50_32_up_crop"):
        for suffix in (".h5", ".json", "_done.json", "_log.csv", "_curves.png", "_config.json"):
            assert (ray_out / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
        assert (ray_out / "tensorboard" / stem).is_dir()
    stem = "ResNet50_32_up_uncrop"
    ours, theirs = _weights(ray_out / f"{stem}.h5"), _weights(local_out / f"{stem}.h5")
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    log = f"{stem}_log.csv"
    assert (ray_out / log).read_text(encoding="utf-8") == (local_out / log).read_text(encoding="utf-8")
    # a rerun finds both finished by train.py's rule and sends no task
    stamp = (ray_out / f"{stem}.h5").stat().st_mtime_ns
    with time_limit(300):
        assert cli.main("train_all", [*flags, "-o", str(ray_out), "--members", *MEMBERS, "--backend", "ray"]) == 0
    assert (ray_out / f"{stem}.h5").stat().st_mtime_ns == stamp
