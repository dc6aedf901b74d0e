"""The class contract: classes from Train/ folders, checked against the other splits; member
sidecars record their classes and a mixed set is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepcovidxr.contract import classes
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.scoring.task import BinaryTask, task_for


def make_tree(view: Path, layout: dict[str, list[str]]) -> Path:
    for split, names in layout.items():
        for name in names:
            (view / split / name).mkdir(parents=True)
    return view


def test_binary_tree_is_the_original_task(tmp_path):
    view = make_tree(tmp_path, {s: ["Positive", "Negative"] for s in ("Train", "Validation", "Test")})
    found = classes.discover(view)
    assert found == ("Negative", "Positive")
    assert isinstance(task_for(found), BinaryTask) and task_for(found).units == 1


def test_classes_are_sorted_train_folders_and_hidden_folders_ignored(tmp_path):
    view = make_tree(tmp_path, {"Train": ["Pneumonia", "COVID-19", "Normal", ".ipynb_checkpoints"]})
    found = classes.discover(view)
    assert found == ("COVID-19", "Normal", "Pneumonia")
    assert task_for(found).units == 3
    assert [classes.probability_column(c) for c in found] == ["p_COVID-19", "p_Normal", "p_Pneumonia"]


def test_a_split_with_other_folders_is_an_error_naming_the_difference(tmp_path):
    view = make_tree(tmp_path, {"Train": ["A", "B", "C"], "Validation": ["A", "B", "D"]})
    with pytest.raises(UsageError) as error:
        classes.discover(view)
    message = str(error.value)
    assert "Validation" in message and "'D'" in message and "'C'" in message


def test_one_class_or_no_split_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="at least two"):
        classes.discover(make_tree(tmp_path / "one", {"Train": ["Positive"]}))
    with pytest.raises(MissingInputError):
        classes.discover(tmp_path / "nothing")
    with pytest.raises(UsageError, match="Negative/ and Positive/"):
        classes.discover(make_tree(tmp_path / "half", {"Train": ["Negative", "Other"]}))


def test_member_classes_from_sidecar_and_mixed_members_refused(tmp_path):
    old = tmp_path / "ResNet50_224_up_crop.h5"
    old.touch()  # the authors' files have no sidecar: binary
    three = tmp_path / "DenseNet_224_up_crop.h5"
    three.touch()
    three.with_suffix(".json").write_text(json.dumps({"classes": ["A", "B", "C"]}), encoding="utf-8")
    assert classes.member_classes(old) == classes.BINARY
    assert classes.member_classes(three) == ("A", "B", "C")
    assert classes.common([(None, three)]) == ("A", "B", "C")
    with pytest.raises(UsageError) as error:
        classes.common([(None, old), (None, three)])
    assert "ResNet50_224_up_crop.h5" in str(error.value) and "DenseNet_224_up_crop.h5" in str(error.value)


def test_split_description_counts_each_class():
    """The training log named "positives" of a 3-class tree (every image not of the first class)."""
    import numpy as np

    from deepcovidxr.data.tfdata import SplitFiles

    three = SplitFiles(["a", "b", "c", "d"], np.array([0, 2, 2, 1]), ("COVID-19", "Normal", "Pneumonia"))
    assert three.describe() == "4 images (COVID-19 1, Normal 1, Pneumonia 2)"
    binary = SplitFiles(["a", "b", "c"], np.array([0.0, 1.0, 1.0], np.float32))
    assert binary.describe() == "3 images (2 positive)"
