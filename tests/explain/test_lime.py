"""LIME of the whole ensemble (visSample.py --method lime) and Grad-CAM of a chosen class."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import shared

SAMPLES = 24  # tiny: the tests check plumbing and reproducibility, not explanation quality


def _binary_weights(tmp_path: Path) -> Path:
    import keras

    from deepcovidxr.contract.layout import Member
    from deepcovidxr.networks.members import build_member, save_member

    member = Member.parse("res_224_uncrop")
    weights = tmp_path / "weights"
    weights.mkdir()
    keras.utils.set_random_seed(0)
    save_member(build_member(member.backbone, member.size), weights / member.legacy_filename, member)
    (weights / "ensemble_weights.json").write_text(json.dumps({member.short_name: 1.0}), encoding="utf-8")
    return weights


def _three_class_weights(tmp_path: Path, classes=("Alpha", "Beta", "Gamma")) -> Path:
    import keras

    from deepcovidxr.contract.layout import Member
    from deepcovidxr.networks.members import build_member, save_member
    from deepcovidxr.scoring.weights_file import save_weights

    member = Member.parse("res_224_uncrop")
    weights = tmp_path / "weights3"
    weights.mkdir()
    keras.utils.set_random_seed(1)
    model = build_member(member.backbone, member.size, outputs=len(classes), activation="softmax")
    save_member(model, weights / member.legacy_filename, member, classes=classes)
    save_weights({member.short_name: 1.0}, weights, classes=classes)
    return weights


def _images(tmp_path: Path, broken: bool = False) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), folder / "a.png")
    shutil.copy(shared("cxr", "Negative", "nih_00000310_001.png"), folder / "sub" / "b.png")
    if broken:
        (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_class_cams_follow_each_class_unit() -> None:
    """A 3-unit softmax head: unit 0 reads the red channel's feature, unit 1 the green one, unit
    2 neither; each class's map peaks on its own evidence."""
    import keras

    from deepcovidxr.explain.gradcam import class_cams

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(2, 1, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    output = keras.layers.Dense(3, activation="softmax", name="last")(pooled)
    model = keras.Model(inputs, output)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    model.get_layer("features").set_weights([kernel, np.zeros(2, np.float32)])
    head = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], np.float32)
    model.get_layer("last").set_weights([head, np.zeros(3, np.float32)])
    x = np.zeros((1, 32, 32, 3), np.float32)
    x[0, :12, :12, 0] = 1.0  # red: class 0's evidence, top-left
    x[0, 20:, 20:, 1] = 1.0  # green: class 1's evidence, bottom-right
    maps, probabilities = class_cams(model, "features", x)
    assert maps.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(probabilities, np.asarray(model(x)), rtol=1e-5)
    top_left = np.unravel_index(np.argmax(maps[0, 0]), (32, 32))
    bottom_right = np.unravel_index(np.argmax(maps[1, 0]), (32, 32))
    assert top_left[0] < 12 and top_left[1] < 12 and maps[0, 0, 22:, 22:].max() < 0.05
    assert bottom_right[0] >= 20 and bottom_right[1] >= 20 and maps[1, 0, :10, :10].max() < 0.05
    assert np.allclose(maps[2], 0)


def test_resolve_target_keeps_the_binary_spelling_and_checks_class_names() -> None:
    from deepcovidxr.errors import UsageError
    from deepcovidxr.explain.gradcam import resolve_target

    binary = ("Negative", "Positive")
    assert resolve_target("Positive", binary) == resolve_target("positive", binary) == "positive"
    assert resolve_target("negative", binary) == "negative"
    assert resolve_target("Predicted", binary) == "predicted"
    assert resolve_target("beta", ("Alpha", "Beta", "Gamma")) == "Beta"
    with pytest.raises(UsageError, match="Alpha"):
        resolve_target("Delta", ("Alpha", "Beta", "Gamma"))
    with pytest.raises(UsageError):
        resolve_target("Beta", binary)


