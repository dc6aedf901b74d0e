"""The authors' member files (Keras 2.3 / TF 2.0 full-model HDF5) load into our rebuilt members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.contract.backbones import BACKBONES, Backbone
from deepcovidxr.contract.layout import CropMode, Member
from deepcovidxr.networks.legacy_h5 import LegacyWeightsError
from deepcovidxr.networks.members import load_member
from tests.support.legacy_writers import write_legacy_member

SIZE = 75


@pytest.mark.parametrize("spec", BACKBONES, ids=[b.name for b in BACKBONES])
def test_legacy_member_loads_and_predicts_identically(spec: Backbone, tmp_path: Path) -> None:
    member = Member(spec.name, SIZE, CropMode.UNCROP)
    path = tmp_path / member.legacy_filename
    probe, expected = write_legacy_member(spec.constructor, SIZE, path)
    model = load_member(path)
    predictions = np.asarray(model.predict(np.load(probe), verbose=0))
    legacy = np.load(expected)
    assert 0.01 < legacy.mean() < 0.99, "the legacy probe must not saturate, or the comparison proves nothing"
    assert np.max(np.abs(predictions - legacy)) <= 1e-4


def test_mismatched_file_names_file_and_layer(tmp_path: Path) -> None:
    path = tmp_path / "ResNet50_75_up_uncrop.h5"
    write_legacy_member("ResNet50", SIZE, path)
    wrong = path.rename(tmp_path / "DenseNet_75_up_uncrop.h5")  # a ResNet file under a DenseNet name
    with pytest.raises(LegacyWeightsError, match=r"DenseNet_75_up_uncrop\.h5"):
        load_member(wrong)
