"""input_check: is an image a frontal chest film? Rates on held-out shared images, the simple
reasons, and the wiring into crop_img.py's report and build_dataset.py's tree.

The rates here are on a sample of the held-out files (runtime); benchmarks/bench_input_check.py
measures them on all of them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import shared
from PIL import Image

from deepcovidxr import input_check
from deepcovidxr.imageio import read_gray
from deepcovidxr.lungs import segment
from deepcovidxr.pixels import ReadInfo
from deepcovidxr.synthetic import make_phantom

HELDOUT_PHOTO_SEED = 200_000  # never fitted on (the fit used seeds 0..199)


def _fitted_on() -> set[str]:
    return set(input_check.load_model()["fitted_on"])


def _values(cropper, grays: list[np.ndarray]) -> list[str]:
    probabilities = cropper.probabilities(np.stack([segment.unet_input(g) for g in grays]))
    return [input_check.check(g, p) for g, p in zip(grays, probabilities, strict=True)]


def _heldout(folder: str, pattern: str, limit: int | None = None) -> list[Path]:
    root = shared()
    fitted = _fitted_on()
    files = sorted(p for p in shared(*folder.split("/")).glob(pattern) if p.relative_to(root).as_posix() not in fitted)
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]
    return files


def _rate(values: list[str]) -> float:
    return sum(v != input_check.OK for v in values) / len(values)


@pytest.fixture(scope="module")
def heldout_rates(lung_cropper) -> dict[str, float]:
    kinds = {
        "frontal cxr": [read_gray(p) for p in _heldout("cxr", "*/*", 60)],
        "frontal lungmasks": [read_gray(p) for p in _heldout("lungmasks", "*/images/*.png", 40)],
        "lateral": [read_gray(p) for p in _heldout("nonfrontal/lateral", "*")],
        "ct": [read_gray(p) for p in _heldout("nonfrontal/ct", "*")],
        "photos": [input_check.synthetic_photo(HELDOUT_PHOTO_SEED + s) for s in range(24)],
        "phantoms": [make_phantom(300_000 + s, positive=bool(s % 2)).image for s in range(8)],
    }
    rates = {}
    for kind, grays in kinds.items():
        values = _values(lung_cropper, grays)
        rates[kind] = _rate(values)
        print(f"{kind:18s} held-out {len(grays):3d} flagged {rates[kind]:.1%} {sorted(set(values))}")
    return rates


def test_flag_rates_on_heldout_images(heldout_rates: dict[str, float]) -> None:
    """What the shipped model does reach (regression bounds a little below the benchmark's numbers)."""
    rates = heldout_rates
    assert rates["frontal cxr"] <= 0.05 and rates["frontal lungmasks"] <= 0.05
    assert rates["phantoms"] == 0.0  # the demo's and the tests' films are frontal chests
    assert rates["photos"] >= 0.9
    assert rates["ct"] >= 0.75 and rates["lateral"] >= 0.6


@pytest.mark.xfail(
    reason="issue 13 target not met yet: held-out CT 82 %, lateral 71 %, frontal cxr 2.2 % flagged "
    "(benchmarks/bench_input_check.py)",
    strict=False,
)
def test_flag_rates_meet_the_issue_target(heldout_rates: dict[str, float]) -> None:
    rates = heldout_rates
    assert rates["frontal cxr"] <= 0.02 and rates["frontal lungmasks"] <= 0.02
    assert rates["ct"] >= 0.9 and rates["lateral"] >= 0.9 and rates["photos"] >= 0.9


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
    assert tuple(model["features"]) == input_check.FEATURES
    assert 0 < model["threshold"] < 1 and model["trees"] and model["fitted_on"]
    fitted_kinds = {name.split("/")[1] for name in model["fitted_on"] if name.startswith("nonfrontal/")}
    assert fitted_kinds == {"lateral", "ct"}  # some of each fitted on, the rest held out


def _frontal_and_ct() -> tuple[Path, Path]:
    frontal = _heldout("lungmasks", "shenzhen/images/*.png", 1)[0]
    ct = _heldout("nonfrontal/ct", "*", 1)[0]
    return frontal, ct


def test_crop_report_has_input_check(tmp_path: Path, lung_cropper) -> None:
    from deepcovidxr.configs import CropConfig
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
    assert rows["ct.png"]["input_check"] in input_check.VALUES
    assert (tmp_path / "out" / "blank.png").is_file()  # the crop stage still crops flagged images


@pytest.mark.parametrize("keep", [False, True])
def test_build_dataset_leaves_flagged_images_out(tmp_path: Path, lung_cropper, keep: bool) -> None:
    from deepcovidxr.configs import DatasetConfig
    from deepcovidxr.dataset import LEFT_OUT
    from deepcovidxr.layout import DataTree
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
