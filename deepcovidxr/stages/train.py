"""train.py: one member in two phases (Keras fit on one host and its GPUs, or the multi-worker
loop), best of --repeats seeds.
"""

from __future__ import annotations

from deepcovidxr.config.training_stages import TrainConfig
from deepcovidxr.contract.file_report import ERROR, count_unreadable
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.errors import UsageError
from deepcovidxr.stages.common import StageResult
from deepcovidxr.training.trainer import train_member


def run(config: TrainConfig) -> StageResult:
    """The train.py entry point: Keras fit on one host (all its GPUs), or the multi-worker loop.
    Exit code 1 when training had to leave unreadable files out (listed next to the member)."""
    if config.multi_worker:
        from deepcovidxr.training.distributed import train_member_multiworker

        if config.repeats > 1:
            # each worker would need every run's numbers, which only the chief writes
            raise UsageError("--repeats is not supported with --multi-worker; run the seeds as separate jobs")

        final = train_member_multiworker(config)
    else:
        final = train_member(config)
    return StageResult(final, {ERROR: count_unreadable(RunPaths(config.output, config.member).unreadable)})
