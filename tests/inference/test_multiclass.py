"""Multi-class ensemble and evaluation (issue 11): metrics against scikit-learn, the combination
rules on hand-made arrays, the weight search and weight files, and evaluate.py / ensemble.py
through the stage layer on a tiny 3-class tree with untrained members."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from deepcovidxr.contract import atomic
from deepcovidxr.contract.layout import Member
from deepcovidxr.scoring import combination, metrics, weights_file

CLASSES = ("COVID", "Normal", "Pneumonia")


def _probabilities(n: int, k: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k))
    if labels is not None:
        logits[np.arange(n), labels] += 1.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- metrics


def test_multiclass_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = _probabilities(90, 3, 1, y)
    summary = metrics.multiclass_metrics(y, p, CLASSES, n_boot=300, seed=2)
    predicted = p.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=[0, 1, 2])
    aucs = roc_auc_score(y, p, multi_class="ovr", average=None)
    matrix = confusion_matrix(y, predicted, labels=[0, 1, 2])
    assert summary["confusion_matrix"] == matrix.tolist()
    assert summary["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    for k, name in enumerate(CLASSES):
        row = summary["per_class"][name]
        assert row["precision"] == pytest.approx(precision[k], abs=1e-12)  # not swapped with recall
        assert row["sensitivity"] == pytest.approx(recall[k], abs=1e-12)
        assert row["f1"] == pytest.approx(f1[k], abs=1e-12)
        assert row["support"] == support[k] == summary["counts"][name]
        assert row["auc"] == pytest.approx(aucs[k], abs=1e-12)
        # specificity: the recall of "not this class"
        rest = y != k
        assert row["specificity"] == pytest.approx(np.mean(predicted[rest] != k), abs=1e-12)
    for average in ("macro", "weighted"):
        p_, r_, f_, _ = precision_recall_fscore_support(y, predicted, average=average)
        assert summary[average]["precision"] == pytest.approx(p_, abs=1e-12)
        assert summary[average]["sensitivity"] == pytest.approx(r_, abs=1e-12)
        assert summary[average]["f1"] == pytest.approx(f_, abs=1e-12)
        assert summary[average]["auc"] == pytest.approx(
            roc_auc_score(y, p, multi_class="ovr", average=average), abs=1e-12
        )
    low, high = summary["macro_auc_ci95"]
    assert low < summary["macro"]["auc"] < high
    # seeded: the same interval again, another with another seed
    assert metrics.multiclass_metrics(y, p, CLASSES, n_boot=300, seed=2)["macro_auc_ci95"] == [low, high]
    assert metrics.multiclass_metrics(y, p, CLASSES, n_boot=300, seed=3)["macro_auc_ci95"] != [low, high]
    json.dumps(summary)  # plain values only


def test_multiclass_metrics_with_a_never_predicted_class_equal_scikit_learn_and_say_undefined(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Members that never call a class (common after a short run on real films): its precision
    has no denominator. The figures are scikit-learn's (0 by default, so a held-out comparison
    with scikit-learn agrees), and the class's ``undefined`` list plus a warning say which 0s are
    undefined rather than measured."""
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning

    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.tile([0.6, 0.3, 0.1], (6, 1))  # everything called class 0: classes 1 and 2 never predicted
    p[0] = [0.5, 0.4, 0.1]  # distinct probabilities, so the AUCs are defined
    with caplog.at_level("WARNING", logger="deepcovidxr.scoring.metrics"):
        summary = metrics.multiclass_metrics(y, p, CLASSES, n_boot=0)
    predicted = p.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, labels=[0, 1, 2])
        averages = {a: precision_recall_fscore_support(y, predicted, average=a) for a in ("macro", "weighted")}
    for k, name in enumerate(CLASSES):
        row = summary["per_class"][name]
        assert [row["precision"], row["sensitivity"], row["f1"]] == pytest.approx([precision[k], recall[k], f1[k]])
    for average, (p_, r_, f_, _) in averages.items():
        assert [summary[average][k] for k in ("precision", "sensitivity", "f1")] == pytest.approx([p_, r_, f_])
    assert summary["per_class"]["Normal"]["precision"] == 0.0
    assert summary["per_class"]["Normal"]["undefined"] == ["precision"]
    assert summary["per_class"]["Pneumonia"]["undefined"] == ["precision"]
    assert summary["per_class"]["COVID"]["undefined"] == []
    assert "Normal: precision undefined (never predicted)" in caplog.text
    with pytest.raises(ValueError, match="class indices"):
        metrics.multiclass_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3), CLASSES)


