"""Input pipeline, hyperparameter files, and the training stages' command lines."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.config import hyperparams
from deepcovidxr.contract import safe_pickle
from deepcovidxr.contract.layout import CropMode
from tests.support.helpers import make_phantom_tree, run_script


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom_tree(tmp_path_factory.mktemp("tree"), 40, 64, seed=1)


def test_list_split_is_sorted_and_labelled(small_tree: Path) -> None:
    from deepcovidxr.data.tfdata import list_split

    train = list_split(small_tree, "Train")
    assert len(train) == 24 and train.positives == 12
    names = [Path(f).name for f in train.files]
    negatives = [n for n, y in zip(names, train.labels, strict=True) if y == 0]
    assert negatives == sorted(negatives)
    assert all("/Positive/" in f for f, y in zip(train.files, train.labels, strict=True) if y == 1)
    with pytest.raises(FileNotFoundError, match="Validation"):
        list_split(small_tree.parent, "Validation")


def test_pipeline_normalises_exactly_like_prediction(small_tree: Path) -> None:
    """One preprocessing path: tf.data output == preprocess.to_model_input on the Pillow-read file."""
    from deepcovidxr.data.tfdata import list_split, make_dataset
    from deepcovidxr.imaging.preprocess import to_model_input

    files = list_split(small_tree, "Validation")
    images, labels = next(iter(make_dataset(files, 64, 4, training=False, cache=False)))
    expected = np.stack([to_model_input(np.asarray(Image.open(f))) for f in files.files[:4]])
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), files.labels[:4])


def test_train_leaves_unreadable_files_out_and_says_so(tmp_path: Path) -> None:
    """One bad file in Train (seen stopping train.py mid-epoch with a TensorFlow traceback) and one
    in Validation: both are left out before the first step, named on stderr and in
    <member>_unreadable.csv, the member is still trained and the exit code is 1."""
    view = make_phantom_tree(tmp_path / "tree", 20, 32, seed=3)
    (view / "Train" / "Negative" / "zz_bad.png").write_bytes(b"not an image")
    (view / "Validation" / "Positive" / "zz_empty.png").write_bytes(b"")
    output = tmp_path / "out"
    flags = ("-m", "ResNet-50", "-s", "32", "--epochs", "1", "--batch-size", "4", "-w", "none")
    done = run_script("train.py", *flags, "-p", view, "-o", output, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "zz_bad.png" in done.stderr and "zz_empty.png" in done.stderr
    stem = "ResNet50_32_up_uncrop"
    assert (output / f"{stem}.h5").is_file()
    listed = (output / f"{stem}_unreadable.csv").read_text(encoding="utf-8").splitlines()
    assert listed[0] == "split,Filenames,error"
    assert [line.split(",")[:2] for line in listed[1:]] == [
        ["Train", "Negative/zz_bad.png"],
        ["Validation", "Positive/zz_empty.png"],
    ]
    config = json.loads((output / f"{stem}_config.json").read_text(encoding="utf-8"))
    good = len(list((view / "Train").rglob("*.png"))) - 1
    assert config["train_images"] == good
    # a rerun finds the member finished and still reports the left-out files
    again = run_script("train.py", *flags, "-p", view, "-o", output, timeout=900)
    assert again.returncode == 1, again.stderr[-3000:]


def test_augmentation_is_seeded_and_changes_images() -> None:
    import tensorflow as tf

    from deepcovidxr.data.tfdata import Augmentation, augment

    rng = np.random.default_rng(0)
    batch = tf.constant(rng.uniform(0, 255, (6, 48, 48, 1)).astype("float32"))
    a = augment(batch, tf.constant([1, 2]))
    b = augment(batch, tf.constant([1, 2]))
    c = augment(batch, tf.constant([3, 4]))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    assert float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255
    identity = Augmentation(rotation=0, shift=0, zoom=0, brightness=(1.0, 1.0), horizontal_flip=False)
    np.testing.assert_allclose(augment(batch, tf.constant([5, 6]), identity).numpy(), batch.numpy(), atol=1e-3)
    flip_only = Augmentation(rotation=0, shift=0, zoom=0, brightness=(1.0, 1.0), horizontal_flip=True)
    flipped = augment(batch, tf.constant([7, 8]), flip_only).numpy()
    for out, original in zip(flipped, batch.numpy(), strict=True):
        assert np.allclose(out, original, atol=1e-3) or np.allclose(out, original[:, ::-1], atol=1e-3)


def test_oversampling_balances_classes() -> None:
    from deepcovidxr.data.tfdata import SplitFiles, make_dataset

    tmp = Path(__import__("tempfile").mkdtemp())
    files = []
    for i in range(20):
        path = tmp / f"{i}.png"
        Image.fromarray(np.full((32, 32), i * 10, np.uint8)).save(path)
        files.append(str(path))
    labels = np.array([1.0] * 4 + [0.0] * 16, np.float32)
    ds = make_dataset(SplitFiles(files, labels), 32, 20, training=True, seed=0, oversample=True, augmentation=None)
    drawn = np.concatenate([y.numpy() for _, y in ds.repeat(10)])
    assert len(drawn) == 200 and 0.4 < drawn.mean() < 0.6


def test_hyperparameter_files_round_trip_and_precedence(tmp_path: Path) -> None:
    chosen = hyperparams.Hyperparameters(dropout_rate=0.1, learning_rate=3e-4, momentum=0.5)
    json_path, pickle_path = hyperparams.save(chosen, tmp_path)
    assert hyperparams.load(json_path) == chosen == hyperparams.load(pickle_path)
    assert pickle.loads(pickle_path.read_bytes()) == {"dropout_rate": 0.1, "learning_rate": 3e-4, "momentum": 0.5}
    assert hyperparams.load(None) == hyperparams.Hyperparameters(0.3, 1e-3, 0.9)
    assert hyperparams.load(json_path).with_overrides(learning_rate=0.05, momentum=None).learning_rate == 0.05
    with pytest.raises(ValueError, match="momentum"):
        hyperparams.Hyperparameters(momentum=1.5)


def test_original_numpy_pickle_loads_but_code_does_not(tmp_path: Path) -> None:
    original = tmp_path / "hyperparameters.pickle"
    original.write_bytes(pickle.dumps({"dropout_rate": np.float64(0.2), "learning_rate": 0.01, "momentum": 0.9}))
    assert hyperparams.load(original).dropout_rate == pytest.approx(0.2)

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, ("echo pwned",))

    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="not a safe data-only pickle"):
        safe_pickle.load(evil)


def test_crop_mode_is_inferred_from_the_path(tmp_path: Path) -> None:
    from deepcovidxr.contract.layout import infer_crop

    assert infer_crop(tmp_path / "224" / "crop", None) is CropMode.CROP
    assert infer_crop(tmp_path / "224" / "uncrop", None) is CropMode.UNCROP
    assert infer_crop(tmp_path / "x", "crop") is CropMode.CROP
    with pytest.raises(ValueError, match="--crop"):
        infer_crop(tmp_path / "elsewhere", None)


def test_tuner_writes_both_hyperparameter_files(small_tree: Path, tmp_path: Path) -> None:
    done = run_script(
        "tuner.py",
        "-m",
        "ResNet-50",
        "-s",
        "64",
        "-p",
        small_tree,
        "-o",
        tmp_path,
        "--max-trials",
        "2",
        "--epochs",
        "1",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "8",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "tuner" / "best_models_and_params" / "ResNet50_64_up_uncrop" / "model_params"
    values = json.loads((folder / "hyperparameters.json").read_text(encoding="utf-8"))
    assert set(values) == {"dropout_rate", "learning_rate", "momentum"}
    assert (
        0 <= values["dropout_rate"] <= 0.5 and 1e-5 <= values["learning_rate"] <= 0.1 and 0 <= values["momentum"] <= 0.9
    )
    assert pickle.loads((folder / "hyperparameters.pickle").read_bytes()) == values
    assert (tmp_path / "tuner" / "initial_cps" / "ResNet50_64_up_uncrop.h5").is_file()
    trials = (folder.parent / "trials.csv").read_text(encoding="utf-8").splitlines()
    assert trials[0] == "trial,dropout_rate,learning_rate,momentum,val_auc" and len(trials) == 3
    assert done.stdout.strip().endswith("hyperparameters.json")
    # TensorBoard's HParams dashboard: every trial's log dir holds its hyperparameters, and its
    # validation AUC curve beside them; the experiment names validation AUC as the metric
    logs = tmp_path / "tuner" / "tensorboard" / "ResNet50_64_up_uncrop"
    sessions = {trial: _hparams_records(logs / trial) for trial in _trial_ids(trials)}
    for trial, records in sessions.items():
        starts = [r.session_start_info for r in records if r.HasField("session_start_info")]
        assert len(starts) == 1, trial
        assert set(starts[0].hparams) == {"dropout_rate", "learning_rate", "momentum"}
        row = next(line.split(",") for line in trials[1:] if line.split(",")[0] == trial)
        assert starts[0].hparams["learning_rate"].number_value == pytest.approx(float(row[2]))
        assert "epoch_auc" in _scalar_tags(logs / trial)
    experiment = [r.experiment for r in _hparams_records(logs, recursive=False) if r.HasField("experiment")]
    assert len(experiment) == 1
    assert {m.name.tag for m in experiment[0].metric_infos} == {"epoch_auc"}
    assert {h.name for h in experiment[0].hparam_infos} == {"dropout_rate", "learning_rate", "momentum"}


def _trial_ids(trials_csv: list[str]) -> list[str]:
    return [line.split(",")[0] for line in trials_csv[1:]]


def _events(folder: Path, recursive: bool = True):
    import tensorflow as tf

    pattern = "**/events.out.tfevents.*" if recursive else "events.out.tfevents.*"
    for path in sorted(folder.glob(pattern)):
        yield from tf.compat.v1.train.summary_iterator(str(path))


def _hparams_records(folder: Path, recursive: bool = True) -> list:
    from tensorboard.plugins.hparams import plugin_data_pb2

    records = []
    for event in _events(folder, recursive):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                records.append(plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content))
    return records


def _scalar_tags(folder: Path) -> set[str]:
    return {value.tag for event in _events(folder) for value in event.summary.value}


def test_pretrain_on_the_real_nih_sample_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    from tests.support.helpers import shared

    done = run_script(
        "pretrain.py",
        "-m",
        "ResNet-50",
        "-s",
        "64",
        "-p",
        shared("nih"),
        "-o",
        tmp_path,
        "-w",
        "none",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "nih_weight_ResNet-50_64.h5"
    auroc = (tmp_path / "nih_auroc_ResNet-50_64.csv").read_text(encoding="utf-8").splitlines()
    assert auroc[0] == "finding,auroc,positives,negatives" and len(auroc) == 14 + 2 and auroc[-1].startswith("mean")
    from deepcovidxr.networks.members import build_member

    member = build_member("ResNet-50", 64, weights=checkpoint)  # 14-unit head swapped for 1 unit
    assert member.output_shape == (None, 1)


def test_plateau_rule_waits_for_the_warmup(tmp_path: Path) -> None:
    """From random weights the first epochs' validation AUC is noise: the learning rate must not
    be cut (nor training stopped) before the warm-up ends, and must be afterwards."""
    import keras

    from deepcovidxr.contract.layout import Member
    from deepcovidxr.training.schedule import EpochRule
    from deepcovidxr.training.trainer import RunPaths, phase_callbacks

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    paths = RunPaths(tmp_path, Member("ResNet-50", 224, CropMode.CROP))
    schedule = phase_callbacks("final", paths, None, {}, EpochRule(patience=10, warmup=6))[0]
    schedule.set_model(model)
    schedule.on_train_begin()
    rates, stopped = [], []
    for epoch in range(17):
        logs = {"val_auc": 0.5, "loss": 1.0}  # never improves
        schedule.on_epoch_end(epoch, logs)
        rates.append(logs["learning_rate"])
        stopped.append(bool(model.stop_training))
    assert rates[:10] == pytest.approx([0.1] * 10)  # epochs 0-5 ignored; 6 sets the best; 9 cuts
    assert rates[10] == pytest.approx(0.01) and rates[-1] < 0.01
    assert stopped.index(True) == 16  # patience 10 counted from epoch 6
