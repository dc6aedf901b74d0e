"""train_all.py: the chosen members one after another with train.py schedule; finished ones are
skipped, so a rerun resumes. "Finished" is train.py's rule (``schedule.finished_member``): the
member's record matches this run's settings and data; a member file no record describes fails
that member (exit 2 at the end) without stopping the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepcovidxr.config.training_stages import TrainAllConfig, TrainConfig
from deepcovidxr.contract.file_report import ERROR, count_unreadable
from deepcovidxr.contract.layout import Member
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.errors import DeepcovidxrError, MissingInputError, UsageError
from deepcovidxr.stages.common import StageResult
from deepcovidxr.training.trainer import member_hyperparameters, member_weights, train_member

log = logging.getLogger(__name__)


def run(config: TrainAllConfig) -> StageResult:
    """Train the chosen members one after another; finished ones are skipped, so a rerun resumes.
    Exit code 1 when a member had to leave unreadable files out."""
    import gc

    import keras

    from deepcovidxr.contract.layout import DataTree, ensemble_members

    members = [Member.parse(m) for m in config.members] if config.members else list(ensemble_members())
    tree = DataTree(Path(config.data))
    missing = [m.short_name for m in members if not tree.view_dir(m.size, m.crop).is_dir()]
    if missing:
        raise MissingInputError(f"{config.data}: no data folder for {', '.join(missing)}")
    failures = []
    for number, member in enumerate(members, start=1):
        log.info("member %d of %d: %s", number, len(members), member.short_name)
        try:
            train_member(
                TrainConfig(
                    model=member.backbone,
                    size=member.size,
                    path=tree.view_dir(member.size, member.crop),
                    output=config.output,
                    crop=member.crop,
                    weights=member_weights(config.weights, member),
                    hyperparameters=member_hyperparameters(config.hyperparameters, member),
                    **(config.common or {}),
                )
            )
        except DeepcovidxrError as error:
            # A member the user can mend (a one-class split, a missing weights file, a diverged
            # run) must not cost the others; anything else is a bug and stops the run.
            log.error("%s failed: %s", member.short_name, error)
            failures.append(member.short_name)
        keras.backend.clear_session()
        gc.collect()
    if failures:
        raise UsageError(f"{len(failures)} member(s) failed (reasons logged above): {', '.join(failures)}")
    unreadable = sum(count_unreadable(RunPaths(config.output, m).unreadable) for m in members)
    return StageResult(Path(config.output), {ERROR: unreadable})
