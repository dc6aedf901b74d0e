"""Grad-CAM plumbing: gradients point at what drives the logit; maps land in original coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from deepcovidxr.explain.gradcam import fuse, member_cams, to_original


def _red_evidence_model(size: int = 32):
    """A tiny member-shaped model: feature channel 0 sees the red input channel, channel 1 the
    green one, and only channel 0 feeds the logit. Its positive Grad-CAM must follow the red."""
    import keras

    inputs = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(2, 1, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    dropped = keras.layers.Dropout(0.0, name="dropout")(pooled)
    output = keras.layers.Dense(1, activation="sigmoid", name="last")(dropped)
    model = keras.Model(inputs, output)
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1.0
    model.get_layer("features").set_weights([kernel, np.zeros(2, np.float32)])
    model.get_layer("last").set_weights([np.array([[4.0], [0.0]], np.float32), np.array([-1.0], np.float32)])
    return model


def test_positive_map_peaks_where_the_evidence_is() -> None:
    model = _red_evidence_model()
    x = np.zeros((2, 32, 32, 3), np.float32)
    x[:, :12, :12, 0] = 1.0  # evidence (red) in the top-left
    x[:, 20:, 20:, 1] = 1.0  # bright but irrelevant (green) bottom-right
    positive, negative, scores = member_cams(model, "features", x)
    assert positive.shape == (2, 32, 32) and positive.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(positive[0]), positive[0].shape)
    assert peak[0] < 12 and peak[1] < 12
    assert positive[0][22:, 22:].max() < 0.05
    assert np.allclose(negative, 0)  # nothing argues for the negative class
    expected = 1 / (1 + np.exp(-(4.0 * (144 / 1024) - 1.0)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_crop_maps_go_back_into_their_box() -> None:
    cam = np.ones((8, 8), np.float32)
    placed = to_original(cam, (100, 80), (10, 20, 50, 60))
    assert placed.shape == (100, 80)
    assert placed[20:60, 10:50].min() == pytest.approx(1.0) and placed.sum() == pytest.approx(40 * 40)
    whole = to_original(cam, (100, 80), None)
    assert whole.shape == (100, 80) and whole.min() == pytest.approx(1.0)


def test_a_coarse_map_peaks_on_its_cell_centre_in_the_original_image() -> None:
    """Evidence confined to one cell of a 4x4 last map: the placed heatmap peaks at that cell's
    centre in the crop box, the node :func:`phantom_tasks.grid_nodes` reports (the pointing
    benchmark's grid ceiling rests on it)."""
    import keras

    from tools.phantom_tasks import grid_nodes

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(1, 8, strides=8, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    output = keras.layers.Dense(1, activation="sigmoid", name="last")(pooled)
    model = keras.Model(inputs, output)
    kernel = np.zeros((8, 8, 3, 1), np.float32)
    kernel[:, :, 0, 0] = 1 / 64
    model.get_layer("features").set_weights([kernel, np.zeros(1, np.float32)])
    model.get_layer("last").set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, 16:24, 8:16, 0] = 1.0  # cell (row 2, column 1)
    positive, _, _ = member_cams(model, "features", image)
    box = (10, 20, 110, 120)
    placed = to_original(positive[0], (150, 140), box)
    y, x = np.unravel_index(np.argmax(placed), placed.shape)
    assert abs(y - grid_nodes(20, 120, 4)[2]) <= 1 and abs(x - grid_nodes(10, 110, 4)[1]) <= 1, (y, x)


def test_fusion_is_ensemble_weighted() -> None:
    a, b = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    a[0, 0], b[3, 3] = 1.0, 1.0
    fused = fuse([a, b], [0.75, 0.25])
    assert fused[0, 0] == pytest.approx(1.0) and fused[3, 3] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="positive weight"):
        fuse([a], [0.0])


