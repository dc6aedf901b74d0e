"""pretrain.py: one backbone on NIH ChestX-ray14 (14 findings), resumable offline from its own
checkpoint; per-finding AUROC on the official test list.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepcovidxr.config.training_stages import PretrainConfig
from deepcovidxr.errors import MissingInputError
from deepcovidxr.stages.common import StageResult
from deepcovidxr.training.pretraining import pretrain

log = logging.getLogger(__name__)


def run(config: PretrainConfig) -> StageResult:
    """Fetch (``--download``) or find the NIH folder, then pretrain (:func:`pretrain`)."""
    root = Path(config.path)
    if config.download:
        from deepcovidxr.data.nih_download import download_nih

        download_nih(root)
    elif not root.is_dir():
        raise MissingInputError(f"NIH folder not found: {root} (pass --download to fetch the 12 archives into it)")
    return StageResult(pretrain(config))
