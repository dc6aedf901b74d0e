"""predict / evaluate / ensemble on small ensembles of random-weight members."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.contract.layout import Member
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.scoring import combination, weights_file
from deepcovidxr.stages import ensemble as ensemble_stage
from deepcovidxr.stages import evaluate as evaluate_stage
from tests.support.helpers import make_phantom_tree, run_script, save_random_members, shared

MEMBERS = ("res_224_uncrop", "res_331_crop")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two random-weight members and an ensemble_weights.json naming just them."""
    return save_random_members(tmp_path_factory.mktemp("weights"), MEMBERS, {MEMBERS[0]: 0.25, MEMBERS[1]: 0.75})


@pytest.fixture(scope="module")
def messy_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images") / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), root / "a.png")
    shutil.copy(sorted(shared("cxr", "Negative").glob("nih_*.png"))[0], root / "sub" / "b.png")
    shutil.copy(shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm"), root / "sub" / "c.dcm")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["Filenames"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def folder_run(weights_dir: Path, messy_images: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pred")
    done = run_script(
        "predict.py",
        "-w",
        weights_dir,
        "-i",
        messy_images,
        "-o",
        out,
        "-e",
        weights_dir / "ensemble_weights.json",
        "--batch-size",
        "2",
    )
    return out, done


def test_predict_folder_reports_every_file(folder_run, messy_images: Path) -> None:
    out, done = folder_run
    assert done.returncode == 1, done.stderr[-3000:]  # the broken file
    rows = _rows(out / "predictions.csv")
    assert set(rows) == {"a.png", "sub/b.png", "sub/c.dcm", "broken.png"}
    header = next(csv.reader((out / "predictions.csv").open(encoding="utf-8")))
    assert header[:6] == ["Filenames", "Scores", "Binary pred", "Predictions", "crop_status", "error"]
    assert header[6:] == [*MEMBERS, "Probability", "uncertainty", "input_check"]
    assert rows["broken.png"]["crop_status"] == "error" and rows["broken.png"]["error"]
    # the bad file is named with its reason on stderr too, not only in the table
    assert f"broken.png: {rows['broken.png']['error']}" in done.stderr
    for name in ("a.png", "sub/b.png", "sub/c.dcm"):
        row = rows[name]
        members = [float(row[m]) for m in MEMBERS]
        assert float(row["Scores"]) == pytest.approx(0.25 * members[0] + 0.75 * members[1], abs=2e-6)
        assert row["Binary pred"] == str(int(float(row["Scores"]) >= 0.5))
        assert row["Predictions"] == ("COVID-19 Positive" if row["Binary pred"] == "1" else "COVID-19 Negative")
        assert row["crop_status"] in {"ok", "one_lung", "fallback"}
    assert not any(p.name == "predictions.csv" for p in messy_images.rglob("*"))  # nothing in the input tree
    assert not (out / ".scratch").exists() or not any((out / ".scratch").iterdir())