def test_undefined_figures_are_null_in_strict_json(tmp_path: Path) -> None:
    """An undefined figure (a class absent from the split has no AUC; no bootstrap interval) must
    be null in metrics.json, not a bare NaN that jq, JavaScript's JSON.parse and other strict
    readers reject (seen in a 3-class run)."""
    y = np.array([0, 0, 0, 2, 2, 2])  # no Normal case
    p = np.tile([0.6, 0.3, 0.1], (6, 1))
    target = tmp_path / "metrics.json"
    atomic.write_json(target, metrics.multiclass_metrics(y, p, CLASSES, n_boot=0) | {"inf": [np.inf, np.float32(1.5)]})
    text = target.read_text(encoding="utf-8")
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert strict["per_class"]["Normal"]["auc"] is None
    assert strict["macro"]["auc"] is None
    assert strict["macro_auc_ci95"] == [None, None]
    assert strict["per_class"]["Normal"]["sensitivity"] == 0.0
    assert strict["per_class"]["Normal"]["undefined"] == ["sensitivity", "precision", "f1"]
    assert strict["inf"] == [None, 1.5]


# ------------------------------------------------------------------------------------------ combining

# 2 images, 3 members, 3 classes
SCORES3 = np.array(
    [
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]],
        [[0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]],
    ]
)
WEIGHTS3 = np.array([0.5, 0.3, 0.2])


