"""Calibration, operating points and uncertainty through the ensemble and evaluate stages, with the
members' scores supplied directly (the scoring itself is tested in test_inference.py): the fit reads
Validation only, reproduces with a seed, and evaluate's default decision is the original's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr import calibration, ensemble, uncertainty
from deepcovidxr.configs import EnsembleConfig, EvaluateConfig
from deepcovidxr.inference import Ensemble, SplitImages
from deepcovidxr.layout import Member, Split
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

    def score_split(root, split, chosen, scratch, batch_size, tta=0, seed=0, engine=None):
        seen.append(split)
        return splits[split]

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
    expected = calibration.fit_from_split(val_scores @ weights, val_images.labels)
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
        calibration.expected_calibration_error(fit.calibration.apply(combined), images.labels)
    )
    assert [r["fraction"] for r in metrics["referral"]][:3] == [0.0, 0.1, 0.2]
    assert (out / "Results" / "Referral_Curve.png").is_file()
    assert (out / "Results" / "Calibration_Fitted.png").is_file()


def test_weights_without_calibration_still_evaluate(fake_scoring, tmp_path: Path, monkeypatch) -> None:
    _, _, members = fake_scoring
    chosen = Ensemble(members, np.full(3, 1 / 3))
    assert ensemble.load_calibration(tmp_path / "missing.json") is None
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

    from browser import image_widths
    from PIL import Image

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
