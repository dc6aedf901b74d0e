"""crop_img.py end to end: real images, DICOM, broken files, resume, legacy names, masks."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.contract.file_report import BatchReport
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.lungs.train import dice
from tests.support.helpers import UNET_WEIGHTS, run_script, shared


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _report(folder: Path) -> dict[str, dict]:
    with (folder / "crop_report.csv").open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real radiographs (one nested), a DICOM, and four files that must fail."""
    root = tmp_path_factory.mktemp("messy") / "in"
    (root / "ward" / "dicom").mkdir(parents=True)
    cxr = shared("cxr")
    shutil.copy(cxr / "Positive" / "hannover_006f3a8a.png", root / "pos.png")
    negative = sorted((cxr / "Negative").glob("nih_*.png"))[0]
    shutil.copy(negative, root / "ward" / "neg.png")
    shutil.copy(shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm"), root / "ward" / "dicom" / "chest.dcm")
    shutil.copy(shared("dicom", "966.dcm"), root / "ward" / "dicom" / "966.dcm")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n", encoding="utf-8")
    (root / "truncated.png").write_bytes((root / "pos.png").read_bytes()[:4000])
    return root


@pytest.fixture(scope="module")
def cropped(messy_folder: Path) -> tuple[Path, Path, object, dict]:
    out = messy_folder.parent / "out"
    masks = messy_folder.parent / "masks"
    before = _snapshot(messy_folder)
    done = run_script("crop_img.py", "-f", messy_folder, "-o", out, "--save-masks", masks, "--batch-size", "2")
    return out, masks, done, before


def test_broken_files_get_error_rows_and_a_nonzero_exit(cropped) -> None:
    out, _, done, _ = cropped
    assert done.returncode == 1, done.stderr[-2000:]
    rows = _report(out)
    assert set(rows) == {
        "pos.png",
        "ward/neg.png",
        "ward/dicom/chest.dcm",
        "ward/dicom/966.dcm",
        "empty.png",
        "notes.txt",
        "truncated.png",
    }
    for name in ("empty.png", "notes.txt", "truncated.png", "ward/dicom/966.dcm"):
        assert rows[name]["status"] == "error" and rows[name]["error"], name
        assert name in done.stderr  # reported on stderr too
    assert rows["empty.png"]["error"] == "empty file (0 bytes)"
    assert "truncated" in rows["truncated.png"]["error"]
    assert list(next(csv.reader((out / "crop_report.csv").open(encoding="utf-8")))) == [
        "file",
        "status",
        "x0",
        "y0",
        "x1",
        "y1",
        "lung_fraction",
        "input_check",
        "window",
        "error",
        "fingerprint",  # what a rerun compares before it trusts the row (batch.BatchReport)
    ]


def test_good_files_get_square_crops_with_the_same_names(cropped, messy_folder: Path) -> None:
    out, _, _, _ = cropped
    rows = _report(out)
    for name, written in [
        ("pos.png", "pos.png"),
        ("ward/neg.png", "ward/neg.png"),
        ("ward/dicom/chest.dcm", "ward/dicom/chest.png"),
    ]:
        row = rows[name]
        assert row["status"] in {"ok", "one_lung"}, row
        crop = np.asarray(Image.open(out / written))
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert crop.shape == (y1 - y0, x1 - x0)
        assert crop.shape[0] == crop.shape[1], f"{name} crop is not square"
        original = read_gray(messy_folder / name)
        np.testing.assert_array_equal(crop, original[y0:y1, x0:x1])
        assert 0.1 < float(row["lung_fraction"]) < 0.6
    assert (out / "crop_qc.png").is_file() and Image.open(out / "crop_qc.png").size[0] > 100


def test_masks_are_binary_at_original_resolution(cropped, messy_folder: Path) -> None:
    _, masks, _, _ = cropped
    for name, written in [("pos.png", "pos.png"), ("ward/dicom/chest.dcm", "ward/dicom/chest.png")]:
        mask = np.asarray(Image.open(masks / written))
        assert mask.shape == read_gray(messy_folder / name).shape
        assert set(np.unique(mask)) <= {0, 255} and 0.1 < (mask > 0).mean() < 0.6


def test_input_folder_is_never_written(cropped, messy_folder: Path) -> None:
    *_, before = cropped
    assert _snapshot(messy_folder) == before


def test_rerun_skips_finished_files(cropped, messy_folder: Path) -> None:
    out, masks, _, _ = cropped
    first = _report(out)
    stamp = (out / "pos.png").stat().st_mtime_ns
    again = run_script("crop_img.py", "-f", messy_folder, "-o", out, "--save-masks", masks)
    assert again.returncode == 1  # the broken files are retried and still fail
    assert "3 already done" in again.stderr
    assert (out / "pos.png").stat().st_mtime_ns == stamp
    assert _report(out) == first


def test_legacy_names_and_single_file_input(tmp_path: Path) -> None:
    image = shared("cxr", "Positive", "hannover_006f3a8a.png")
    done = run_script("crop_img.py", "-f", image, "-o", tmp_path, "--legacy-names", "--no-qc")
    assert done.returncode == 0, done.stderr[-2000:]
    tight = np.asarray(Image.open(tmp_path / "crop" / "hannover_006f3a8a_crop.png"))
    square = np.asarray(Image.open(tmp_path / "crop_squared" / "hannover_006f3a8a_crop_squared.png"))
    assert square.shape[0] == square.shape[1]
    assert tight.shape[0] <= square.shape[0] and tight.shape[1] <= square.shape[1]
    assert not (tmp_path / "crop_qc.png").exists()


def test_output_inside_input_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), tmp_path / "in" / "a.png")
    done = run_script("crop_img.py", "-f", tmp_path / "in", "-o", tmp_path / "in" / "crops")
    assert done.returncode == 2 and "inside the input" in done.stderr
    assert not (tmp_path / "in" / "crops").exists()


