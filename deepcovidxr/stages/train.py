"""train.py: one member in two phases (Keras fit on one host and its GPUs, or the multi-worker
loop), best of --repeats seeds.
"""

from __future__ import annotations

from pathlib import Path

from deepcovidxr.configs import TrainConfig
from deepcovidxr.errors import UsageError
from deepcovidxr.training import train_member


def run(config: TrainConfig) -> Path:
    """The train.py entry point: Keras fit on one host (all its GPUs), or the multi-worker loop."""
    if config.multi_worker:
        from deepcovidxr.distributed import train_member_multiworker

        if config.repeats > 1:
            # each worker would need every run's numbers, which only the chief writes
            raise UsageError("--repeats is not supported with --multi-worker; run the seeds as separate jobs")

        return train_member_multiworker(config)
    return train_member(config)
