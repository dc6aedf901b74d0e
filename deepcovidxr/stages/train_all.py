"""train_all.py: the chosen members one after another with train.py schedule (or, with
``--backend ray``, as Ray tasks, as many at once as the cluster holds: ``training.ray_jobs``);
finished ones are skipped, so a rerun resumes. "Finished" is train.py's rule
(``schedule.finished_member``): the member's record matches this run's settings and data; a member
file no record describes fails that member (exit 2 at the end) without stopping the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepcovidxr.config.training_stages import TrainAllConfig, TrainConfig
from deepcovidxr.contract.file_report import ERROR, count_unreadable
from deepcovidxr.contract.layout import DataTree, Member
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.errors import DeepcovidxrError, MissingInputError, UsageError
from deepcovidxr.stages.common import StageResult, refuse_missing_ray
from deepcovidxr.training.trainer import member_hyperparameters, member_weights, train_member

log = logging.getLogger(__name__)


def run(config: TrainAllConfig) -> StageResult:
    """Train the chosen members; finished ones are skipped, so a rerun resumes. Exit code 1 when
    a member had to leave unreadable files out."""
    from deepcovidxr.contract.layout import ensemble_members

    refuse_missing_ray(config)
    members = [Member.parse(m) for m in config.members] if config.members else list(ensemble_members())
    tree = DataTree(Path(config.data))
    missing = [m.short_name for m in members if not tree.view_dir(m.size, m.crop).is_dir()]
    if missing:
        raise MissingInputError(f"{config.data}: no data folder for {', '.join(missing)}")
    failures = _on_ray(config, tree, members) if config.backend == "ray" else _one_by_one(config, tree, members)
    if failures:
        listed = f"{len(failures)} member(s) failed (reasons logged above): {', '.join(failures)}"
        if all(isinstance(error, DeepcovidxrError) for error in failures.values()):
            raise UsageError(listed)
        raise RuntimeError(listed)  # a crash or a bug, after --retries: exit 1
    unreadable = sum(count_unreadable(RunPaths(config.output, m).unreadable) for m in members)
    return StageResult(Path(config.output), {ERROR: unreadable})


def _member_config(config: TrainAllConfig, tree: DataTree, member: Member) -> TrainConfig:
    """train.py's config for one member: its view folder, initial weights and tuned values."""
    return TrainConfig(
        model=member.backbone,
        size=member.size,
        path=tree.view_dir(member.size, member.crop),
        output=config.output,
        crop=member.crop,
        weights=member_weights(config.weights, member),
        hyperparameters=member_hyperparameters(config.hyperparameters, member),
        **(config.common or {}),
    )


def _one_by_one(config: TrainAllConfig, tree: DataTree, members: list[Member]) -> dict[str, BaseException]:
    """The local backend: each member in this process, in order."""
    import gc

    import keras

    failures: dict[str, BaseException] = {}
    for number, member in enumerate(members, start=1):
        log.info("member %d of %d: %s", number, len(members), member.short_name)
        try:
            train_member(_member_config(config, tree, member))
        except DeepcovidxrError as error:
            # A member the user can mend (a one-class split, a missing weights file, a diverged
            # run) must not cost the others; anything else is a bug and stops the run.
            log.error("%s failed: %s", member.short_name, error)
            failures[member.short_name] = error
        keras.backend.clear_session()
        gc.collect()
    return failures


def _on_ray(config: TrainAllConfig, tree: DataTree, members: list[Member]) -> dict[str, BaseException]:
    """The Ray backend: each member a task (``training.ray_jobs``); a member whose config cannot
    be made (a missing initial weights file) fails unsent, as it fails locally."""
    from deepcovidxr.runtime.ray_cluster import RayCluster
    from deepcovidxr.training.ray_jobs import train_on_ray

    failures: dict[str, BaseException] = {}
    jobs: dict[str, TrainConfig] = {}
    for member in members:
        try:
            jobs[member.short_name] = _member_config(config, tree, member)
        except DeepcovidxrError as error:
            log.error("%s failed: %s", member.short_name, error)
            failures[member.short_name] = error
    return {**failures, **train_on_ray(jobs, RayCluster.of(config), config.gpus_per_member, config.retries)}