def test_multiclass_combine_rules_against_hand_computation() -> None:
    weighted = combination.combine_rule(SCORES3, "weighted", WEIGHTS3)
    np.testing.assert_allclose(
        weighted, [[0.35 + 0.03 + 0.1, 0.1 + 0.24 + 0.08, 0.05 + 0.03 + 0.02], [0.21, 0.21, 0.58]], atol=1e-12
    )
    # weights not summing to 1 still give a weighted mean (rows sum to 1)
    np.testing.assert_allclose(combination.combine_rule(SCORES3, "weighted", WEIGHTS3 * 4), weighted, atol=1e-12)
    np.testing.assert_allclose(
        combination.combine_rule(SCORES3, "mean"),
        [[1.3 / 3, 1.4 / 3, 0.3 / 3], [0.6 / 3, 0.6 / 3, 1.8 / 3]],
        atol=1e-12,
    )
    # vote: member argmaxes are (0, 1, 0) and (2, 2, 2)
    np.testing.assert_allclose(combination.combine_rule(SCORES3, "vote"), [[2 / 3, 1 / 3, 0], [0, 0, 1]], atol=1e-12)
    # max: per-class max (0.7, 0.8, 0.1) and (0.3, 0.3, 0.8), renormalised
    np.testing.assert_allclose(
        combination.combine_rule(SCORES3, "max"), [[0.7 / 1.6, 0.8 / 1.6, 0.1 / 1.6], [0.3 / 1.4, 0.3 / 1.4, 0.8 / 1.4]]
    )
    for method in weights_file.METHODS:
        combined = combination.combine_rule(SCORES3, method, WEIGHTS3)
        assert combined.shape == (2, 3)
        np.testing.assert_allclose(combined.sum(axis=1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        combination.combine_rule(SCORES3, "weighted", WEIGHTS3[:2])
    with pytest.raises(ValueError, match="classes"):
        combination.combine_rule(np.zeros((2, 3, 3, 1)), "mean")


def test_multiclass_search_maximises_macro_auc_seeded() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    scores = np.stack([_probabilities(120, 3, 10 + m) for m in range(4)], axis=1)
    scores[:, 2, :] = _probabilities(120, 3, 99, y)  # only member 2 knows anything
    result = combination.dirichlet_search(scores, y, draws=500, seed=3)
    assert result.weights.shape == (4,) and result.weights.sum() == pytest.approx(1.0)
    assert int(np.argmax(result.weights)) == 2
    combined = combination.combine(scores, result.weights)
    assert result.auc == pytest.approx(roc_auc_score(y, combined, multi_class="ovr"), abs=1e-12)
    assert result.auc >= max(roc_auc_score(y, scores[:, m, :], multi_class="ovr") for m in range(4)) - 0.02
    again = combination.dirichlet_search(scores, y, draws=500, seed=3)
    np.testing.assert_array_equal(again.weights, result.weights)
    assert combination.macro_ovr_auc(y, combined) == pytest.approx(result.auc, abs=1e-12)
    with pytest.raises(ValueError, match="every class"):
        combination.dirichlet_search(scores[y != 1], y[y != 1], draws=10)


def test_weights_json_records_the_classes_and_binary_files_stay_as_before(tmp_path: Path) -> None:
    weights = {"res_224_uncrop": 0.25, "res_224_crop": 0.75}
    _, json_path = weights_file.save_weights(weights, tmp_path / "multi", rule="vote", classes=CLASSES)
    payload = json.loads(json_path.read_text(encoding="utf-8"))
    assert payload["classes"] == list(CLASSES) and payload["rule"] == "vote"
    assert weights_file.load_classes(json_path) == CLASSES
    assert weights_file.load_classes(json_path.with_name("ensemble_weights.pickle")) == CLASSES
    assert weights_file.load_weights(json_path) == pytest.approx(weights)
    _, binary = weights_file.save_weights(weights, tmp_path / "binary", classes=("Negative", "Positive"))
    _, plain = weights_file.save_weights(weights, tmp_path / "plain")
    assert binary.read_bytes() == plain.read_bytes()
    assert list(json.loads(plain.read_text(encoding="utf-8"))) == ["rule", "weights"]
    assert weights_file.load_classes(plain) is None  # says nothing: the members' sidecars decide (issue 19)


# -------------------------------------------------------------------------------------- the stages

MEMBERS = ("res_224_uncrop", "res_224_crop")
PER_CLASS = {"Train": 1, "Validation": 3, "Test": 3}


def _write_tree(root: Path, classes: tuple[str, ...], seed: int) -> Path:
    """Random-noise images (with a class-dependent brightness) under both 224 views."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in PER_CLASS.items():
        for k, name in enumerate(classes):
            for index in range(count):
                image = np.clip(rng.normal(60 + 50 * k, 40, (224, 224)), 0, 255).astype(np.uint8)
                for view in ("uncrop", "crop"):
                    folder = root / "224" / view / split / name
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(folder / f"{name.lower()}_{index}.png")
    return root


def _save(folder: Path, name: str, classes: tuple[str, ...], seed: int) -> None:
    """An untrained member of ``classes`` (sigmoid head for the binary task, softmax otherwise)."""
    import keras

    from deepcovidxr.networks import members

    member = Member.parse(name)
    keras.utils.set_random_seed(seed)
    units, activation = members.head_for(classes)
    model = members.build_member(member.backbone, member.size, weights=None, outputs=units, activation=activation)
    members.save_member(model, folder / member.legacy_filename, member, classes=classes)


@pytest.fixture(scope="module")
def multiclass_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mc")
    tree = _write_tree(root / "tree", CLASSES, seed=1)
    weights = root / "weights"
    weights.mkdir()
    for index, name in enumerate(MEMBERS):
        _save(weights, name, CLASSES, seed=index)
    return tree, weights


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_ensemble_and_evaluate_on_a_three_class_tree(multiclass_setup, tmp_path: Path) -> None:
    from PIL import Image

    from deepcovidxr import cli

    tree, weights = multiclass_setup
    fit = tmp_path / "fit"
    code = cli.main(
        "ensemble",
        ["-w", str(weights), "-d", str(tree), "-o", str(fit), "--draws", "50", "--batch-size", "3", "--seed", "1"],
    )
    assert code == 0
    results = fit / "Ensemble_Results"
    weights_json = results / "ensemble_weights.json"
    payload = json.loads(weights_json.read_text(encoding="utf-8"))
    assert payload["classes"] == list(CLASSES) and payload["rule"] == "weighted"
    assert set(payload["weights"]) == set(MEMBERS) and sum(payload["weights"].values()) == pytest.approx(1.0)
    header, rows = _read(results / "ensemble_predictions.csv")
    assert header == ["Filenames", "Predictions", "Actual", "p_COVID", "p_Normal", "p_Pneumonia"]
    assert len(rows) == 3 * PER_CLASS["Test"]
    for row in rows:
        assert row["Actual"] == row["Filenames"].split("/")[0]
        probabilities = [float(row[f"p_{c}"]) for c in CLASSES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row["Predictions"] == CLASSES[int(np.argmax(probabilities))]
    header, _ = _read(results / "individual_predictions.csv")
    assert header == ["Filenames", *(f"{m}.p_{c}" for m in MEMBERS for c in CLASSES)]
    header, member_rows = _read(results / "member_auc.csv")
    assert header == ["member", "test_macro_auc", "weight"] and len(member_rows) == 3
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    assert summary["classes"] == list(CLASSES) and summary["fitted_on"] == "Validation"
    # ensemble.py's default --calibrate: for several classes one temperature, fitted on Validation
    temperature = payload["calibration"]["calibration"]["temperature"]
    assert payload["calibration"]["calibration"]["method"] == "temperature" and temperature > 0
    assert payload["calibration"]["classes"] == list(CLASSES)
    assert summary["calibration"]["test"]["temperature"] == temperature
    assert set(summary["test"]["per_class"]) == set(CLASSES)
    for name in ("ROC_Curve.png", "ConfusionMatrix.png"):
        assert Image.open(results / name).size[0] >= 400

    out = tmp_path / "eval"
    code = cli.main(
        "evaluate",
        ["-w", str(weights), "-i", str(tree), "-o", str(out), "-e", str(weights_json), "--bootstrap", "100"],
    )
    assert code == 0
    header, rows = _read(out / "Results" / "predictions.csv")
    assert header == [
        *("Filenames", "Predictions", "Actual", "p_COVID", "p_Normal", "p_Pneumonia", "Probability", "uncertainty")
    ]
    probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    y = np.array([CLASSES.index(r["Actual"]) for r in rows])
    # Probability: the temperature-scaled probability of the predicted class, computed here by hand
    scaled = np.exp(np.log(np.clip(probabilities, 1e-12, 1)) / temperature)
    scaled /= scaled.sum(axis=1, keepdims=True)
    np.testing.assert_allclose([float(r["Probability"]) for r in rows], scaled.max(axis=1), atol=2e-5)
    assert [r["Predictions"] for r in rows] == [CLASSES[k] for k in probabilities.argmax(axis=1)]
    # the same Test predictions as the ensemble stage's report (same members, weights, rule)
    ensemble_rows = _read(results / "ensemble_predictions.csv")[1]
    np.testing.assert_allclose(probabilities, [[float(r[f"p_{c}"]) for c in CLASSES] for r in ensemble_rows], atol=2e-6)
    member_header, member_rows = _read(out / "Results" / "member_probabilities.csv")
    assert member_header == ["Filenames", *(f"{m}.p_{c}" for m in MEMBERS for c in CLASSES)]
    member_p = np.array([[float(r[c]) for c in member_header[1:]] for r in member_rows]).reshape(len(rows), 2, 3)
    w = np.array([payload["weights"][m] for m in MEMBERS])
    np.testing.assert_allclose(np.einsum("imk,m->ik", member_p, w), probabilities, atol=2e-6)
    reported = json.loads((out / "Results" / "metrics.json").read_text(encoding="utf-8"))
    assert reported["classes"] == list(CLASSES) and reported["ensemble_rule"] == "weighted"
    assert reported["macro"]["auc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"), abs=1e-4)
    assert reported["accuracy"] == pytest.approx(accuracy_score(y, probabilities.argmax(axis=1)))
    assert set(reported["member_macro_auc"]) == set(MEMBERS)
    held_out = reported["calibration"]
    assert held_out["temperature"] == temperature
    assert held_out["log_loss_raw"] == pytest.approx(log_loss(y, probabilities, labels=[0, 1, 2]), abs=1e-4)
    assert held_out["log_loss_calibrated"] == pytest.approx(log_loss(y, scaled, labels=[0, 1, 2]), abs=1e-4)
    for name in ("ROC_Curve.png", "ConfusionMatrix.png"):
        assert (out / "Results" / name).stat().st_size > 1000
    assert not (out / "Results" / "Calibration.png").exists()


@pytest.mark.parametrize("method", ["mean", "vote", "max"])
def test_fixed_rules_work_for_multiclass(multiclass_setup, tmp_path: Path, method: str) -> None:
    from deepcovidxr.config.inference_stages import EnsembleConfig
    from deepcovidxr.stages import ensemble as ensemble_stage

    tree, weights = multiclass_setup
    json_path = ensemble_stage.run(
        EnsembleConfig(weights=weights, data=tree, output=tmp_path, method=method, batch_size=3)
    ).report
    assert json.loads(json_path.read_text(encoding="utf-8"))["rule"] == method
    _, rows = _read(tmp_path / "Ensemble_Results" / "ensemble_predictions.csv")
    _, members = _read(tmp_path / "Ensemble_Results" / "individual_predictions.csv")
    member_p = np.array([[float(v) for k, v in r.items() if k != "Filenames"] for r in members]).reshape(-1, 2, 3)
    probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probabilities, combination.combine_rule(member_p, method), atol=2e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_multiclass_members_without_ensemble_weights_get_equal_weights(
    multiclass_setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train.py then evaluate.py, with no ensemble.py run between: the shipped weights are the
    authors' binary ensemble and cannot fit 3-class members, so every member found gets an equal
    weight (a warning says so and names ensemble.py) instead of a refusal."""
    from deepcovidxr import cli

    tree, weights = multiclass_setup
    out = tmp_path / "eval"
    code = cli.main("evaluate", ["-w", str(weights), "-i", str(tree), "-o", str(out), "--bootstrap", "50"])
    assert code == 0
    stderr = capsys.readouterr().err
    assert "equal weights over the 2 found (res_224_uncrop, res_224_crop)" in stderr
    assert "ensemble.py" in stderr and "of 24 members" not in stderr
    _, rows = _read(out / "Results" / "predictions.csv")
    member_header, member_rows = _read(out / "Results" / "member_probabilities.csv")
    member_p = np.array([[float(r[c]) for c in member_header[1:]] for r in member_rows]).reshape(len(rows), 2, 3)
    probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probabilities, member_p.mean(axis=1), atol=2e-6)
    reported = json.loads((out / "Results" / "metrics.json").read_text(encoding="utf-8"))
    y = np.array([CLASSES.index(r["Actual"]) for r in rows])
    assert reported["macro"]["auc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"), abs=1e-4)


