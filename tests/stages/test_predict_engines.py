"""predict.py on every engine (issue 12): the same predictions.csv columns, engine scores equal
Keras, clear errors for a missing runtime or a CPU without bf16, nothing opened when there is
nothing to score, no padding of a short last batch, multi-class columns. The members are tiny
stand-ins (a convolution, pooling and a head at the real 224 px view size) loaded in place of the
member files, so each export takes seconds; the U-Net is the shipped one, exported once per module."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.config.inference_stages import PredictConfig
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import UsageError
from deepcovidxr.inference import prediction, streaming
from deepcovidxr.runtime import exports, hardware, load
from deepcovidxr.scoring.task import task_for
from deepcovidxr.stages import predict as predict_stage
from tests.support.helpers import shared

MEMBERS = ("dense_224_crop", "res_224_uncrop")  # canonical order
CLASSES = ("COVID", "Normal", "Pneumonia")


_SEEDING = threading.Lock()


def tiny_member(units: int, seed: int):
    """What a member is to the engines: (224, 224, 3) -> (units,) sigmoid or softmax. Under a lock:
    the loader opens members in parallel threads, and the seed is process-global."""
    with _SEEDING:
        return _tiny_member(units, seed)


def _tiny_member(units: int, seed: int):
    import keras

    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(4, 7, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")(x)
    model = keras.Model(inputs, outputs)
    # Weights from our own generator: Keras' global seed is shared with whatever else builds
    # layers at the same time (the U-Net on the main thread while members open in the background).
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def _weights_folder(root: Path, classes: tuple[str, ...] | None = None) -> Path:
    """Member files (their bytes key the cache; the weights come from tiny_member) and an combination."""
    root.mkdir(parents=True)
    for index, name in enumerate(MEMBERS):
        path = root / Member.parse(name).legacy_filename
        path.write_bytes(f"stand-in member {index}".encode())
        if classes:
            path.with_suffix(".json").write_text(json.dumps({"classes": list(classes)}), encoding="utf-8")
    weights = {MEMBERS[0]: 0.25, MEMBERS[1]: 0.75}
    payload = {"rule": "weighted", "classes": list(classes), "weights": weights} if classes else weights
    (root / "ensemble_weights.json").write_text(json.dumps(payload), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("engines")
    images = root / "in"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    for index, source in enumerate(sorted(shared("cxr", "Negative").glob("nih_*.png"))[:2]):
        shutil.copy(source, images / f"n{index}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return {"root": root, "images": images, "weights": _weights_folder(root / "weights"), "cache": root / "cache"}


@pytest.fixture
def tiny_members(monkeypatch: pytest.MonkeyPatch):
    """exports.load_keras builds the tiny stand-in of each member (1 unit, or 3 with a classes sidecar)."""
    from deepcovidxr.contract import classes as class_names

    def load(member: Member, path: Path):
        units = task_for(class_names.member_classes(path)).units
        return tiny_member(units, MEMBERS.index(member.short_name))

    monkeypatch.setattr(exports, "load_keras", load)


def _config(world, output: Path, **overrides) -> PredictConfig:
    values = {
        "weights": world["weights"],
        "input": world["images"],
        "output": output,
        "ensemble_weights": world["weights"] / "ensemble_weights.json",
        "batch_size": 2,
        "engine_cache": world["cache"],
        "precision": "fp32",
        "workers": 2,
        **overrides,
    }
    return PredictConfig(**values)


def _read(path: Path) -> tuple[list[str], dict[str, dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), {row["Filenames"]: row for row in reader}


@pytest.fixture(scope="module")
def engine_runs(world, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """predict's stage on each engine at fp32 (and OpenVINO bf16 where the CPU has it)."""
    from deepcovidxr.contract import classes as class_names

    patch = pytest.MonkeyPatch()
    patch.setattr(
        exports,
        "load_keras",
        lambda member, path: tiny_member(
            task_for(class_names.member_classes(path)).units, MEMBERS.index(member.short_name)
        ),
    )
    cases = [("keras", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    if hardware.cpu_supports_bf16():
        cases.append(("openvino", "bf16"))
    runs = {}
    try:
        for engine, precision in cases:
            out = tmp_path_factory.mktemp(f"{engine}_{precision}")
            predict_stage.run(_config(world, out, engine=engine, precision=precision))
            runs[(engine, precision)] = (
                *_read(out / "predictions.csv"),
                json.loads((out / "predictions_info.json").read_text(encoding="utf-8")),
            )
    finally:
        patch.undo()
    return runs


def test_every_engine_writes_the_same_columns(engine_runs) -> None:
    headers = {case: header for case, (header, _, _) in engine_runs.items()}
    reference = headers[("keras", "fp32")]
    assert reference[:6] == prediction.PREDICTION_COLUMNS
    assert reference[6:] == [*MEMBERS, *prediction.TRUST_COLUMNS]
    assert all(header == reference for header in headers.values()), headers
    for case, (_, rows, info) in engine_runs.items():
        assert set(rows) == {"a.png", "n0.png", "n1.png", "broken.png"}
        assert rows["broken.png"]["crop_status"] == "error" and rows["broken.png"]["Scores"] == ""
        assert (info["engine"], info["precision"]) == case


def test_engine_scores_equal_keras(engine_runs) -> None:
    _, keras_rows, _ = engine_runs[("keras", "fp32")]
    for (engine, precision), (_, rows, _) in engine_runs.items():
        tolerance = 1e-4 if precision == "fp32" else 2e-2
        for name, row in rows.items():
            if name == "broken.png":
                continue
            for column in ("Scores", *MEMBERS):
                difference = abs(float(row[column]) - float(keras_rows[name][column]))
                assert difference <= tolerance, (engine, precision, name, column, difference)
            assert row["crop_status"] == keras_rows[name]["crop_status"]


def test_warm_cache_imports_no_tensorflow(engine_runs, world, tmp_path: Path) -> None:
    """After the exports exist, an OpenVINO run needs no TensorFlow (its import is ~10 s of the 30)."""
    import subprocess
    import textwrap

    weights, images, cache, out = (
        str(p) for p in (world["weights"], world["images"], world["cache"], tmp_path / "out")
    )
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from deepcovidxr.config.inference_stages import PredictConfig
        from deepcovidxr.stages import predict
        config = PredictConfig(weights=Path({weights!r}), input=Path({images!r}), output=Path({out!r}),
            ensemble_weights=Path({weights!r}) / "ensemble_weights.json", engine_cache=Path({cache!r}),
            engine="openvino", precision="fp32", batch_size=2)
        predict.run(config)
        print("TF", "tensorflow" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TF False" in done.stdout
    _, rows = _read(tmp_path / "out" / "predictions.csv")
    assert rows["a.png"]["Scores"] == engine_runs[("openvino", "fp32")][1]["a.png"]["Scores"]


class Spy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("nothing should have been opened")


@pytest.mark.parametrize("contents", ["empty", "all broken"])
def test_nothing_to_score_opens_nothing(contents, world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "in"
    images.mkdir()
    if contents == "all broken":
        (images / "x.png").write_bytes(b"not an image")
    member, unet = Spy(), Spy()
    monkeypatch.setattr(prediction, "member_opener", lambda *a, **k: member)
    monkeypatch.setattr("deepcovidxr.lungs.cropper.LungCropper", unet)
    predict_stage.run(_config(world, tmp_path / "out", input=images, engine="keras"))
    header, rows = _read(tmp_path / "out" / "predictions.csv")
    assert header == prediction.PREDICTION_COLUMNS + list(MEMBERS) + prediction.TRUST_COLUMNS
    assert member.calls == 0 and unet.calls == 0
    assert (rows == {}) if contents == "empty" else (rows["x.png"]["crop_status"] == "error")


class ShapeRunner:
    """An engine runner that records the batches it sees."""

    engine, precision, output_tail, units = "fake", "fp32", (1,), 1

    def __init__(self) -> None:
        self.shapes: list[tuple] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        return batch.mean(axis=(1, 2, 3)).astype(np.float32)


def test_short_last_batch_is_not_padded() -> None:
    runner = ShapeRunner()
    images = np.random.default_rng(0).integers(0, 255, (5, 224, 224), dtype=np.uint8)
    scores = streaming.member_scores(runner, images, 4)
    assert runner.shapes == [(4, 224, 224, 3), (1, 224, 224, 3)]
    one = ShapeRunner()
    assert np.allclose(streaming.member_scores(one, images[4:], 4), scores[4:])
    assert one.shapes == [(1, 224, 224, 3)]


def test_keras_member_is_not_padded_either() -> None:
    model = tiny_member(1, 0)
    images = np.random.default_rng(0).integers(0, 255, (3, 224, 224), dtype=np.uint8)
    shapes: list = []
    scores = streaming.member_scores(model, images, 2, shapes=shapes)
    assert shapes == [(2, 224, 224, 3), (1, 224, 224, 3)] and scores.shape == (3,)
    assert np.allclose(streaming.member_scores(model, images[2:], 2), scores[2:], atol=1e-6)


def test_runners_return_one_column_per_unit(world, tiny_members, tmp_path: Path) -> None:
    """(n,) for a one-unit head, (n, K) for a K-unit head, on every engine alike."""
    folder = _weights_folder(tmp_path / "multi", CLASSES)
    member = Member.parse(MEMBERS[0])
    path = folder / member.legacy_filename
    batch = np.random.default_rng(1).normal(size=(3, 224, 224, 3)).astype(np.float32)
    reference = load.open_member(member, path, "keras").predict(batch)
    assert reference.shape == (3, len(CLASSES))
    for engine in ("onnxruntime", "openvino"):
        runner = load.open_member(member, path, engine, cache_dir=tmp_path / "cache")
        assert runner.units == len(CLASSES)
        assert np.max(np.abs(runner.predict(batch) - reference)) <= 1e-5
        assert runner.predict(batch[:0]).shape == (0, len(CLASSES))


def test_multiclass_ensemble_writes_class_columns(world, tiny_members, tmp_path: Path) -> None:
    weights = _weights_folder(tmp_path / "multi", CLASSES)
    out = tmp_path / "out"
    predict_stage.run(
        _config(world, out, weights=weights, ensemble_weights=weights / "ensemble_weights.json", engine="keras")
    )
    header, rows = _read(out / "predictions.csv")
    probabilities = [f"p_{c}" for c in CLASSES]
    assert header[:5] == ["Filenames", *probabilities, "Predictions"]
    assert header[5:7] == ["crop_status", "error"]
    assert header[7:] == [
        *(f"{m}.{p}" for m in MEMBERS for p in probabilities),  # as evaluate.py's member_probabilities.csv
        *("Probability", "uncertainty", "input_check"),
    ]
    row = rows["a.png"]
    values = [float(row[p]) for p in probabilities]
    assert abs(sum(values) - 1) < 1e-4 and row["Predictions"] == CLASSES[int(np.argmax(values))]
    assert row["Probability"] == ""  # no calibration stored with these weights
    # With a temperature stored (combination.py's multi-class calibration), Probability is the
    # temperature-scaled probability of the predicted class.
    from deepcovidxr.scoring import weights_file
    from deepcovidxr.scoring.multiclass_calibration import MulticlassFit

    fit = MulticlassFit(2.0, tuple(CLASSES), 10, {})
    calibrated = tmp_path / "calibrated"
    calibrated.mkdir()
    stored = weights_file.load_weights(weights / "ensemble_weights.json")
    weights_file.save_weights(stored, calibrated, classes=tuple(CLASSES), calibration=fit.to_dict())
    predict_stage.run(
        _config(
            world,
            tmp_path / "out2",
            weights=weights,
            ensemble_weights=calibrated / "ensemble_weights.json",
            engine="keras",
        )
    )
    _, again = _read(tmp_path / "out2" / "predictions.csv")
    for name, row in rows.items():
        if row["Predictions"]:
            p = np.array([float(row[c]) for c in probabilities])
            expected = np.sqrt(p).max() / np.sqrt(p).sum()  # softmax(log p / 2)
            assert float(again[name]["Probability"]) == pytest.approx(expected, abs=1e-5)


def test_missing_runtime_is_a_clear_error_before_any_work(world, tmp_path: Path, monkeypatch) -> None:
    unet = Spy()
    monkeypatch.setattr("deepcovidxr.lungs.cropper.LungCropper", unet)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import now raises ImportError
    with pytest.raises(UsageError, match=r"pip install openvino.*or use onnxruntime"):
        predict_stage.run(_config(world, tmp_path / "out", engine="openvino"))
    assert unet.calls == 0 and not (tmp_path / "out" / "predictions.csv").exists()


def test_bf16_without_cpu_support_is_a_clear_error(world, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda core=None: False)
    with pytest.raises(UsageError, match=r"avx512_bf16 or AMX.*use precision fp32"):
        predict_stage.run(_config(world, tmp_path / "out", engine="openvino", precision="bf16"))
    # auto is the documented default, fp32 on such a CPU (not a fallback from an explicit bf16)
    from deepcovidxr.runtime.precision import for_engine

    assert for_engine("auto", "openvino").engine_precision == "fp32"
    assert for_engine("auto", "keras").engine_precision == "fp32"


def test_precision_spellings_and_calibration_rules(world, tmp_path: Path) -> None:
    from deepcovidxr.config import precision

    with pytest.warns(DeprecationWarning):  # the old spellings still read, as what they meant here
        spelled = [precision.spelled(s, precision.ENGINE) for s in ("float32", "mixed", "bfloat16", "auto", "int8")]
    assert spelled == ["fp32", "bf16", "bf16", "auto", "int8"]
    with pytest.raises(UsageError, match="overlaps the images being predicted"):
        _config(world, tmp_path / "out", calibration=world["images"])
    inner = world["images"] / "calib"
    inner.mkdir(exist_ok=True)
    try:
        with pytest.raises(UsageError, match="overlaps"):
            _config(world, tmp_path / "out", calibration=inner)
    finally:
        inner.rmdir()
    with pytest.raises(UsageError, match="needs --calibration"):
        predict_stage.run(_config(world, tmp_path / "out", engine="onnxruntime", precision="int8"))
    with pytest.raises(UsageError, match="engine keras runs fp32 only"):
        predict_stage.run(_config(world, tmp_path / "out", engine="keras", precision="bf16"))


def test_int8_calibration_from_a_tree_takes_every_class(tmp_path: Path) -> None:
    """Regression: the first 64 files in sorted order were all Negative in any split over 64
    images, so int8 ranges were fitted on one class only. Now the classes take turns."""
    from deepcovidxr.inference.ensemble import CALIBRATION_IMAGES, calibration_files

    folder = tmp_path / "Validation"
    files = [folder / "Negative" / f"n{i:03d}.png" for i in range(90)]
    files += [folder / "Positive" / f"p{i:03d}.png" for i in range(10)]
    chosen = calibration_files(files[::-1], folder)
    assert len(chosen) == CALIBRATION_IMAGES
    assert sum(p.parent.name == "Positive" for p in chosen) == 10  # all of the smaller class
    assert chosen[:4] == [files[0], files[90], files[1], files[91]]
    assert calibration_files(files[:5], folder) == files[:5]


def test_int8_calibration_key_covers_the_unet(tmp_path: Path) -> None:
    """Regression: the int8 calibration digest left out the U-Net that crops the calibration
    images, so quantised crop members calibrated under another U-Net were reused from the cache."""
    from deepcovidxr.inference.prediction import folder_calibration

    images = tmp_path / "calibration"
    images.mkdir()
    (images / "a.png").write_bytes(b"any bytes: nothing is decoded until an export needs them")
    first, second = tmp_path / "u1.weights.h5", tmp_path / "u2.weights.h5"
    first.write_bytes(b"one U-Net")
    second.write_bytes(b"another U-Net")

    def key(unet: tuple[Path, str]) -> str:
        return folder_calibration(images, [], lambda: None, 1, unet).digest

    assert key((first, "fp32")) == key((first, "fp32"))
    assert key((first, "fp32")) != key((second, "fp32"))
    assert key((first, "fp32")) != key((first, "bf16"))


def test_a_cold_cache_shows_its_one_time_export(world, tmp_path: Path, capsys, monkeypatch) -> None:
    """The first run on a cold cache exports every member before opening one, under a progress bar
    that names the engine and counts the members left; a warm run shows no such bar."""
    from deepcovidxr.contract import classes as class_names

    monkeypatch.setattr(
        exports,
        "load_keras",
        lambda member, path: tiny_member(
            task_for(class_names.member_classes(path)).units, MEMBERS.index(member.short_name)
        ),
    )
    cold = _config(world, tmp_path / "cold", engine="openvino", engine_cache=tmp_path / "cache")
    predict_stage.run(cold)
    err = capsys.readouterr().err
    assert "one-time openvino export" in err and "left" in err
    info = json.loads((tmp_path / "cold" / "predictions_info.json").read_text(encoding="utf-8"))
    assert info["timings"]["export_s"] > 0
    predict_stage.run(_config(world, tmp_path / "warm", engine="openvino", engine_cache=tmp_path / "cache"))
    assert "one-time" not in capsys.readouterr().err
