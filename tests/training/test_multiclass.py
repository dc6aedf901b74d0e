"""Multi-class training (issue 11): the classes are the tree's class folders; Negative/Positive
keeps the original's sigmoid member exactly, three or more classes train a softmax member whose
sidecar names them. Tiny sizes: ResNet-50 at 32 px, one epoch, random weights."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import REPO, make_phantom_tree, run_script
from tools.phantom_tasks import write_class_view_tree

CLASSES = ("Diffuse", "LowerZone", "Normal")
SIZE = 32
TRAIN_FLAGS = ("-m", "ResNet-50", "-s", str(SIZE), "--epochs", "1", "--batch-size", "4")
# From random weights the batch-norm statistics need a few dozen steps before inference-mode
# outputs are finite (fewer and ResNet-50's activations overflow): 2 epochs of 21 steps.
THREE_CLASS_FLAGS = ("-m", "ResNet-50", "-s", str(SIZE), "--epochs", "2", "--batch-size", "2")


@pytest.fixture(scope="module")
def three_class_view(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 phantoms (Train 18 per class, Validation and Test 6 per class), then Train made
    unbalanced: LowerZone keeps 6 of its 18 (labels 18 / 6 / 18)."""
    view = write_class_view_tree(tmp_path_factory.mktemp("three"), 90, SIZE, seed=2)
    for extra in sorted((view / "Train" / "LowerZone").glob("*.png"))[6:]:
        extra.unlink()
    return view


def _member_files(output: Path) -> list[str]:
    names = []
    for path in sorted(output.rglob("*")):
        if path.is_file():
            relative = path.relative_to(output).as_posix()
            names.append(relative.rsplit("/", 1)[0] + "/EVENTS" if "events.out.tfevents" in relative else relative)
    return sorted(names)


# ---- the building blocks ---------------------------------------------------------------------------


def test_labels_are_class_indices_for_three_classes_and_0_1_for_binary(three_class_view: Path, tmp_path: Path) -> None:
    from deepcovidxr.data.tfdata import list_split

    train = list_split(three_class_view, "Train")
    assert train.classes == CLASSES and train.task.units == 3
    assert train.labels.dtype == np.int64 and train.counts.tolist() == [18, 6, 18]
    for file, label in zip(train.files, train.labels, strict=True):
        assert f"/{CLASSES[label]}/" in file
    binary = list_split(make_phantom_tree(tmp_path, 10, SIZE), "Train")
    assert binary.task.units == 1 and binary.labels.dtype == np.float32 and set(binary.labels) == {0.0, 1.0}


def test_three_class_batches_are_one_hot_and_oversampling_balances_them(three_class_view: Path) -> None:
    from deepcovidxr.data.tfdata import list_split, make_dataset

    train = list_split(three_class_view, "Train")
    plain = make_dataset(train, SIZE, 14, training=False, cache=False)
    _, labels = next(iter(plain))
    np.testing.assert_array_equal(labels.numpy(), np.eye(3, dtype=np.float32)[train.labels[:14]])
    drawn = make_dataset(train, SIZE, 14, training=True, oversample=True, augmentation=None, cache=False)
    counts = np.concatenate([y.numpy() for _, y in drawn.repeat(30)]).sum(axis=0)
    assert counts.sum() == len(train) * 30  # an epoch keeps the training set's size
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.07), counts  # LowerZone is 1/7 of the files


def test_balanced_class_weights_equal_sklearns() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    from deepcovidxr.data.tfdata import class_weights, resolve_class_weights

    labels = np.array([0] * 7 + [1] * 2 + [2] * 4 + [3] * 1)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    four = ("A", "B", "C", "D")
    assert list(class_weights(labels, 4).values()) == pytest.approx(expected.tolist())
    assert list(resolve_class_weights("balanced", labels, four).values()) == pytest.approx(expected.tolist())
    assert resolve_class_weights(True, labels, four) == resolve_class_weights("balanced", labels, four)
    # the binary table is what it always was
    assert class_weights(np.array([0.0] * 6 + [1.0] * 2)) == pytest.approx({0: 2 / 3, 1: 2.0})


