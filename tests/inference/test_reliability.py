"""Calibration, operating points and uncertainty through the ensemble and evaluate stages, with the
members' scores supplied directly (the scoring itself is tested in test_inference.py): the fit reads
Validation only, reproduces with a seed, and evaluate's default decision is the original's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.config.inference_stages import EnsembleConfig, EvaluateConfig
from deepcovidxr.contract.layout import Member, Split
from deepcovidxr.inference.ensemble import Ensemble, SplitImages
from deepcovidxr.scoring import calibration, uncertainty, weights_file
from deepcovidxr.stages import ensemble as ensemble_stage
from deepcovidxr.stages import evaluate as evaluate_stage

MEMBERS = [Member.parse("res_224_uncrop"), Member.parse("dense_331_crop"), Member.parse("xception_224_crop")]


def fake_split(seed: int, n: int = 120) -> tuple[SplitImages, np.ndarray]:
    """Over-confident members of different quality: a calibration has something to correct."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.float64)
    signal = labels[:, None] * np.array([2.0, 1.0, 0.3]) + rng.normal(0, 1.0, (n, len(MEMBERS)))
    scores = 1.0 / (1.0 + np.exp(-3.0 * (signal - 0.5)))
    names = [f"{'Positive' if y else 'Negative'}/img_{i:03d}.png" for i, y in enumerate(labels)]
    return SplitImages(names, labels), scores