def test_grad_cam_refuses_inputs_whose_outputs_would_overwrite(tmp_path) -> None:
    """Regression (issue 10, defect 1): ``a.dcm`` and ``a.png`` both became ``a_gradCAM.png``, the
    second overwriting the first; a UID-named DICOM lost its last dotted part. Now a clash is an
    error row naming both inputs and nothing is written for either."""
    import csv
    import json
    import shutil

    import keras

    from deepcovidxr.config.inference_stages import GradcamConfig
    from deepcovidxr.contract.layout import Member
    from deepcovidxr.networks.members import build_member, save_member
    from deepcovidxr.stages.vis_sample import run as run_gradcam
    from tests.support.helpers import shared

    member = Member.parse("res_224_uncrop")
    weights = tmp_path / "weights"
    weights.mkdir()
    keras.utils.set_random_seed(0)
    save_member(build_member(member.backbone, member.size), weights / member.legacy_filename, member)
    (weights / "ensemble_weights.json").write_text(json.dumps({member.short_name: 1.0}), encoding="utf-8")
    images = tmp_path / "in"
    images.mkdir()
    dicom = shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm")
    shutil.copy(dicom, images / "a.dcm")
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    shutil.copy(dicom, images / "1.2.840.113619.2.55")  # PACS export: named by UID, no suffix
    out = tmp_path / "out"
    run_gradcam(
        GradcamConfig(weights=weights, path=images, output=out, ensemble_weights=weights / "ensemble_weights.json")
    )
    folder = out / "gradCAM_img"
    assert not (folder / "a_gradCAM.png").exists() and not (folder / "a_heatmap.npy").exists()
    assert (folder / "1.2.840.113619.2.55_gradCAM.png").is_file()  # the whole UID kept
    with (out / "gradcam_report.csv").open(newline="", encoding="utf-8") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert rows["a.dcm"]["status"] == "error" and "a.png" in rows["a.dcm"]["error"]
    assert rows["a.png"]["status"] == "error" and "a.dcm" in rows["a.png"]["error"]
    assert rows["1.2.840.113619.2.55"]["status"] == "ok"


def test_fused_map_sums_weights_and_replaces_for_the_max_rule(tmp_path) -> None:
    from deepcovidxr.explain.ensemble_cam import CamSums

    maps = CamSums(tmp_path / "maps", 1)
    maps.shapes[0], maps.boxes[0] = (100, 50), (0, 0, 50, 50)
    left, right = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)
    left[:, :4], right[:, 4:] = 1.0, 1.0
    maps.add(0, left, right, (0.25, 1.0), cropped=False)
    maps.add(0, right, left, (0.75, 0.0), cropped=False)
    fused = maps.fused(0, "positive", (100, 50))
    assert fused[:, 45:].mean() == pytest.approx(1.0) and fused[:, :5].mean() == pytest.approx(1 / 3, abs=1e-6)
    assert maps.fused(0, "negative", (100, 50))[:, 45:].mean() == pytest.approx(1.0)
    maps.add(0, left, left, (1.0, 1.0), cropped=True, replace=True)  # only the crop box, the rest cleared
    replaced = maps.fused(0, "positive", (100, 50))
    assert replaced[60:].max() == 0 and replaced[:40, :20].mean() == pytest.approx(1.0, abs=1e-6)


def test_fused_maps_of_a_multi_class_ensemble_are_kept_per_class(tmp_path) -> None:
    """Multi-class: one sum per class name; a member adds only the classes it is given (vote,
    max), the others keep their sums."""
    from deepcovidxr.explain.ensemble_cam import CamSums

    classes = ("Alpha", "Beta", "Gamma")
    maps = CamSums(tmp_path / "maps", 1, classes)
    maps.shapes[0], maps.boxes[0] = (64, 64), (0, 0, 64, 64)
    left, right = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)
    left[:, :4], right[:, 4:] = 1.0, 1.0
    maps.add_maps(0, {"Alpha": left, "Beta": right, "Gamma": left}, dict.fromkeys(classes, 0.5), cropped=False)
    maps.add_maps(0, {"Beta": left}, {"Beta": 0.5}, cropped=False)  # e.g. a member voting Beta
    alpha, beta = maps.fused(0, "Alpha", (64, 64)), maps.fused(0, "Beta", (64, 64))
    assert alpha[:, :28].mean() == pytest.approx(1.0) and alpha[:, 36:].max() == 0
    assert beta.min() == pytest.approx(1.0, abs=1e-6)  # left from one member, right from the other
    assert sorted(p.name for p in (tmp_path / "maps").glob("class_*.npy")) == [f"class_{i}.npy" for i in range(3)]