def test_explicit_class_weights_by_position_or_name() -> None:
    from deepcovidxr.config.training_stages import TrainConfig, parse_class_weight
    from deepcovidxr.data.tfdata import resolve_class_weights
    from deepcovidxr.errors import UsageError

    labels = np.array([0, 1, 2])
    assert resolve_class_weights("1,2.5,0.5", labels, CLASSES) == {0: 1.0, 1: 2.5, 2: 0.5}
    assert resolve_class_weights("LowerZone=3", labels, CLASSES) == {0: 1.0, 1: 3.0, 2: 1.0}
    assert resolve_class_weights(False, labels, CLASSES) is None
    with pytest.raises(UsageError, match=r"2 weights for 3 classes"):
        resolve_class_weights("1,2", labels, CLASSES)
    with pytest.raises(UsageError, match=r"Lower"):
        resolve_class_weights("Lower=2", labels, CLASSES)
    assert parse_class_weight(" Diffuse = 2 , Normal=0.5") == "Diffuse=2,Normal=0.5"
    for bad in ("x", "1,Normal=2", "-1,1,1"):
        with pytest.raises(ValueError):
            parse_class_weight(bad)
    common = {"model": "ResNet-50", "size": SIZE, "path": REPO, "output": "/tmp/x", "crop": "uncrop"}
    assert TrainConfig(**common, class_weight="1, 2,3").class_weight == "1,2,3"
    assert TrainConfig(**common, class_weight=True).class_weight is True
    assert TrainConfig(**common).class_weight is False
    with pytest.raises(UsageError, match="--class-weight"):
        TrainConfig(**common, class_weight="a=b")


def test_softmax_member_round_trips_with_its_classes(tmp_path: Path) -> None:
    import keras

    from deepcovidxr.contract.classes import member_classes
    from deepcovidxr.contract.layout import CropMode, Member
    from deepcovidxr.networks.members import build_member, head_for, load_member, save_member

    assert head_for(CLASSES) == (3, "softmax") and head_for(("Negative", "Positive")) == (1, "sigmoid")
    member = Member("ResNet-50", SIZE, CropMode.CROP)
    model = build_member("ResNet-50", SIZE, dropout=0.0, outputs=3, activation="softmax")
    path = save_member(model, tmp_path / member.legacy_filename, member, classes=CLASSES)
    assert member_classes(path) == CLASSES
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["outputs"] == 3
    loaded = load_member(path)
    head = loaded.get_layer("last")
    assert head.units == 3 and head.activation is keras.activations.softmax
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # a binary member records Negative/Positive; one without a sidecar (the authors') stays binary
    binary = build_member("ResNet-50", SIZE, dropout=0.0)
    binary_path = save_member(binary, tmp_path / "binary" / member.legacy_filename, member)
    assert json.loads(binary_path.with_suffix(".json").read_text(encoding="utf-8"))["classes"] == [
        "Negative",
        "Positive",
    ]
    binary_path.with_suffix(".json").unlink()
    again = load_member(binary_path, member).get_layer("last")
    assert again.units == 1 and again.activation is keras.activations.sigmoid
    with pytest.raises(ValueError, match="activation"):
        build_member("ResNet-50", SIZE, activation="relu")


def test_categorical_weighted_loss_and_macro_auc_by_hand() -> None:
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from deepcovidxr.scoring.metrics import macro_auc_or_nan
    from deepcovidxr.training.schedule import weighted_loss

    labels = np.array([0, 2, 1, 2])
    one_hot = np.eye(3, dtype=np.float32)[labels]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1]], np.float32)
    weights = np.array([1.0, 0.5, 2.0, 0.5], np.float32)
    by_hand = -np.log(p[np.arange(4), labels])
    loss = weighted_loss(tf.constant(one_hot), tf.constant(p), tf.constant(weights), global_batch=8)
    assert float(loss) == pytest.approx(float(np.sum(by_hand * weights) / 8), rel=1e-5)
    expected = np.mean([roc_auc_score(labels == k, p[:, k]) for k in range(3)])
    assert macro_auc_or_nan(labels, p, 3) == pytest.approx(expected)
    assert np.isnan(macro_auc_or_nan(np.array([0, 0, 2, 2]), p, 3))


def test_phantom_classes_differ_where_they_should() -> None:
    from tools.phantom_tasks import class_phantom_for_index

    found = {}
    for index in range(3):
        name, phantom, _ = class_phantom_for_index(index)
        found[name] = phantom
    assert sorted(found) == list(CLASSES)
    assert not found["Normal"].opacity_mask.any()
    lung = (found["Diffuse"].lung_mask > 0).sum()
    assert (found["Diffuse"].opacity_mask > 0).sum() > 0.5 * lung  # widespread
    assert 0 < (found["LowerZone"].opacity_mask > 0).sum() < 0.35 * lung  # focal


# ---- train.py ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_multiworker(*args: str) -> subprocess.CompletedProcess:
    cluster = {"worker": [f"127.0.0.1:{_free_port()}"]}
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}),
    }
    command = [sys.executable, str(REPO / "train.py"), *map(str, args), "--multi-worker"]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=900
    )


