"""train_all.py on Ray (``--backend ray``): each member one Ray task, as many at once as the
cluster holds.

The 24 members are independent jobs: one per GPU scales better than 24 data-parallel runs one
after another. Each task asks for ``--gpus-per-member`` GPUs (Ray then sets the task's
``CUDA_VISIBLE_DEVICES``, so :func:`train_member`'s MirroredStrategy sees those alone) and one CPU,
and runs in a fresh worker process (``max_calls=1``: nothing of one member's TensorFlow state or
GPU memory is left to the next). Each trains through :func:`train_member` exactly as the local
loop does, so the member file, its record, log, curves and TensorBoard logs land where a local run
puts them (the output folder must be at the same path on every node: a shared filesystem).

A member train.py's own rule finds finished (:func:`finished_member`) is skipped on the driver
and never sent. A failed task (an exception, or its worker dying) is run again ``--retries``
times; each attempt resumes from the member's last finished epoch (:mod:`phase_state`). What still
fails is returned, by member, for the stage's final error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from deepcovidxr.config.training_stages import TrainConfig
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.errors import DeepcovidxrError
from deepcovidxr.runtime.ray_cluster import RayCluster, connected, default_gpus
from deepcovidxr.training.schedule import RunRecord, finished_member
from deepcovidxr.training.trainer import train_member

log = logging.getLogger(__name__)


def train_one(config: TrainConfig) -> str:
    """One member in a Ray worker: its log lines at INFO (Ray forwards them to the driver's
    stderr, prefixed with the worker), then :func:`train_member`; the member file's path."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return str(train_member(config))


def _skipped(config: TrainConfig) -> bool:
    """train.py's skip rule, applied before a task is sent."""
    return finished_member(RunPaths(config.output, config.member), RunRecord.for_member(config), config.overwrite)


def train_on_ray(
    jobs: dict[str, TrainConfig],
    cluster: RayCluster,
    gpus: float | None,
    retries: int,
    train: Callable[[TrainConfig], str] = train_one,
) -> dict[str, BaseException]:
    """Train ``jobs`` (member short name -> its TrainConfig) as Ray tasks running ``train``;
    returns the members that failed after ``retries`` more attempts, with their last error. A
    member that cannot even be checked (a member file with no record: the skip rule refuses it)
    fails unsent."""
    failures: dict[str, BaseException] = {}
    todo: dict[str, TrainConfig] = {}
    for name, config in jobs.items():
        try:
            if not _skipped(config):
                todo[name] = config
        except DeepcovidxrError as error:
            log.error("%s failed: %s", name, error)
            failures[name] = error
    if not todo:
        return failures
    with connected(cluster) as ray:
        gpus = default_gpus(ray, gpus)
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_calls=1, max_retries=retries, retry_exceptions=True)(train)
        running = {task.remote(config): name for name, config in todo.items()}
        log.info("ray: %d member(s) as tasks of %g GPU(s) each, up to %d attempt(s)", len(todo), gpus, retries + 1)
        pending = list(running)
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            name = running[ref]
            try:
                log.info("%s: wrote %s", name, ray.get(ref))
            except Exception as error:  # after every retry: reported by member, the others go on
                cause = getattr(error, "cause", None) or error
                log.error("%s failed after %d attempt(s): %s", name, retries + 1, cause)
                failures[name] = cause
    return failures