@pytest.fixture
def fake_scoring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Validation and Test scores by split; ``splits`` can be changed by a test before it runs a stage."""
    splits = {Split.VALIDATION: fake_split(1), Split.TEST: fake_split(2)}
    seen: list[Split] = []

    def score_split(root, split, chosen, scratch, batch_size, tta=0, seed=0, engine=None, tta_variance=None):
        seen.append(split)
        images, scores = splits[split]
        return images, scores[:, [MEMBERS.index(m) for m, _ in chosen.members]]  # the chosen members' columns

    members = [(m, tmp_path / "members" / m.legacy_filename) for m in MEMBERS]
    monkeypatch.setattr(ensemble_stage, "score_split", score_split)
    monkeypatch.setattr(ensemble_stage, "available_members", lambda folder, subset=(): members)
    monkeypatch.setattr(evaluate_stage, "score_split", score_split)
    (tmp_path / "members").mkdir()
    (tmp_path / "data").mkdir()
    return splits, seen, members


def run_ensemble(tmp_path: Path, out: str, seed: int = 0) -> dict:
    config = EnsembleConfig(
        weights=tmp_path / "members", data=tmp_path / "data", output=tmp_path / out, draws=300, seed=seed
    )
    path = ensemble_stage.run(config).report
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_calibration_and_thresholds_come_from_validation_only(fake_scoring, tmp_path: Path) -> None:
    splits, seen, _ = fake_scoring
    first = run_ensemble(tmp_path, "a")
    assert seen.index(Split.VALIDATION) < seen.index(Split.TEST)
    # A completely different Test split: nothing stored with the weights may change.
    splits[Split.TEST] = fake_split(99, n=40)
    second = run_ensemble(tmp_path, "b")
    assert second["calibration"] == first["calibration"] and second["weights"] == first["weights"]
    # ... and what is stored is the fit of the Validation ensemble score, computed independently.
    val_images, val_scores = splits[Split.VALIDATION]
    weights = np.array([first["weights"][m.short_name] for m in MEMBERS])
    expected = calibration.fit_from_split(val_images.labels, val_scores @ weights)
    assert first["calibration"]["operating_points"] == pytest.approx(expected.operating_points)
    stored = first["calibration"]["calibration"]
    assert stored["method"] == "platt" and stored["n"] == len(val_images.labels)
    assert (stored["slope"], stored["intercept"]) == pytest.approx(
        (expected.calibration.slope, expected.calibration.intercept)
    )
    points = first["calibration"]["operating_points"]
    assert set(points) == {"youden", "sens90", "sens95"}
    # sens90 is met on Validation (score >= t keeps at least 90 % of the positives).
    combined = val_scores @ weights
    positives = combined[val_images.labels == 1]
    assert np.mean(positives >= points["sens90"]) >= 0.9
    assert np.mean(positives >= points["sens95"]) >= 0.95


def test_thresholds_reproduce_with_a_seed(fake_scoring, tmp_path: Path) -> None:
    assert run_ensemble(tmp_path, "a", seed=3)["calibration"] == run_ensemble(tmp_path, "b", seed=3)["calibration"]
    summary = json.loads((tmp_path / "a" / "Ensemble_Results" / "summary.json").read_text(encoding="utf-8"))
    test = summary["calibration"]["test"]
    assert test["brier_calibrated"] < test["brier_raw"]  # over-confident members: calibration helps on Test
    assert set(test["operating_points"]) == {"0.5", "youden", "sens90", "sens95"}


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_keeps_the_original_decision_and_adds_probability_and_uncertainty(
    fake_scoring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits, _, members = fake_scoring
    stored = json.loads(
        (
            Path(
                ensemble_stage.run(
                    EnsembleConfig(
                        weights=tmp_path / "members", data=tmp_path / "data", output=tmp_path / "ens", draws=200
                    )
                ).report
            )
        ).read_text(encoding="utf-8")
    )
    weights = np.array([stored["weights"][m.short_name] for m in MEMBERS])
    chosen = Ensemble(members, weights, calibration=stored["calibration"])
    monkeypatch.setattr(evaluate_stage, "resolve_ensemble", lambda *a, **k: chosen)
    monkeypatch.setattr(evaluate_stage, "_report", lambda *a, **k: None)  # the page has its own test
    out = tmp_path / "eval"
    evaluate_stage.run(EvaluateConfig(weights=tmp_path / "members", image=tmp_path / "data", output=out, bootstrap=50))
    rows = _rows(out / "Results" / "predictions.csv")
    images, scores = splits[Split.TEST]
    combined = scores @ weights
    assert [r["Filenames"] for r in rows] == images.names
    # Binary prediction at the default threshold is exactly the original's score >= 0.5.
    assert [int(r["Binary prediction"]) for r in rows] == [int(s >= 0.5) for s in combined]
    fit = calibration.ValidationFit.from_dict(stored["calibration"])
    assert np.allclose([float(r["Probability"]) for r in rows], fit.calibration.apply(combined), atol=1e-6)
    assert np.allclose([float(r["uncertainty"]) for r in rows], uncertainty.uncertainty(scores, weights), atol=1e-6)
    metrics = json.loads((out / "Results" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["calibration"]["ece_calibrated"] == pytest.approx(
        calibration.expected_calibration_error(images.labels, fit.calibration.apply(combined))
    )
    assert [r["fraction"] for r in metrics["referral"]][:3] == [0.0, 0.1, 0.2]
    assert (out / "Results" / "Referral_Curve.png").is_file()
    assert (out / "Results" / "Calibration_Fitted.png").is_file()


def test_weights_without_calibration_still_evaluate(fake_scoring, tmp_path: Path, monkeypatch) -> None:
    _, _, members = fake_scoring
    chosen = Ensemble(members, np.full(3, 1 / 3))
    assert weights_file.load_calibration(tmp_path / "missing.json") is None
    monkeypatch.setattr(evaluate_stage, "resolve_ensemble", lambda *a, **k: chosen)
    monkeypatch.setattr(evaluate_stage, "_report", lambda *a, **k: None)
    out = tmp_path / "eval"
    evaluate_stage.run(EvaluateConfig(weights=tmp_path / "members", image=tmp_path / "data", output=out, bootstrap=20))
    rows = _rows(out / "Results" / "predictions.csv")
    assert all(r["Probability"] == "" for r in rows)
    assert (
        "rerun ensemble.py" in json.loads((out / "Results" / "metrics.json").read_text(encoding="utf-8"))["calibration"]
    )


def test_evaluate_report_page_loads_every_image_when_copied(fake_scoring, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from PIL import Image

    from tests.support.browser import image_widths

    splits, _, members = fake_scoring
    images, _ = splits[Split.TEST]
    rng = np.random.default_rng(0)
    for name in images.names:  # the Test images the page shows as thumbnails (the first member's view)
        target = tmp_path / "data" / "224" / "uncrop" / "Test" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(target)
    stored = json.loads(
        Path(
            ensemble_stage.run(
                EnsembleConfig(weights=tmp_path / "members", data=tmp_path / "data", output=tmp_path / "ens", draws=50)
            ).report
        ).read_text(encoding="utf-8")
    )
    chosen = Ensemble(
        members, np.array([stored["weights"][m.short_name] for m in MEMBERS]), calibration=stored["calibration"]
    )
    monkeypatch.setattr(evaluate_stage, "resolve_ensemble", lambda *a, **k: chosen)
    out = tmp_path / "eval"
    evaluate_stage.run(EvaluateConfig(weights=tmp_path / "members", image=tmp_path / "data", output=out, bootstrap=50))
    copied = shutil.copytree(out / "Results", tmp_path / "elsewhere" / "Results")
    shutil.rmtree(out)
    shutil.rmtree(tmp_path / "data")
    page = copied / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "Research use only" in text or "research" in text.lower()
    for figure in ("ROC_Curve", "Calibration_Fitted", "Referral_Curve"):
        assert figure in text
    widths = image_widths(page)
    assert len(widths) >= 2 * 50 + 4  # two thumbnail tables (highest scores, most uncertain) and the figures
    assert all(width > 0 for _, width in widths), [src for src, width in widths if width == 0]


# ---- issue 19, section 2: numbers that are not what they claim ------------------------------------


def _fitted(tmp_path: Path) -> Path:
    """ensemble.py's weights JSON (weights, rule, Validation calibration and operating points) for
    the three fake members, whose files exist (empty: nothing here loads them)."""
    for member in MEMBERS:
        (tmp_path / "members" / member.legacy_filename).write_bytes(b"")
    config = EnsembleConfig(weights=tmp_path / "members", data=tmp_path / "data", output=tmp_path / "ens", draws=200)
    return Path(ensemble_stage.run(config).report)


def _evaluate(tmp_path: Path, out: str, **options) -> dict:
    evaluate_stage.run(
        EvaluateConfig(weights=tmp_path / "members", image=tmp_path / "data", output=tmp_path / out, **options)
    )
    return json.loads((tmp_path / out / "Results" / "metrics.json").read_text(encoding="utf-8"))


def test_a_member_subset_drops_the_borrowed_calibration(
    fake_scoring, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 19: ``--members`` with a weights file kept the full ensemble's Platt fit and operating
    points, so ``Probability`` and ``--threshold sens90`` described another score. A subset drops
    them with a warning and says ``calibrated: false``; a named operating point is then refused."""
    from deepcovidxr.errors import UsageError
    from deepcovidxr.inference import reliability
    from deepcovidxr.inference.ensemble import resolve_ensemble

    weights_json = _fitted(tmp_path)
    monkeypatch.setattr(evaluate_stage, "_report", lambda *a, **k: None)
    full = resolve_ensemble(tmp_path / "members", weights_json)
    assert full.calibration is not None and reliability.threshold(full, "sens90") == pytest.approx(
        json.loads(weights_json.read_text(encoding="utf-8"))["calibration"]["operating_points"]["sens90"]
    )
    subset = ("res_224_uncrop", "dense_331_crop")
    with caplog.at_level("WARNING", logger="deepcovidxr.inference.ensemble"):
        chosen = resolve_ensemble(tmp_path / "members", weights_json, subset)
    assert chosen.calibration is None and not chosen.calibrated
    assert "calibrated: false" in caplog.text and "xception_224_crop" in caplog.text
    with pytest.raises(UsageError, match="subset"):
        reliability.threshold(chosen, "sens90")
    assert reliability.threshold(chosen, "0.3") == 0.3  # a number needs no stored point
    # Naming every member is not a subset: the calibration stays.
    assert resolve_ensemble(tmp_path / "members", weights_json, tuple(m.short_name for m in MEMBERS)).calibrated
    reported = _evaluate(tmp_path, "eval", ensemble_weights=weights_json, members=subset, bootstrap=20)
    assert reported["calibrated"] is False and "subset" in reported["calibration"]
    rows = _rows(tmp_path / "eval" / "Results" / "predictions.csv")
    assert all(r["Probability"] == "" for r in rows)
    assert not (tmp_path / "eval" / "Results" / "Calibration_Fitted.png").exists()
    assert _evaluate(tmp_path, "all", ensemble_weights=weights_json, bootstrap=20)["calibrated"] is True