def test_interrupted_report_resumes_from_its_journal(tmp_path: Path) -> None:
    report = BatchReport(tmp_path / "r.csv", ["file", "status", "error"])
    report.add({"file": "a.png", "status": "ok"})
    report.add({"file": "b.png", "status": "error", "error": "boom"})
    # no close(): the process died here
    (tmp_path / "a.png").write_bytes(b"x")
    resumed = BatchReport(tmp_path / "r.csv", ["file", "status", "error"])
    assert resumed.finished("a.png", tmp_path / "a.png")
    assert not resumed.finished("b.png")  # errors are retried
    assert not resumed.finished("a.png", tmp_path / "missing.png")  # outputs must exist
    resumed.close()
    assert not list(tmp_path.glob(".*journal"))


def test_unet_crops_keep_the_lungs_of_held_out_real_images(lung_cropper) -> None:
    """The shipped U-Net on masks it never trained on: the square box keeps >= 99 % of the true
    lung pixels, and the saved mask agrees with the manual one."""
    meta = json.loads(UNET_WEIGHTS.with_name("lung_unet.json").read_text(encoding="utf-8"))
    root = shared("lungmasks")
    held_out = meta["training_data"]["heldout_files"][::3]
    assert len(held_out) >= 20
    grays = [read_gray(root / f) for f in held_out]
    coverages, dices = [], []
    for name, gray, result in zip(held_out, grays, lung_cropper.crop(grays), strict=True):
        truth = read_gray(root / name.replace("/images/", "/masks/")) > 127
        coverages.append(result.square.crop(truth).sum() / truth.sum())
        dices.append(dice(result.full_resolution_mask(gray.shape[1], gray.shape[0]) > 0, truth))
    coverages = np.array(coverages)
    assert (coverages >= 0.99).mean() >= 0.95, sorted(coverages)[:5]
    assert np.median(coverages) >= 0.995
    assert np.mean(dices) >= 0.95, np.mean(dices)


def test_rerun_redoes_a_replaced_input_and_another_unet(tmp_path: Path, lung_cropper) -> None:
    """Regression: a rerun skipped every file whose crop existed, so a film replaced under the same
    name (or another U-Net) left the old crop reported ok."""
    from deepcovidxr.config.data_stages import CropConfig
    from deepcovidxr.stages.crop import run as run_crop

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    cxr = shared("cxr")
    shutil.copy(cxr / "Positive" / "hannover_006f3a8a.png", source / "a.png")
    config = CropConfig(input=source, output=out, unet=UNET_WEIGHTS, qc_montage=False)
    assert run_crop(config, cropper=lung_cropper).counts == {"ok": 1}
    first = (out / "a.png").read_bytes()

    other = sorted((cxr / "Negative").glob("nih_*.png"))[0]
    shutil.copy(other, source / "a.png")
    run_crop(config, cropper=lung_cropper)
    crop = np.asarray(Image.open(out / "a.png"))
    assert (out / "a.png").read_bytes() != first
    row = _report(out)["a.png"]
    x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
    np.testing.assert_array_equal(crop, read_gray(source / "a.png")[y0:y1, x0:x1])

    # the same U-Net weights under another path are another option: redone, and the rerun says why
    unet = tmp_path / "unet"
    shutil.copytree(UNET_WEIGHTS.parent, unet)
    stamp = (out / "a.png").stat().st_mtime_ns
    run_crop(CropConfig(input=source, output=out, unet=unet / UNET_WEIGHTS.name, qc_montage=False), lung_cropper)
    assert (out / "a.png").stat().st_mtime_ns != stamp
