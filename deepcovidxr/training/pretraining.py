"""NIH ChestX-ray14 pretraining of one backbone with a 14-finding sigmoid head.

Fixes of the original (SPEC s.7): the backbone is actually trained (the original's in-place
freeze left 5 of 6 backbones at ImageNet); the official patient-wise train_val/test lists are
used, with a patient-wise validation split; all 14 findings are kept and "No Finding" images stay
in as all-zero targets; images are resized with antialiased Lanczos, not nearest neighbour; the
size is in the output name (``nih_weight_<Model>_<size>.h5``), which tuner.py and train.py load
directly (the 14-unit head is swapped for a 1-unit head on load). Per-finding AUROC on the
official test list is written as CSV.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepcovidxr.contract.layout import PretrainPaths

log = logging.getLogger(__name__)


def checkpoint_name(model: str, size: int) -> str:
    return PretrainPaths(Path(), model, size).checkpoint.name


def auroc_name(model: str, size: int) -> str:
    return PretrainPaths(Path(), model, size).auroc.name
