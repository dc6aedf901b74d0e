"""tuner.py: keras-tuner Bayesian search of dropout, learning rate and momentum for one member
after a frozen warm-up; trials in the HParams dashboard.
"""

from __future__ import annotations

from deepcovidxr.config.training_stages import TuneConfig
from deepcovidxr.stages.common import StageResult
from deepcovidxr.training.tuning import tune


def run(config: TuneConfig) -> StageResult:
    """The search (:func:`deepcovidxr.training.tuning.tune`); its report is the best values' JSON."""
    return StageResult(tune(config))