def test_gradcam_target_picks_the_class_unit_of_a_three_class_member(tmp_path) -> None:
    from deepcovidxr.config.inference_stages import GradcamConfig
    from deepcovidxr.stages.vis_sample import run

    weights = _three_class_weights(tmp_path)
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    heatmaps = {}
    for target in ("Alpha", "Beta", "predicted"):
        out = tmp_path / f"out_{target}"
        config = GradcamConfig(
            weights=weights, path=images, output=out, ensemble_weights=weights / "ensemble_weights.json", target=target
        )
        result = run(config)
        assert result.exit_code == 0
        row = _rows(result.report)["a.png"]
        assert row["status"] == "ok" and row["predicted"] in {"Alpha", "Beta", "Gamma"}
        assert row["target"] == (row["predicted"] if target == "predicted" else target)
        probabilities = [float(row[f"p_{c}"]) for c in ("Alpha", "Beta", "Gamma")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert float(row["score"]) == pytest.approx(max(probabilities), abs=1e-6)
        heatmaps[target] = np.load(out / "gradCAM_img" / "a_heatmap.npy")
        assert (out / "gradCAM_img" / "a_gradCAM.png").stat().st_size > 10_000
    assert heatmaps["Alpha"].shape == heatmaps["Beta"].shape
    assert np.abs(heatmaps["Alpha"] - heatmaps["Beta"]).max() > 0.05  # a different unit, a different map


def test_lime_is_reproducible_with_a_seed(tmp_path) -> None:
    """Same seed, same superpixel weights; another seed draws other perturbations."""
    import cv2

    from deepcovidxr.explain.lime_ensemble import EnsembleClassifier, explain, weight_map
    from deepcovidxr.imaging.geometry import Box
    from deepcovidxr.inference.ensemble import resolve_ensemble
    from deepcovidxr.networks.members import load_member

    weights = _binary_weights(tmp_path)
    chosen = resolve_ensemble(weights, weights / "ensemble_weights.json")
    models = [load_member(f, m) for m, f in chosen.members]
    gray = cv2.imread(str(shared("cxr", "Positive", "hannover_006f3a8a.png")), cv2.IMREAD_GRAYSCALE)
    gray = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA)
    classifier = EnsembleClassifier(chosen, models, Box(0, 0, 256, 256), batch_size=8)

    def mask(seed: int) -> np.ndarray:
        explanation, label, probabilities = explain(gray, classifier, chosen.classes, "Positive", SAMPLES, seed, 8)
        assert label == 1 and probabilities.sum() == pytest.approx(1.0)
        return weight_map(explanation, label)

    first, again, other = mask(3), mask(3), mask(4)
    assert first.shape == (256, 256) and np.abs(first).max() > 0
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_lime_folder_writes_one_image_per_input_and_a_report(tmp_path) -> None:
    """A binary member, --method lime on a folder: one figure + weight map per readable input, the
    broken file an error row (exit code 1), the CSV naming the predicted class and score."""
    from PIL import Image

    from deepcovidxr.config.inference_stages import GradcamConfig
    from deepcovidxr.stages.vis_sample import run

    weights = _binary_weights(tmp_path)
    images = _images(tmp_path, broken=True)
    out = tmp_path / "out"
    config = GradcamConfig(
        weights=weights,
        path=images,
        output=out,
        ensemble_weights=weights / "ensemble_weights.json",
        method="lime",
        num_samples=SAMPLES,
        seed=5,
        batch_size=8,
    )
    result = run(config)
    assert result.report == out / "lime_report.csv" and result.exit_code == 1
    rows = _rows(result.report)
    assert set(rows) == {"a.png", "sub/b.png", "broken.png"}
    assert rows["broken.png"]["status"] == "error" and rows["broken.png"]["error"]
    for name, stem in (("a.png", "a"), ("sub/b.png", "sub__b")):
        row = rows[name]
        assert row["status"] == "ok" and row["predicted"] in {"Negative", "Positive"}
        assert row["target"] == row["predicted"]  # --target predicted (the default)
        p = float(row["p_Positive"])
        assert float(row["score"]) == pytest.approx(p if row["predicted"] == "Positive" else 1 - p, abs=1e-6)
        assert (p >= 0.5) == (row["predicted"] == "Positive")
        figure = out / row["explanation"]
        assert figure == out / "lime_img" / f"{stem}_lime.png"
        picture = Image.open(figure)
        assert picture.size[0] > 2 * 256 and "Research use only" in picture.info.get("Description", "")
        assert np.load(out / "lime_img" / f"{stem}_lime_weights.npy").ndim == 2
    assert sorted(p.name for p in (out / "lime_img").glob("*.png")) == ["a_lime.png", "sub__b_lime.png"]
    assert not any((out / ".scratch").iterdir())
    # the same run again resumes: nothing redone, the rows kept
    again = run(config)
    assert _rows(again.report)["a.png"]["score"] == rows["a.png"]["score"]
    # another seed draws other perturbations: redone, never reported from the earlier run
    # (regression: a rerun kept every finished row whatever its options)
    weights_map = out / "lime_img" / "a_lime_weights.npy"
    first = np.load(weights_map)
    run(dataclasses.replace(config, seed=6))
    assert not np.array_equal(np.load(weights_map), first)


def test_lime_explains_a_chosen_class_of_a_three_class_ensemble(tmp_path) -> None:
    from deepcovidxr.config.inference_stages import GradcamConfig
    from deepcovidxr.stages.vis_sample import run

    weights = _three_class_weights(tmp_path)
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    out = tmp_path / "out"
    config = GradcamConfig(
        weights=weights,
        path=images,
        output=out,
        ensemble_weights=weights / "ensemble_weights.json",
        method="lime",
        target="gamma",
        num_samples=SAMPLES,
    )
    result = run(config)
    row = _rows(result.report)["a.png"]
    assert result.exit_code == 0 and row["status"] == "ok" and row["target"] == "Gamma"
    assert float(row["target_score"]) == pytest.approx(float(row["p_Gamma"]))
    assert (out / "lime_img" / "a_lime.png").is_file()