def _check_softmax_member(member_file: Path, view: Path) -> None:
    import keras

    from deepcovidxr.contract.classes import member_classes
    from deepcovidxr.data.tfdata import list_split, make_dataset
    from deepcovidxr.networks.members import load_member

    assert member_classes(member_file) == CLASSES
    sidecar = json.loads(member_file.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["classes"] == list(CLASSES) and sidecar["outputs"] == 3
    model = load_member(member_file)
    head = model.get_layer("last")
    assert head.units == 3 and head.activation is keras.activations.softmax
    test = list_split(view, "Test")
    scores = model.predict(make_dataset(test, SIZE, 4, training=False, cache=False), verbose=0)
    assert scores.shape == (len(test), 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("multi_worker", [False, True], ids=["fit", "multi-worker"])
def test_train_py_writes_a_3_class_member(three_class_view: Path, tmp_path: Path, multi_worker: bool) -> None:
    from sklearn.utils.class_weight import compute_class_weight

    from deepcovidxr.data.tfdata import list_split

    args = (*THREE_CLASS_FLAGS, "-p", three_class_view, "-o", tmp_path, "--class-weight")
    done = _train_multiworker(*args) if multi_worker else run_script("train.py", *args, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    member_file = tmp_path / f"ResNet50_{SIZE}_up_uncrop.h5"
    assert done.stdout.strip().endswith(member_file.name)
    _check_softmax_member(member_file, three_class_view)

    config = json.loads((tmp_path / f"ResNet50_{SIZE}_up_uncrop_config.json").read_text(encoding="utf-8"))
    assert config["classes"] == list(CLASSES)
    labels = list_split(three_class_view, "Train").labels
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    recorded = [config["class_weight"][str(k)] for k in range(3)]
    np.testing.assert_allclose(recorded, expected, rtol=1e-9)
    assert recorded == pytest.approx([42 / 54, 42 / 18, 42 / 54])
    if not multi_worker:
        assert config["train_counts"] == {"Diffuse": 18, "LowerZone": 6, "Normal": 18}
        log = (tmp_path / f"ResNet50_{SIZE}_up_uncrop_log.csv").read_text(encoding="utf-8").splitlines()
        columns = ["phase", "epoch", "acc", "auc", "learning_rate", "loss", "val_acc", "val_auc", "val_loss"]
        assert log[0].split(",") == columns
        assert config["history"]["final"]["val_auc"]  # the macro AUC the schedule watched
    else:
        assert len(config["history"]["final"]["val_auc"]) == 2


def test_train_py_on_a_binary_tree_is_unchanged(tmp_path: Path) -> None:
    """Negative/Positive: a Dense(1) sigmoid member and exactly the files train.py always wrote;
    the sidecar adds ``classes``."""
    import keras

    from deepcovidxr.networks.members import load_member

    view = make_phantom_tree(tmp_path / "tree", 20, SIZE, seed=3)
    output = tmp_path / "out"
    done = run_script("train.py", *TRAIN_FLAGS, "-p", view, "-o", output, "--class-weight", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    stem = f"ResNet50_{SIZE}_up_uncrop"
    assert _member_files(output) == sorted(
        [
            f"{stem}.h5",
            f"{stem}.json",
            f"{stem}_config.json",
            f"{stem}_curves.png",
            f"{stem}_done.json",
            f"{stem}_log.csv",
            "run_config.json",
            f"save_plots_final/{stem}/history.csv",
            f"save_weights_final/{stem}.h5",
            f"save_weights_final/{stem}.json",
            f"save_weights_final/{stem}_done.json",
            f"tensorboard/{stem}/final/train/EVENTS",
            f"tensorboard/{stem}/final/validation/EVENTS",
        ]
    )
    head = load_member(output / f"{stem}.h5").get_layer("last")
    assert head.units == 1 and head.activation is keras.activations.sigmoid
    assert json.loads((output / f"{stem}.json").read_text(encoding="utf-8"))["classes"] == ["Negative", "Positive"]
    config = json.loads((output / f"{stem}_config.json").read_text(encoding="utf-8"))
    assert config["class_weight"] == {"0": 1.0, "1": 1.0}  # 6 and 6 training images
    log = (output / f"{stem}_log.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert "val_precision" in log and "val_recall" in log  # the binary metrics, as before


def test_mismatched_class_folders_are_a_clear_error(three_class_view: Path, tmp_path: Path) -> None:
    view = tmp_path / "32" / "uncrop"
    shutil.copytree(three_class_view, view)
    shutil.rmtree(view / "Validation" / "LowerZone")
    (view / "Validation" / "Other").mkdir()
    done = run_script("train.py", *TRAIN_FLAGS, "-p", view, "-o", tmp_path / "out")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Validation" in done.stderr and "Other" in done.stderr and "LowerZone" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / f"ResNet50_{SIZE}_up_uncrop.h5").exists()


def test_a_class_without_validation_images_is_a_clear_error(three_class_view: Path, tmp_path: Path) -> None:
    view = tmp_path / "32" / "uncrop"
    shutil.copytree(three_class_view, view)
    for image in (view / "Validation" / "Diffuse").glob("*.png"):
        image.unlink()
    done = run_script("train.py", *TRAIN_FLAGS, "-p", view, "-o", tmp_path / "out")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Validation/Diffuse" in done.stderr
