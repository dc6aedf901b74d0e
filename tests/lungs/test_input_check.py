"""input_check: is an image a frontal chest film? The fitting procedure measured on patients it
never saw (cross-validation on a sample of ../shared/data), the shipped model on photos and
phantoms no fit used, the simple reasons, and the wiring into crop_img.py's report and
build_dataset.py's tree.

benchmarks/bench_input_check.py measures the same on every shared image (20 splits, all the
augmented copies the shipped fit uses); this test uses a sample and fewer copies to stay short.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.imaging.pixels import ReadInfo
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.lungs import input_check, segment
from deepcovidxr.synthetic.phantoms import make_phantom
from tests.support.helpers import shared
from tools import input_check_fit

UNSEEN_PHOTO_SEED = 200_000  # no fit used these (the shipped fit: seeds 0..199)
UNSEEN_PHANTOM_SEED = 300_000
TEST_COPIES = 3  # augmented copies per lateral / CT film in the test's fits (the shipped fit: 10)
SPLITS = 6


def _describe(cropper, grays: list[np.ndarray]) -> np.ndarray:
    rows = []
    for start in range(0, len(grays), 16):
        chunk = grays[start : start + 16]
        probabilities = cropper.probabilities(np.stack([segment.unet_input(g) for g in chunk]))
        rows += [input_check.describe(g, p) for g, p in zip(chunk, probabilities, strict=True)]
    return np.array(rows)


def _values(cropper, grays: list[np.ndarray]) -> list[str]:
    probabilities = cropper.probabilities(np.stack([segment.unet_input(g) for g in grays]))
    return [input_check.check(g, p) for g, p in zip(grays, probabilities, strict=True)]


def _sample(files: list[Path], limit: int) -> list[Path]:
    files = sorted(files)
    return files if len(files) <= limit else [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]


def _group(path: Path) -> str:
    """The patient group of a shared file (nonfrontal and cxr name patients in their manifests)."""
    return _PATIENTS.get(path.relative_to(shared()).as_posix(), path.stem)


_PATIENTS: dict[str, str] = {}


def _load_patients() -> None:
    for folder, column in (("nonfrontal", "file"), ("cxr", "file")):
        with (shared(folder) / "manifest.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                _PATIENTS[f"{folder}/{row[column]}"] = f"{folder}:{row['patient_id']}"


@pytest.fixture(scope="module")
def cross_validated(lung_cropper) -> dict[str, float]:
    """Flag rates of the fitting procedure on held-out patients, pooled over SPLITS splits."""
    _load_patients()
    kinds: list[tuple[str, list[np.ndarray], list[str]]] = []
    for kind, folder, pattern, limit in (
        ("frontal_cxr", "cxr", "*/*", 250),
        ("frontal_lungmasks", "lungmasks", "*/images/*.png", 250),
        ("lateral", "nonfrontal/lateral", "*", 100),
        ("ct", "nonfrontal/ct", "*", 100),
    ):
        files = _sample(list(shared(*folder.split("/")).glob(pattern)), limit)
        kinds.append((kind, [read_gray(p) for p in files], [_group(p) for p in files]))
    seeds = range(UNSEEN_PHOTO_SEED, UNSEEN_PHOTO_SEED + 48)
    kinds.append(("photo_synthetic", [input_check.synthetic_photo(s) for s in seeds], [f"photo:{s}" for s in seeds]))
    seeds = range(UNSEEN_PHANTOM_SEED, UNSEEN_PHANTOM_SEED + 12)
    kinds.append(
        ("frontal_phantom", [make_phantom(s, positive=bool(s % 2)).image for s in seeds], [f"ph:{s}" for s in seeds])
    )
    grays = [g for _, images, _ in kinds for g in images]
    labels = [kind for kind, images, _ in kinds for _ in images]
    groups = [group for _, _, names in kinds for group in names]
    copies = [
        (input_check_fit.augment(g, input_check_fit.seed_of(group, c)), kind, group)
        for g, kind, group in zip(grays, labels, groups, strict=True)
        if kind in ("lateral", "ct")
        for c in range(1, TEST_COPIES + 1)
    ]
    rows = _describe(lung_cropper, grays)
    extra = (_describe(lung_cropper, [c[0] for c in copies]), [c[1] for c in copies], [c[2] for c in copies])
    counts = input_check_fit.cross_validate(rows, labels, groups, extra, splits=SPLITS)
    rates = {}
    for kind, (flagged, total) in counts.items():
        rates[kind] = flagged / total
        print(f"{kind:18s} held out {total:4d} flagged {flagged:4d} ({rates[kind]:.1%})")
    return rates


def test_the_fit_flags_unseen_patients_non_frontal_films(cross_validated: dict[str, float]) -> None:
    """Issue 13: >= 90 % of lateral films, CT slices and photos flagged, <= 2 % of frontal films.
    Fitted on this sample (fewer frontal films to learn from than the shipped fit's 1191 images)
    the frontal bound is 4 %; on all of them (the benchmark, 20 splits) it is 1.7 % and 0.5 %."""
    rates = cross_validated
    assert rates["ct"] >= 0.9 and rates["lateral"] >= 0.9 and rates["photo_synthetic"] >= 0.9
    assert rates["frontal_cxr"] <= 0.04 and rates["frontal_lungmasks"] <= 0.04
    assert rates["frontal_phantom"] == 0.0  # the demo's and the tests' films are frontal chests


def test_the_shipped_fit_met_the_issue_target_when_measured() -> None:
    """The held-out figures the benchmark recorded in the shipped JSON when it fitted it."""
    held_out = input_check.load_model()["fit"]["cross_validation"]
    rate = {kind: v["flagged"] / v["held_out"] for kind, v in held_out.items()}
    assert min(rate["ct"], rate["lateral"], rate["photo_synthetic"], rate["photo_natural"]) >= 0.9, rate
    assert max(rate["frontal_cxr"], rate["frontal_lungmasks"], rate["frontal_nih"]) <= 0.02, rate


def test_the_shipped_model_on_unseen_photos_and_phantoms(lung_cropper) -> None:
    photos = [input_check.synthetic_photo(UNSEEN_PHOTO_SEED + 100 + s) for s in range(24)]
    phantoms = [make_phantom(UNSEEN_PHANTOM_SEED + 100 + s, positive=bool(s % 2)).image for s in range(8)]
    photo_values = _values(lung_cropper, photos)
    assert sum(v != input_check.OK for v in photo_values) / len(photos) >= 0.9, photo_values
    assert _values(lung_cropper, phantoms) == [input_check.OK] * len(phantoms)


def test_describe_and_features_agree() -> None:
    gray = make_phantom(7, positive=True).image
    probability = np.zeros((256, 256), np.float32)
    probability[60:200, 40:110] = probability[60:200, 146:216] = 0.95
    row = input_check.describe(gray, probability)
    assert row.shape == (len(input_check.FEATURES) + 2 * input_check.THUMB**2,)
    assert np.array_equal(row[: len(input_check.FEATURES)], input_check.features(gray, probability))
    # the lung-map thumbnail is the map itself at 16 px: two fields either side of the middle
    lungs = row[-(input_check.THUMB**2) :].reshape(input_check.THUMB, input_check.THUMB)
    assert lungs[8, 4] > 0.9 and lungs[8, 11] > 0.9 and lungs[8, 7] < 0.1 and lungs[1, 4] < 0.1


def test_simple_reasons() -> None:
    nothing = np.zeros((256, 256), np.float32)
    assert input_check.check(np.full((600, 500), 128, np.uint8), nothing) == input_check.BLANK
    assert input_check.check(np.zeros((400, 400), np.uint8), nothing) == input_check.BLANK
    rng = np.random.default_rng(0)
    assert input_check.check(rng.integers(0, 255, (40, 60), dtype=np.uint8), nothing) == input_check.TOO_SMALL
    binary = np.where(rng.random((512, 512)) < 0.5, 0, 255).astype(np.uint8)
    robust = ReadInfo("robust (header window missed the pixels)")
    assert input_check.check(binary, nothing, robust) == input_check.WINDOW_FAILED
    assert input_check.check(binary, nothing, ReadInfo("header")) != input_check.WINDOW_FAILED


def test_model_json_is_self_describing() -> None:
    model = input_check.load_model()
    assert tuple(model["features"]) == input_check.FEATURES and model["thumb"] == input_check.THUMB
    assert 0 < model["threshold"] < 1 and len(model["coef"]) == len(input_check.FEATURES) + 4
    fitted_kinds = {name.split("/")[1] for name in model["fitted_on"] if name.startswith("nonfrontal/")}
    assert fitted_kinds == {"lateral", "ct"}
    # the held-out figures of the procedure that made it travel with it
    held_out = model["fit"]["cross_validation"]
    assert held_out["ct"]["held_out"] > 0 and held_out["lateral"]["flagged"] <= held_out["lateral"]["held_out"]


def test_a_model_of_other_features_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text('{"features": ["a1"], "trees": []}', encoding="utf-8")
    with pytest.raises(RuntimeError, match="other features"):
        input_check.load_model(old)


def _frontal_and_ct() -> tuple[Path, Path]:
    return sorted(shared("lungmasks", "shenzhen", "images").glob("*.png"))[0], sorted(
        shared("nonfrontal", "ct").iterdir()
    )[0]


def test_crop_report_has_input_check(tmp_path: Path, lung_cropper) -> None:
    from deepcovidxr.config.data_stages import CropConfig
    from deepcovidxr.stages import crop

    frontal, ct = _frontal_and_ct()
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.open(frontal).save(raw / "frontal.png")
    Image.open(ct).convert("L").save(raw / "ct.png")
    Image.fromarray(np.full((300, 300), 90, np.uint8)).save(raw / "blank.png")
    result = crop.run(CropConfig(input=raw, output=tmp_path / "out", qc_montage=False), cropper=lung_cropper)
    rows = {r["file"]: r for r in csv.DictReader(result.report.open(newline="", encoding="utf-8"))}
    assert "input_check" in crop.REPORT_COLUMNS
    assert rows["frontal.png"]["input_check"] == input_check.OK
    assert rows["blank.png"]["input_check"] == input_check.BLANK
    assert rows["ct.png"]["input_check"] == input_check.NOT_FRONTAL_CHEST
    assert (tmp_path / "out" / "blank.png").is_file()  # the crop stage still crops flagged images


@pytest.mark.parametrize("keep", [False, True])
def test_build_dataset_leaves_flagged_images_out(tmp_path: Path, lung_cropper, keep: bool) -> None:
    from deepcovidxr.config.data_stages import DatasetConfig
    from deepcovidxr.contract.layout import DataTree
    from deepcovidxr.data.dataset import LEFT_OUT
    from deepcovidxr.stages import build_dataset

    frontal, _ = _frontal_and_ct()
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(3):
        Image.open(frontal).save(images / f"f{i}.png")
        rows.append((f"f{i}.png", "Negative" if i else "Positive", f"p{i}"))
    Image.fromarray(np.full((300, 300), 90, np.uint8)).save(images / "blank.png")
    rows.append(("blank.png", "Positive", "p9"))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("file", "label", "patient_id"), *rows])
    out = tmp_path / "tree"
    config = DatasetConfig(images=images, labels=labels, output=out, sizes=(64,), keep_flagged=keep)
    result = build_dataset.run(config, cropper=lung_cropper)
    manifest = {r["file"]: r for r in csv.DictReader(result.report.open(newline="", encoding="utf-8"))}
    assert manifest["blank.png"]["input_check"] == input_check.BLANK
    assert manifest["f0.png"]["input_check"] == input_check.OK
    written = {p.name for p in DataTree(out).view_dir(64, "crop").rglob("*.png")}
    if keep:
        assert "blank.png" in written and manifest["blank.png"]["status"] != LEFT_OUT
    else:
        assert "blank.png" not in written and manifest["blank.png"]["status"] == LEFT_OUT
    assert {"f0.png", "f1.png", "f2.png"} <= written
