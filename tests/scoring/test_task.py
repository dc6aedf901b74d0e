"""deepcovidxr.scoring.task: the one place where the binary and the multi-class task differ. The
package asks the task and never which task it is (grepped here); where numbers are involved the
task's answers are checked against scikit-learn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve
from sklearn.preprocessing import label_binarize

from deepcovidxr.errors import UsageError
from deepcovidxr.scoring import calibration, metrics, multiclass_calibration
from deepcovidxr.scoring.task import POSITIVE, BinaryTask, MulticlassTask, task_for

PACKAGE = Path(__file__).resolve().parents[2] / "deepcovidxr"
BINARY = ("Negative", "Positive")
CLASSES = ("COVID-19", "Normal", "Pneumonia")
# Asking which task it is: the old predicate, a ``.binary`` flag, or comparing a class list with the
# binary pair (the contract's folder rule in classes.discover is the one allowed comparison).
TASK_BRANCH = re.compile(r"\bis_binary\b|\.binary\b|[!=]=\s*(?:class_names\.)?BINARY\b|\bBINARY\s*[!=]=")
ALLOWED = {("scoring/task.py", None), ("contract/classes.py", "reference != BINARY")}


def task_branches(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if not TASK_BRANCH.search(code):
                continue
            if (relative, None) in ALLOWED or any(relative == f and t and t in code for f, t in ALLOWED):
                continue
            found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_no_module_asks_which_task_it_is() -> None:
    assert task_branches(PACKAGE) == []


def test_the_branch_grep_sees_a_branch(tmp_path: Path) -> None:
    (tmp_path / "stage.py").write_text(
        "if chosen.binary:\n    pass\nflag = class_names.is_binary(classes)\n"
        "ok = classes == BINARY\n# .binary in a comment\n",
        encoding="utf-8",
    )
    assert [row.split(":")[1] for row in task_branches(tmp_path)] == ["1", "3", "4"]


def test_each_function_is_written_once() -> None:
    """youden_threshold and brier_score live in metrics only (calibration used to hold hand-written
    copies with the arguments the other way round)."""
    for name in ("youden_threshold", "brier_score"):
        assert hasattr(metrics, name)
        assert not hasattr(calibration, name) or getattr(calibration, name) is getattr(metrics, name)
        assert not hasattr(multiclass_calibration, name)


def test_task_for() -> None:
    assert isinstance(task_for(list(BINARY)), BinaryTask) and isinstance(task_for(CLASSES), MulticlassTask)
    for bad in (("A", "B"), ("Positive",)):
        with pytest.raises(UsageError):
            task_for(bad)


# ------------------------------------------------------------------------------------- the network


def test_head_loss_and_targets() -> None:
    binary, multi = task_for(BINARY), task_for(CLASSES)
    assert (binary.units, binary.activation, binary.loss) == (1, "sigmoid", "binary_crossentropy")
    assert (multi.units, multi.activation, multi.loss) == (3, "softmax", "categorical_crossentropy")
    labels = np.array([2, 0, 1, 1])
    # tf.data gathers the targets by class index: one-hot rows, or the 0/1 label itself.
    np.testing.assert_array_equal(multi.targets[labels], label_binarize(labels, classes=[0, 1, 2]))
    np.testing.assert_array_equal(binary.targets[np.array([1, 0, 1])], [1.0, 0.0, 1.0])
    assert binary.targets.dtype == multi.targets.dtype == np.float32
    assert dict(multi.keras_metrics)["AUC"] == {"name": "auc", "multi_label": True, "num_labels": 3}
    assert [name for name, _ in binary.keras_metrics] == ["BinaryAccuracy", "AUC", "Precision", "Recall"]


def test_member_scores_and_the_call() -> None:
    binary, multi = task_for(BINARY), task_for(CLASSES)
    outputs = np.array([[0.2], [0.5], [0.9]])
    scores = binary.member_scores(outputs)
    assert scores.shape == (3, *binary.score_shape)
    rows = binary.class_probabilities(scores)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    assert binary.predicted(rows).tolist() == [0, 1, 1]  # 0.5 is positive, as every stage cuts it
    assert binary.predicted(rows, threshold=0.6).tolist() == [0, 0, 1]
    assert binary.call(0.5) == (1, 0.5) and binary.call_names[1] == POSITIVE
    assert binary.cam_keys == ("negative", "positive")
    p = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert multi.member_scores(p).shape == (2, *multi.score_shape)
    assert multi.predicted(p).tolist() == np.argmax(p, axis=1).tolist()
    assert multi.call(p[0]) == (1, 0.5) and multi.call_names[1] == "Normal"


def test_predictions_csv_columns_and_cells() -> None:
    from deepcovidxr.inference import prediction

    binary, multi = task_for(BINARY), task_for(CLASSES)
    names = ["res_224_crop", "dense_331_uncrop"]
    assert prediction.columns(BINARY, names) == prediction.PREDICTION_COLUMNS + names + prediction.TRUST_COLUMNS
    assert binary.decision_cells(np.float64(0.25), 0.2) == [0.25, 1, POSITIVE]
    assert binary.decision_cells(np.float64(0.25), 0.5) == [0.25, 0, "COVID-19 Negative"]
    assert multi.decision_columns == ["p_COVID-19", "p_Normal", "p_Pneumonia", "Predictions"]
    assert multi.decision_cells(np.array([0.1, 0.3, 0.6]), None) == [0.1, 0.3, 0.6, "Pneumonia"]
    assert multi.member_columns(names[:1]) == [
        "res_224_crop.p_COVID-19",
        "res_224_crop.p_Normal",
        "res_224_crop.p_Pneumonia",
    ]
    assert binary.score_column("COVID-19 Positive") == "Scores" and multi.score_column("Normal") == "p_Normal"


def test_weights_json_records_classes_for_multiclass_only(tmp_path: Path) -> None:
    from deepcovidxr.scoring import weights_file

    weights = {"res_224_crop": 0.25, "dense_331_uncrop": 0.75}
    for classes, recorded in ((BINARY, None), (CLASSES, list(CLASSES))):
        _, path = weights_file.save_weights(weights, tmp_path / str(len(classes)), classes=classes)
        payload = json.loads(path.read_text(encoding="utf-8"))
        assert payload.get("classes") == recorded and next(iter(payload)) == "rule"
        assert task_for(classes).weights_fields() == ({} if recorded is None else {"classes": recorded})


# ----------------------------------------------------------------------------- numbers vs sklearn


def _binary_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(0, 1.2, n))))
    return y, s


def _multiclass_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(2 * z)
    return y, p / p.sum(axis=1, keepdims=True)


def test_auc_equals_sklearn() -> None:
    y, s = _binary_data()
    assert task_for(BINARY).auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-15)
    labels, p = _multiclass_data()
    expected = roc_auc_score(labels, p, multi_class="ovr", average="macro")
    assert task_for(CLASSES).auc(labels, p) == pytest.approx(expected, abs=1e-15)
    assert np.isnan(task_for(CLASSES).auc(labels[labels != 2], p[labels != 2]))
    assert np.isnan(task_for(BINARY).auc(np.ones(4), np.linspace(0, 1, 4)))


def test_binary_calibration_and_operating_points_against_sklearn() -> None:
    y, s = _binary_data()
    task = task_for(BINARY)
    fit = task.fit_calibration(y, s, "platt")
    assert fit.validation["brier_raw"] == pytest.approx(brier_score_loss(y, s), abs=1e-15)
    assert fit.validation["brier_calibrated"] == pytest.approx(brier_score_loss(y, fit.probability(s)), abs=1e-15)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    assert fit.operating_points["youden"] == thresholds[int(np.argmax(j))]
    sens90 = fit.operating_points["sens90"]
    assert np.mean(s[y == 1] >= sens90) >= 0.9 > np.mean(s[y == 1] > sens90)
    assert task.fit_calibration(y, s, "identity").probability(s).tolist() == s.tolist()
    again = task.stored_fit(json.loads(json.dumps(fit.to_dict())))
    assert again == fit and task.threshold("youden", again) == fit.operating_points["youden"]
    assert task.threshold("0.3", None) == 0.3
    with pytest.raises(UsageError, match="subset"):
        task.threshold("sens90", again, dropped="fitted for a subset")
    held_out = fit.held_out(y, s, n_boot=0)
    assert held_out["brier_raw"] == pytest.approx(brier_score_loss(y, s), abs=1e-15)
    assert not task_for(CLASSES).owns(fit.to_dict()) and task_for(CLASSES).stored_fit(fit.to_dict()) is None


def test_multiclass_temperature_against_sklearn() -> None:
    y, p = _multiclass_data()
    task = task_for(CLASSES)
    assert task.fit_calibration(y, p, "identity") is None
    fit = task.fit_calibration(y, p, "platt")  # any method but identity means the temperature
    scaled = fit.apply(p)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    assert (scaled.argmax(axis=1) == p.argmax(axis=1)).all()
    assert fit.validation["log_loss_raw"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert fit.validation["log_loss_calibrated"] == pytest.approx(log_loss(y, scaled), abs=1e-12)
    assert fit.validation["log_loss_calibrated"] <= fit.validation["log_loss_raw"]
    np.testing.assert_allclose(fit.probability(p), scaled.max(axis=1))
    assert task.stored_fit(fit.to_dict()).temperature == fit.temperature and task.threshold("youden", fit) is None
    assert not task_for(BINARY).owns(fit.to_dict())
    with pytest.raises(UsageError, match=r"rerun ensemble\.py"):
        task_for(("A", "B", "C")).stored_fit(fit.to_dict())


def test_uncertainty_is_the_weighted_spread() -> None:
    rng = np.random.default_rng(3)
    scores, weights = rng.random((5, 4)), np.array([0.1, 0.2, 0.3, 0.4])
    combined = scores @ weights
    expected = np.sqrt(((scores - combined[:, None]) ** 2) @ weights)
    np.testing.assert_allclose(task_for(BINARY).uncertainty(scores, weights), expected)
    variance = rng.random((5, 4)) * 0.01
    np.testing.assert_allclose(
        task_for(BINARY).uncertainty(scores, weights, variance), np.sqrt(expected**2 + variance @ weights)
    )
    rows = rng.dirichlet(np.ones(3), size=(5, 4))
    chosen = np.einsum("imc,m->ic", rows, weights).argmax(axis=1)
    picked = rows[np.arange(5), :, chosen]
    spread = np.sqrt(((picked - (picked @ weights)[:, None]) ** 2) @ weights)
    np.testing.assert_allclose(task_for(CLASSES).uncertainty(rows, weights), spread)


def test_counts_for_logs_and_sidecars() -> None:
    assert task_for(BINARY).describe_counts([100, 23]) == "123 images (23 positive)"
    assert task_for(BINARY).class_counts([1, 2], [3, 4]) == {}
    assert task_for(CLASSES).describe_counts([1, 2, 3]) == "6 images (COVID-19 1, Normal 2, Pneumonia 3)"
    assert task_for(CLASSES).class_counts([1, 2, 3], [4, 5, 6])["validation_counts"] == {
        "COVID-19": 4,
        "Normal": 5,
        "Pneumonia": 6,
    }
