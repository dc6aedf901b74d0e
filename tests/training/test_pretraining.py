"""pretrain.py's resume: a rerun with its own checkpoint present needs no ImageNet download."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import shared


def test_an_offline_rerun_resumes_from_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    from keras.src.utils import file_utils

    from deepcovidxr.config.training_stages import PretrainConfig
    from deepcovidxr.networks.members import build_member, save_member
    from deepcovidxr.stages.pretrain import run as run_pretrain
    from deepcovidxr.training.schedule import set_precision

    root = shared("nih")
    checkpoint = tmp_path / "nih_weight_ResNet-50_32.h5"
    keras.utils.set_random_seed(5)
    finished = build_member("ResNet-50", 32, dropout=0.0, weights=None, outputs=14)
    save_member(finished, checkpoint, None, {"pretraining": "an earlier run"})
    before = checkpoint.read_bytes()

    def offline(*args, **kwargs):
        raise OSError("offline: no ImageNet download possible")

    monkeypatch.setattr(file_utils, "get_file", offline)
    try:
        config = PretrainConfig(
            model="ResNet-50", size=32, path=root, output=tmp_path, weights="imagenet", epochs=1, batch_size=8
        )
        assert run_pretrain(config).report == checkpoint
    finally:
        set_precision("fp32")
    assert checkpoint.read_bytes() == before  # evaluated, not retrained
    auroc = (tmp_path / "nih_auroc_ResNet-50_32.csv").read_text(encoding="utf-8").splitlines()
    assert auroc[0] == "finding,auroc,positives,negatives" and auroc[-1].startswith("mean")