def test_predict_refuses_a_stored_operating_point_on_a_subset_before_any_work(
    fake_scoring, tmp_path: Path, monkeypatch
) -> None:
    from deepcovidxr.config.inference_stages import PredictConfig
    from deepcovidxr.errors import UsageError
    from deepcovidxr.inference import prediction
    from deepcovidxr.stages import predict as predict_stage

    weights_json = _fitted(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(images / "a.png")
    monkeypatch.setattr(prediction, "crop_images", lambda *a, **k: pytest.fail("work started"))
    config = PredictConfig(
        weights=tmp_path / "members",
        input=images,
        output=tmp_path / "pred",
        ensemble_weights=weights_json,
        members=("res_224_uncrop",),
        threshold="sens90",
    )
    with pytest.raises(UsageError, match="subset"):
        predict_stage.run(config)


def test_youden_block_uses_the_validation_point_or_says_it_was_chosen_on_test(
    fake_scoring, tmp_path: Path, monkeypatch
) -> None:
    """Issue 19: ``at_youden`` picked its cut on Test and reported it on Test (optimistic)."""
    from deepcovidxr.inference import reliability
    from deepcovidxr.scoring import metrics

    splits, _, members = fake_scoring
    weights_json = _fitted(tmp_path)
    monkeypatch.setattr(evaluate_stage, "_report", lambda *a, **k: None)
    stored = json.loads(weights_json.read_text(encoding="utf-8"))
    reported = _evaluate(tmp_path, "eval", ensemble_weights=weights_json, bootstrap=20)
    youden = stored["calibration"]["operating_points"]["youden"]
    assert reported["at_youden"]["chosen_on"] == "Validation"
    assert reported["at_youden"]["threshold"] == pytest.approx(youden)
    images, scores = splits[Split.TEST]
    weights = np.array([stored["weights"][m.short_name] for m in MEMBERS])
    expected = metrics.binary_metrics(images.labels, scores @ weights, youden)
    assert reported["at_youden"]["sensitivity"] == pytest.approx(expected["sensitivity"])
    # Weights without a Validation fit (the authors'): the block stays, labelled as chosen on Test.
    monkeypatch.setattr(evaluate_stage, "resolve_ensemble", lambda *a, **k: Ensemble(members, np.full(3, 1 / 3)))
    plain = _evaluate(tmp_path, "plain", bootstrap=20)
    assert plain["at_youden"]["chosen_on"] == "Test"
    on_test = metrics.youden_threshold(images.labels, scores.mean(axis=1))
    assert plain["at_youden"]["threshold"] == pytest.approx(on_test)
    names = [m.name for m in reliability.metric_rows(plain, None, [])]
    assert any("Youden" in n and "chosen on Test" in n for n in names), names


def test_bootstrap_zero_means_no_intervals(fake_scoring, tmp_path: Path, monkeypatch) -> None:
    """Issue 19: ``--bootstrap 0`` passed the config and crashed binary evaluation after scoring."""
    from deepcovidxr.inference import reliability

    weights_json = _fitted(tmp_path)
    monkeypatch.setattr(evaluate_stage, "_report", lambda *a, **k: None)
    reported = _evaluate(tmp_path, "eval", ensemble_weights=weights_json, bootstrap=0)
    assert reported["auc_ci95"] == [None, None] and 0 < reported["auc"] < 1
    for point in reported["calibration"]["operating_points"].values():
        assert point["sensitivity"]["low"] is None and point["sensitivity"]["point"] is not None
    rows = reliability.metric_rows(reported, reported["calibration"], [])
    assert rows[0].name == "AUC" and rows[0].low is None and rows[0].high is None
    assert all(r.low is None and r.high is None for r in rows)


def test_evaluate_uncertainty_includes_the_tta_variance(fake_scoring, tmp_path: Path, monkeypatch) -> None:
    """Issue 19: ``evaluate.py -t N`` left the TTA variance out of ``uncertainty`` (predict.py adds
    it). The stage must ask the scoring for it and use reliability.image_uncertainty's one definition."""
    from deepcovidxr.inference import reliability

    splits, _, members = fake_scoring
    images, scores = splits[Split.TEST]
    variance = np.random.default_rng(5).uniform(0.0, 0.02, scores.shape)

    def score_split(root, split, chosen, scratch, batch_size, tta=0, seed=0, engine=None, tta_variance=None):
        assert tta == 2 and tta_variance is not None, "evaluate did not ask for the TTA variance"
        tta_variance.append(variance)
        return images, scores

    chosen = Ensemble(members, np.array([0.5, 0.3, 0.2]))
    monkeypatch.setattr(evaluate_stage, "score_split", score_split)
    monkeypatch.setattr(evaluate_stage, "resolve_ensemble", lambda *a, **k: chosen)
    monkeypatch.setattr(evaluate_stage, "_report", lambda *a, **k: None)
    _evaluate(tmp_path, "eval", tta=2, bootstrap=10)
    rows = _rows(tmp_path / "eval" / "Results" / "predictions.csv")
    expected = reliability.image_uncertainty(chosen, scores, variance)
    assert np.allclose([float(r["uncertainty"]) for r in rows], expected, atol=1e-6)
    assert not np.allclose(expected, reliability.image_uncertainty(chosen, scores), atol=1e-4)