def test_member_files_finds_members_of_any_size_in_canonical_order(tmp_path: Path) -> None:
    from deepcovidxr.contract.layout import member_files
    from deepcovidxr.inference.ensemble import available_members

    names = [
        "Xception_224_up_crop.h5",
        "ResNet50_128_up_crop.h5",
        "ResNet50_128_up_uncrop.h5",
        "DenseNet_331_up_uncrop.h5",
        "ResNet50_64_up_uncrop.h5",
    ]
    for name in [*names, "ResNet50_128_up_crop.h5.part", "notes_up_x.h5", "Unknown_224_up_crop.h5", "model.h5"]:
        (tmp_path / name).write_bytes(b"")
    found = [m.short_name for m, _ in member_files(tmp_path)]
    assert found == ["dense_331_uncrop", "res_64_uncrop", "res_128_uncrop", "res_128_crop", "xception_224_crop"]
    for name in names:  # a sidecar naming three classes for each
        (tmp_path / name).with_suffix(".json").write_text(json.dumps({"classes": list(CLASSES)}), encoding="utf-8")
    assert [m.short_name for m, _ in available_members(tmp_path)] == found
    assert [m.short_name for m, _ in available_members(tmp_path, ("res_128_crop",))] == ["res_128_crop"]


def test_members_of_different_classes_are_a_clear_error(multiclass_setup, tmp_path: Path, capsys) -> None:
    import shutil

    from deepcovidxr import cli

    tree, weights = multiclass_setup
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first = Member.parse(MEMBERS[0]).legacy_filename
    for suffix in (".h5", ".json"):
        shutil.copy(weights / Path(first).with_suffix(suffix).name, mixed / Path(first).with_suffix(suffix).name)
    _save(mixed, MEMBERS[1], ("Negative", "Positive"), seed=3)
    (mixed / "ensemble_weights.json").write_text(json.dumps({MEMBERS[0]: 0.5, MEMBERS[1]: 0.5}), encoding="utf-8")
    code = cli.main(
        "evaluate",
        ["-w", str(mixed), "-i", str(tree), "-o", str(tmp_path / "e"), "-e", str(mixed / "ensemble_weights.json")],
    )
    assert code == 2
    assert "different classes" in capsys.readouterr().err
    code = cli.main("ensemble", ["-w", str(mixed), "-d", str(tree), "-o", str(tmp_path / "f")])
    assert code == 2
    assert "different classes" in capsys.readouterr().err
    # members of the tree's classes but weights that say they were fitted for another task
    (tmp_path / "binary_weights.json").write_text(
        json.dumps({"classes": ["Negative", "Positive"], "weights": {MEMBERS[0]: 0.5, MEMBERS[1]: 0.5}}),
        encoding="utf-8",
    )
    code = cli.main(
        "evaluate",
        ["-w", str(weights), "-i", str(tree), "-o", str(tmp_path / "g"), "-e", str(tmp_path / "binary_weights.json")],
    )
    assert code == 2
    assert "fitted for classes" in capsys.readouterr().err
    # binary members on a three-class tree
    binary = tmp_path / "binary"
    binary.mkdir()
    second = Path(Member.parse(MEMBERS[1]).legacy_filename)
    for suffix in (".h5", ".json"):
        shutil.copy(mixed / second.with_suffix(suffix).name, binary / second.with_suffix(suffix).name)
    code = cli.main("ensemble", ["-w", str(binary), "-d", str(tree), "-o", str(tmp_path / "h")])
    assert code == 2
    assert "not the members' classes" in capsys.readouterr().err