def test_single_image_scores_like_the_folder(folder_run, weights_dir: Path, messy_images: Path, tmp_path: Path) -> None:
    out, _ = folder_run
    done = run_script(
        "predict.py",
        "-w",
        weights_dir,
        "-i",
        messy_images / "sub" / "b.png",
        "-o",
        tmp_path,
        "-e",
        weights_dir / "ensemble_weights.json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    alone = _rows(tmp_path / "predictions.csv")["b.png"]
    together = _rows(out / "predictions.csv")["sub/b.png"]
    for column in ("Scores", *MEMBERS):
        assert float(alone[column]) == pytest.approx(float(together[column]), abs=1e-5)


def test_shards_merge_into_the_whole(weights_dir: Path, messy_images: Path, tmp_path: Path, folder_run) -> None:
    shards = []
    for k in (1, 2):
        shard_out = tmp_path / f"shard{k}"
        run_script(
            "predict.py",
            "-w",
            weights_dir,
            "-i",
            messy_images,
            "-o",
            shard_out,
            "--shard",
            f"{k}/2",
            "-e",
            weights_dir / "ensemble_weights.json",
        )
        shards.append(shard_out)
    parts = [set(_rows(s / "predictions.csv")) for s in shards]
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(_rows(folder_run[0] / "predictions.csv"))
    merged = run_script("predict.py", "--merge", *shards, "-o", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
    assert _rows(tmp_path / "merged" / "predictions.csv").keys() == _rows(folder_run[0] / "predictions.csv").keys()


def test_tta_augments_deterministically() -> None:
    import keras

    from deepcovidxr.inference.streaming import member_scores

    inputs = keras.Input((48, 48, 3))
    model = keras.Model(
        inputs,
        keras.layers.Dense(1, activation="sigmoid")(
            keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
        ),
    )
    images = np.random.default_rng(0).integers(0, 255, (5, 48, 48), dtype=np.uint8)
    seeds = np.arange(5)
    plain = member_scores(model, images, 4)
    tta = member_scores(model, images, 4, tta=3, seeds=seeds)
    assert not np.allclose(plain, tta)
    np.testing.assert_array_equal(tta, member_scores(model, images, 4, tta=3, seeds=seeds))
    # an image's TTA score does not depend on its batch neighbours
    np.testing.assert_allclose(member_scores(model, images[2:3], 4, tta=3, seeds=seeds[2:3]), tta[2:3], atol=1e-6)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantoms in the two views MEMBERS use (224 uncrop; 331 crop written from the same image)."""
    root = tmp_path_factory.mktemp("tree")
    make_phantom_tree(root, 16, 224, seed=4)
    other = make_phantom_tree(root / "scratch", 16, 331, seed=4)
    (root / "331").mkdir()
    shutil.move(str(other), str(root / "331" / "crop"))
    shutil.rmtree(root / "scratch")
    return root


def test_view_pairing_is_by_name_and_mismatches_are_errors(tree: Path, tmp_path: Path) -> None:
    from deepcovidxr.contract.layout import Split
    from deepcovidxr.inference.ensemble import load_split

    members = [(Member.parse(m), Path(m)) for m in MEMBERS]
    images, store = load_split(tree, Split.TEST, members, tmp_path)
    store.close()
    assert images.names == sorted(images.names) and all(
        n.split("/")[0] in {"Negative", "Positive"} for n in images.names
    )
    victim = tree / "331" / "crop" / "Test" / images.names[0]
    moved = victim.rename(victim.with_name("renamed.png"))
    try:
        with pytest.raises(ValueError, match=r"renamed\.png"):
            load_split(tree, Split.TEST, members, tmp_path)
    finally:
        moved.rename(victim)


def test_ensemble_fits_on_validation_only_and_reports_test(
    tree: Path, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepcovidxr.config.inference_stages import EnsembleConfig

    seen = []
    original = combination.dirichlet_search

    def spy(scores, labels, draws=10000, seed=0):
        seen.append(len(labels))
        return original(scores, labels, draws=draws, seed=seed)

    monkeypatch.setattr(combination, "dirichlet_search", spy)
    validation_count = len(list((tree / "224" / "uncrop" / "Validation").rglob("*.png")))
    # One member with a training record beside it (as train.py leaves), the other without (as the
    # authors' files): the model card reports the first's data and says "not recorded" for the other.
    recorded = RunPaths(weights_dir, Member.parse(MEMBERS[0]))
    recorded.config.write_text(json.dumps({"train_images": 40, "train_positives": 17}), encoding="utf-8")
    recorded.member_record.write_text(json.dumps({"settings": {"epochs": 3}, "data": {"n": 40}}), encoding="utf-8")
    try:
        json_path = ensemble_stage.run(
            EnsembleConfig(
                weights=weights_dir, data=tree, output=tmp_path, draws=200, seed=1, members=MEMBERS, batch_size=4
            )
        ).report
    finally:
        recorded.config.unlink()
        recorded.member_record.unlink()
    assert seen == [validation_count]
    _check_model_card(json_path, weights_dir)
    weights = weights_file.load_weights(json_path)
    assert set(weights) == set(MEMBERS) and sum(weights.values()) == pytest.approx(1.0)
    assert weights_file.load_weights(json_path.with_name("ensemble_weights.pickle")) == pytest.approx(weights)
    results = tmp_path / "Ensemble_Results"
    rows = list(csv.DictReader((results / "ensemble_predictions.csv").open(encoding="utf-8")))
    test_names = sorted(
        p.relative_to(tree / "224" / "uncrop" / "Test").as_posix()
        for p in (tree / "224" / "uncrop" / "Test").rglob("*.png")
    )
    assert [r["Filenames"] for r in rows] == test_names
    assert all(r["Actual"] == ("1" if r["Filenames"].startswith("Positive/") else "0") for r in rows)
    for name in ("ROC_Curve.png", "ConfusionMatrix.png", "member_auc.csv", "individual_predictions.csv"):
        assert (results / name).is_file()
    # the fitted weights do not depend on the Test images at all
    for path in (tree / "224" / "uncrop" / "Test").rglob("*.png"):
        Image.fromarray(np.zeros((224, 224), np.uint8)).save(path)
    ensemble_stage.run(
        EnsembleConfig(
            weights=weights_dir, data=tree, output=tmp_path / "again", draws=200, seed=1, members=MEMBERS, batch_size=4
        )
    )
    assert weights_file.load_weights(tmp_path / "again" / "Ensemble_Results" / "ensemble_weights.json") == weights


def _check_model_card(weights_json: Path, weights_dir: Path) -> None:
    """The card beside the weights holds what the run's own records say, nothing else."""
    from deepcovidxr import DISCLAIMER

    card_json, card_md = weights_json.with_name("model_card.json"), weights_json.with_name("MODEL_CARD.md")
    assert card_json.is_file() and card_md.is_file()
    card = json.loads(card_json.read_text(encoding="utf-8"))
    page = card_md.read_text(encoding="utf-8")
    stored = json.loads(weights_json.read_text(encoding="utf-8"))
    summary = json.loads(weights_json.with_name("summary.json").read_text(encoding="utf-8"))
    assert card["ensemble"]["weights"] == stored["weights"] and card["ensemble"]["rule"] == stored["rule"]
    assert card["performance"]["test"] == summary["test"]
    assert card["performance"]["validation"] == stored["calibration"]["validation"]
    assert card["calibration"] == stored["calibration"]
    assert card["disclaimer"] == DISCLAIMER and DISCLAIMER in page
    members = {m["name"]: m for m in card["members"]}
    assert set(members) == set(MEMBERS)
    for name, entry in members.items():
        member_file = weights_dir / Member.parse(name).legacy_filename
        assert entry["sha256"] == hashlib.sha256(member_file.read_bytes()).hexdigest()
        assert entry["sha256"] in page
    assert members[MEMBERS[0]]["training_data"]["train_images"] == 40
    assert members[MEMBERS[0]]["training_data"]["train_positives"] == 17
    assert members[MEMBERS[1]]["training_data"] == "not recorded"
    assert "not recorded" in page and f"{summary['test']['auc']:.4f}" in page
    assert set(card) >= {"intended_use", "task", "members", "ensemble", "performance", "input", "provenance"}


def test_evaluate_metrics_match_sklearn(tree: Path, weights_dir: Path, tmp_path: Path) -> None:
    from sklearn.metrics import recall_score, roc_auc_score

    done = run_script(
        "evaluate.py",
        "-w",
        weights_dir,
        "-i",
        tree,
        "-o",
        tmp_path,
        "-e",
        weights_dir / "ensemble_weights.json",
        "--bootstrap",
        "200",
        "--batch-size",
        "4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "Results" / "predictions.csv").open(encoding="utf-8")))
    assert list(rows[0])[:5] == ["Filenames", "Scores", "Binary prediction", "Predictions", "Actual"]
    y = np.array([int(r["Actual"]) for r in rows])
    s = np.array([float(r["Scores"]) for r in rows])
    summary = json.loads((tmp_path / "Results" / "metrics.json").read_text(encoding="utf-8"))
    assert summary["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert summary["at_0.5"]["sensitivity"] == pytest.approx(recall_score(y, s >= 0.5), abs=1e-9)
    low, high = summary["auc_ci95"]
    assert low <= summary["auc"] <= high
    for name in ("ROC_Curve.png", "PrecisionRecall_Curve.png", "Calibration.png", "ConfusionMatrix.png"):
        assert (tmp_path / "Results" / name).stat().st_size > 1000
    from deepcovidxr.reports.tensorboard_images import read_image_tags

    logged = read_image_tags(tmp_path / "Results" / "tensorboard")
    assert {"ROC_Curve", "ConfusionMatrix"} <= set(logged)
    assert logged["ROC_Curve"] == Image.open(tmp_path / "Results" / "ROC_Curve.png").size[::-1]


def test_an_unreadable_tree_file_is_reported_and_the_rest_evaluated(
    tree: Path, weights_dir: Path, tmp_path: Path
) -> None:
    """One unreadable file in a split (seen aborting a whole evaluate run) is left out of every
    view, named with its reason on stderr and in unreadable.csv and the report, and the exit code
    says something failed; the other images are scored as without it."""
    from deepcovidxr.config.inference_stages import EnsembleConfig

    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    for split in ("Validation", "Test"):
        good = next((copy / "331" / "crop" / split / "Negative").glob("*.png"))
        shutil.copy(good, copy / "331" / "crop" / split / "Negative" / "zz_bad.png")  # readable in one view
        (copy / "224" / "uncrop" / split / "Negative" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")

    def evaluate(tree_root: Path, out: Path):
        return run_script(
            *("evaluate.py", "-w", weights_dir, "-i", tree_root, "-o", out),
            *("-e", weights_dir / "ensemble_weights.json", "--bootstrap", "20", "--batch-size", "4"),
        )

    done = evaluate(copy, tmp_path / "eval")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "zz_bad.png" in done.stderr and "not a readable image" in done.stderr
    results = tmp_path / "eval" / "Results"
    rows = _rows(results / "predictions.csv")
    expected = sorted(
        p.relative_to(tree / "224" / "uncrop" / "Test").as_posix()
        for p in (tree / "224" / "uncrop" / "Test").rglob("*.png")
    )
    assert sorted(rows) == expected  # every readable image, the bad one left out
    listed = list(csv.DictReader((results / "unreadable.csv").open(encoding="utf-8")))
    assert [(r["split"], r["Filenames"]) for r in listed] == [("Test", "Negative/zz_bad.png")]
    assert "224/uncrop" in listed[0]["error"]
    summary = json.loads((results / "metrics.json").read_text(encoding="utf-8"))
    assert summary["n"] == len(expected) and list(summary["unreadable"]) == ["Negative/zz_bad.png"]
    assert "zz_bad.png" in (results / "report.html").read_text(encoding="utf-8")
    # the same scores as on the tree without the bad file
    clean = tmp_path / "clean"
    assert evaluate(tree, clean).returncode == 0
    assert not (clean / "Results" / "unreadable.csv").exists()
    clean_rows = _rows(clean / "Results" / "predictions.csv")
    assert {n: r["Scores"] for n, r in rows.items()} == {n: r["Scores"] for n, r in clean_rows.items()}
    # ensemble.py: both splits, weights still written
    result = ensemble_stage.run(
        EnsembleConfig(weights=weights_dir, data=copy, output=tmp_path / "ens", draws=50, members=MEMBERS, batch_size=4)
    )
    assert result.exit_code == 1 and result.report.is_file()
    listed = list(csv.DictReader((tmp_path / "ens" / "Ensemble_Results" / "unreadable.csv").open(encoding="utf-8")))
    assert [(r["split"], r["Filenames"]) for r in listed] == [
        ("Validation", "Negative/zz_bad.png"),
        ("Test", "Negative/zz_bad.png"),
    ]


def test_vissample_writes_fused_heatmaps_in_original_coordinates(
    weights_dir: Path, messy_images: Path, tmp_path: Path
) -> None:
    from deepcovidxr.imaging.reader import read_gray

    done = run_script(
        "visSample.py",
        "-w",
        weights_dir,
        "-p",
        messy_images,
        "-o",
        tmp_path,
        "-e",
        weights_dir / "ensemble_weights.json",
        "--target",
        "positive",
    )
    assert done.returncode == 1, done.stderr[-3000:]  # the broken file is reported, the rest explained
    folder = tmp_path / "gradCAM_img"
    for stem, source in [("a", "a.png"), ("sub__b", "sub/b.png"), ("sub__c", "sub/c.dcm")]:
        assert (folder / f"{stem}_gradCAM.png").stat().st_size > 10_000
        heatmap = np.load(folder / f"{stem}_heatmap.npy")
        original = read_gray(messy_images / source)
        scale = 512 / max(original.shape)
        expected = (
            original.shape if scale >= 1 else (round(original.shape[0] * scale), round(original.shape[1] * scale))
        )
        assert heatmap.shape == expected
        assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0, abs=1e-6)
    assert "broken.png" in done.stderr


@pytest.mark.parametrize("method", ["vote", "max"])
def test_combination_rule_travels_with_the_weights(tree: Path, weights_dir: Path, tmp_path: Path, method: str) -> None:
    """Regression (issue 10, defect 3): --method vote|max used to save uniform weights that every
    later stage replayed as a weighted mean."""
    from deepcovidxr.config.inference_stages import EnsembleConfig, EvaluateConfig

    json_path = ensemble_stage.run(
        EnsembleConfig(
            weights=weights_dir, data=tree, output=tmp_path / "fit", method=method, members=MEMBERS, batch_size=4
        )
    ).report
    assert json.loads(json_path.read_text(encoding="utf-8"))["rule"] == method
    for source in (json_path, json_path.with_name("ensemble_weights.pickle")):  # the pickle finds its JSON
        out = tmp_path / source.suffix.lstrip(".")
        evaluate_stage.run(
            EvaluateConfig(
                weights=weights_dir, image=tree, output=out, ensemble_weights=source, batch_size=4, bootstrap=50
            )
        )
        rows = list(csv.DictReader((out / "Results" / "predictions.csv").open(encoding="utf-8")))
        members = np.array([[float(r[m]) for m in MEMBERS] for r in rows])
        expected = (members >= 0.5).mean(axis=1) if method == "vote" else members.max(axis=1)
        assert np.allclose([float(r["Scores"]) for r in rows], expected, atol=1e-6)
        assert not np.allclose(expected, members.mean(axis=1))  # the mean would be a different answer


def test_vissample_batches_the_crop_and_streams_the_maps(
    weights_dir: Path, messy_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 10, defect 5): the U-Net ran once per image (each padded to a batch of 16)
    and every image's maps were computed in one pass and held in memory together."""
    from deepcovidxr.config.inference_stages import GradcamConfig
    from deepcovidxr.explain import ensemble_cam
    from deepcovidxr.lungs.cropper import LungCropper
    from deepcovidxr.stages import vis_sample as explain

    unet_batches, cam_batches = [], []
    probabilities, member_cams = LungCropper.probabilities, ensemble_cam.member_cams

    def count_unet(self, inputs):
        unet_batches.append(len(inputs))
        return probabilities(self, inputs)

    def count_cams(model, layer, inputs):
        cam_batches.append(len(inputs))
        return member_cams(model, layer, inputs)

    monkeypatch.setattr(LungCropper, "probabilities", count_unet)
    monkeypatch.setattr(ensemble_cam, "member_cams", count_cams)
    config = GradcamConfig(
        weights=weights_dir,
        path=messy_images,
        output=tmp_path,
        ensemble_weights=weights_dir / "ensemble_weights.json",
        batch_size=2,
    )
    result = explain.run(config)
    assert unet_batches == [1, 2]  # 4 files in batches of 2 (a+broken, b+c); broken.png never reaches it
    assert cam_batches == [2, 1] * len(MEMBERS)  # per member, in batches, never the whole folder
    rows = {r["file"]: r for r in csv.DictReader(result.report.open(encoding="utf-8"))}
    assert rows["broken.png"]["status"] == "error" and result.exit_code == 1
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {"a.png", "sub/b.png", "sub/c.dcm"}
    assert not (tmp_path / ".scratch").exists() or not any((tmp_path / ".scratch").iterdir())


def test_predict_report_page_shows_every_picture_when_copied(folder_run, tmp_path: Path) -> None:
    """predict.py's report.html: disclaimer, the unreadable file listed with its reason, a thumbnail
    per scored image; every picture loads in headless Chromium from a copy of the folder."""
    from tests.support.browser import image_widths

    out, _ = folder_run
    copied = shutil.copytree(out, tmp_path / "copy")
    page = copied / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "not a medical device" in text and "broken.png" in text
    widths = image_widths(page)
    assert len(widths) >= 2 * 3  # the three readable files, in the highest-score and most-uncertain tables
    assert all(width > 0 for _, width in widths), widths
    rows = _rows(out / "predictions.csv")
    assert rows["broken.png"]["Scores"] == "" and rows["a.png"]["input_check"] in {"ok", "not_frontal_chest"}


def test_predict_does_not_score_flagged_images_unless_asked(weights_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "chest.png")
    Image.fromarray(np.full((400, 400), 128, np.uint8)).save(images / "blank.png")
    common = ("-w", weights_dir, "-i", images, "-e", weights_dir / "ensemble_weights.json", "--batch-size", "2")
    done = run_script("predict.py", *common, "-o", tmp_path / "default")
    assert done.returncode == 0, done.stderr[-3000:]  # a flagged image is not an error
    rows = _rows(tmp_path / "default" / "predictions.csv")
    assert rows["blank.png"]["input_check"] == "blank"
    assert rows["blank.png"]["Scores"] == "" and "input check blank" in rows["blank.png"]["error"]
    assert rows["chest.png"]["input_check"] == "ok" and rows["chest.png"]["Scores"] != ""
    done = run_script("predict.py", *common, "-o", tmp_path / "scored", "--score-flagged")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "scored" / "predictions.csv")
    assert rows["blank.png"]["input_check"] == "blank" and rows["blank.png"]["Scores"] != ""
    assert rows["chest.png"]["Scores"] == _rows(tmp_path / "default" / "predictions.csv")["chest.png"]["Scores"]


def test_predict_threshold_names_the_operating_point_stored_with_the_weights(
    folder_run, weights_dir: Path, messy_images: Path, tmp_path: Path
) -> None:
    """``--threshold youden`` decides ``Binary pred`` with the threshold ensemble.py stored, and
    ``Probability`` is the stored calibration of ``Scores``; the default stays the original's 0.5."""
    from deepcovidxr.scoring import calibration, weights_file

    default_out, _ = folder_run
    default = _rows(default_out / "predictions.csv")
    scores = sorted(float(r["Scores"]) for r in default.values() if r["Scores"])
    assert all(r["Binary pred"] == str(int(float(r["Scores"]) >= 0.5)) for r in default.values() if r["Scores"])
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.5).astype(float)
    fit = calibration.fit_from_split(labels, np.clip(0.5 + 0.2 * (labels - 0.5) + rng.normal(0, 0.1, 200), 0, 1))
    # A Youden point between the images' scores, so the decision visibly follows it.
    cut = (scores[0] + scores[1]) / 2
    stored = {**fit.to_dict(), "operating_points": {**fit.operating_points, "youden": cut}}
    folder = tmp_path / "calibrated"
    folder.mkdir()
    weights_file.save_weights(
        weights_file.load_weights(weights_dir / "ensemble_weights.json"), folder, calibration=stored
    )
    common = ("-w", weights_dir, "-i", messy_images, "-e", folder / "ensemble_weights.json", "--batch-size", "2")
    done = run_script("predict.py", *common, "-o", tmp_path / "youden", "--threshold", "youden")
    assert done.returncode == 1, done.stderr[-3000:]  # the broken file, as before
    rows = _rows(tmp_path / "youden" / "predictions.csv")
    info = json.loads((tmp_path / "youden" / "predictions_info.json").read_text(encoding="utf-8"))
    assert info["threshold"] == pytest.approx(cut) and info["threshold_rule"] == "youden"
    decided = {name: r for name, r in rows.items() if r["Scores"]}
    assert {name: r["Scores"] for name, r in decided.items()} == {
        name: r["Scores"] for name, r in default.items() if r["Scores"]
    }
    for row in decided.values():
        score = float(row["Scores"])
        assert row["Binary pred"] == str(int(score >= cut))
        assert float(row["Probability"]) == pytest.approx(float(fit.calibration.apply(score)), abs=1e-4)
    assert {r["Binary pred"] for r in decided.values()} == {"0", "1"}
    # Weights without a stored calibration cannot name an operating point: a clear error.
    done = run_script(
        "predict.py",
        *common[:4],
        "-e",
        weights_dir / "ensemble_weights.json",
        "-o",
        tmp_path / "x",
        "--threshold",
        "sens95",
    )
    assert done.returncode == 2 and "Rerun ensemble.py" in done.stderr, done.stderr[-2000:]


def test_vissample_rerun_with_another_target_redoes_the_maps(weights_dir: Path, tmp_path: Path) -> None:
    """Regression: a rerun kept every finished map, so changing --target (or the members) left the
    other class's heatmaps reported ok."""
    from deepcovidxr.config.inference_stages import GradcamConfig
    from deepcovidxr.stages import vis_sample as explain

    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    common = {"weights": weights_dir, "path": images, "output": tmp_path / "out", "batch_size": 2}
    common["ensemble_weights"] = weights_dir / "ensemble_weights.json"
    explain.run(GradcamConfig(**common, target="positive"))
    heatmap = tmp_path / "out" / "gradCAM_img" / "a_heatmap.npy"
    positive = np.load(heatmap)
    explain.run(GradcamConfig(**common, target="positive"))
    np.testing.assert_array_equal(np.load(heatmap), positive)  # same options: kept
    stamp = heatmap.stat().st_mtime_ns
    explain.run(GradcamConfig(**common, target="negative"))
    assert heatmap.stat().st_mtime_ns != stamp
    assert not np.array_equal(np.load(heatmap), positive)


def test_predict_killed_mid_run_resumes_with_the_members_left(
    weights_dir: Path, messy_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a killed predict.py restarted from zero and left its memory-mapped views in
    .scratch for good. Now each member's scores are journaled as it finishes: the rerun opens only
    the members left, gives the scores of an uninterrupted run, and removes a dead run's scratch."""
    from deepcovidxr.config.inference_stages import PredictConfig
    from deepcovidxr.inference import streaming as predictor
    from deepcovidxr.stages import predict as predict_stage

    config = PredictConfig(
        weights=weights_dir,
        input=messy_images,
        output=tmp_path / "out",
        ensemble_weights=weights_dir / "ensemble_weights.json",
        engine="keras",
        batch_size=2,
    )
    dead = tmp_path / "out" / ".scratch" / "views-999999-left"  # no such process
    dead.mkdir(parents=True)
    (dead / "224_uncrop.npy").write_bytes(b"x" * 1000)

    scores = predictor.member_scores
    calls: list[int] = []

    def dies_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # stands for kill -9 after the first member
        calls.append(1)
        return scores(*args, **kwargs)

    monkeypatch.setattr(predictor, "member_scores", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        predict_stage.run(config)
    assert not (tmp_path / "out" / "predictions.csv").exists()
    assert not dead.exists()

    monkeypatch.setattr(predictor, "member_scores", scores)
    opened: list[str] = []
    loader_init = predictor.MemberLoader.__init__

    def counting(self, members, *args, **kwargs):
        opened.extend(m.short_name for m, _ in members)
        loader_init(self, members, *args, **kwargs)

    monkeypatch.setattr(predictor.MemberLoader, "__init__", counting)
    predict_stage.run(config)
    assert opened == [MEMBERS[1]]  # the first member's scores came from the journal
    assert not (tmp_path / "out" / ".predict_journal").exists()
    resumed = _rows(tmp_path / "out" / "predictions.csv")

    fresh = predict_stage.run(PredictConfig(**{**config.__dict__, "output": tmp_path / "fresh"}))
    clean = _rows(fresh.report)
    assert resumed.keys() == clean.keys()
    for name, row in clean.items():
        assert row["Scores"] == resumed[name]["Scores"]