def test_weights_that_name_no_classes_take_the_members_classes(multiclass_setup, tmp_path: Path) -> None:
    """Issue 19: the original's plain ``{member: weight}`` JSON (or a pickle) says nothing about
    classes and was taken as binary, so evaluate/predict/visSample refused 3-class members. The
    members' sidecars decide then."""
    import pickle

    from deepcovidxr.inference.ensemble import resolve_ensemble

    _, weights = multiclass_setup
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({MEMBERS[0]: 0.4, MEMBERS[1]: 0.6}), encoding="utf-8")
    pickled = tmp_path / "weights.pickle"
    pickled.write_bytes(pickle.dumps({MEMBERS[0]: 0.4, MEMBERS[1]: 0.6}, protocol=3))
    for source in (plain, pickled):
        chosen = resolve_ensemble(weights, source)
        assert chosen.classes == CLASSES and chosen.names == list(MEMBERS)
        assert chosen.weights.tolist() == pytest.approx([0.4, 0.6])
        assert weights_file.load_classes(source) is None


def test_binary_tree_keeps_its_columns(tmp_path: Path) -> None:
    from deepcovidxr import cli

    tree = _write_tree(tmp_path / "tree", ("Negative", "Positive"), seed=2)
    weights = tmp_path / "weights"
    weights.mkdir()
    _save(weights, MEMBERS[0], ("Negative", "Positive"), seed=0)
    (weights / "ensemble_weights.json").write_text(json.dumps({MEMBERS[0]: 1.0}), encoding="utf-8")
    out = tmp_path / "out"
    code = cli.main(
        "evaluate",
        ["-w", str(weights), "-i", str(tree), "-o", str(out), "-e", str(weights / "ensemble_weights.json"), "-t", "0"],
    )
    assert code == 0
    header, rows = _read(out / "Results" / "predictions.csv")
    # the original's columns first, then ours (calibrated probability, uncertainty)
    assert header == [
        "Filenames",
        "Scores",
        "Binary prediction",
        "Predictions",
        "Actual",
        MEMBERS[0],
        "Probability",
        "uncertainty",
    ]
    assert {r["Actual"] for r in rows} == {"0", "1"}
    assert {r["Predictions"] for r in rows} <= {"COVID-19 Positive", "COVID-19 Negative"}
    reported = json.loads((out / "Results" / "metrics.json").read_text(encoding="utf-8"))
    assert "auc" in reported and "at_0.5" in reported and "classes" not in reported
    for name in ("ROC_Curve.png", "PrecisionRecall_Curve.png", "Calibration.png", "ConfusionMatrix.png"):
        assert (out / "Results" / name).is_file()


def test_multiclass_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from deepcovidxr.reports import plots

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 60)
    p = _probabilities(60, 3, 7, y)
    written = plots.multiclass_evaluation_plots(tmp_path, y, p, CLASSES, "Test")
    assert [f.name for f in written] == ["ROC_Curve.png", "ConfusionMatrix.png"]
    for path in written:
        assert path.stat().st_size > 10_000
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ConfusionMatrix.png", "ROC_Curve.png"]
    assert plt.get_fignums() == []
