"""A DICOM whose header window (or VOI LUT) misses its pixels is read with a window from the pixels
themselves, says so, and the crop report records which window was used."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.synthetic.phantoms import make_phantom

ISSUE_WINDOW = (2725, 5310)  # the window of the issue's DX file; its pixels run 32744-65535
LOW, HIGH = 32744, 65535


def _phantom16() -> np.ndarray:
    """A 256 px chest phantom (dark lungs) stored in LOW..HIGH, as the issue's file."""
    image = make_phantom(11, False, height=256, width=256).image.astype(np.float64)
    return np.round(LOW + image * ((HIGH - LOW) / 255.0)).astype(np.uint16)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = ISSUE_WINDOW,
    voi_lut: tuple[int, np.ndarray] | None = None,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dx = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dx
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = dx, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, table = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", [len(table), first, 16])  # LUTDescriptor
        item.add_new(0x00283006, "US", [int(v) for v in table])  # LUTData
        ds.VOILUTSequence = [item]
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _robust_reference(stored: np.ndarray) -> np.ndarray:
    """The documented fallback, computed here on its own: the 1st..99th percentile of the body (the
    pixels strictly between the image's minimum and maximum, which padding and saturation take)."""
    values = stored.astype(np.float64)
    body = values[(values > values.min()) & (values < values.max())]
    low, high = np.percentile(body, [1, 99])
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _close(actual: np.ndarray, expected_unit: np.ndarray) -> None:
    expected = np.round(expected_unit * 255.0).astype(np.uint8)
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99


def _mediastinum_minus_lungs(gray: np.ndarray) -> float:
    h, w = gray.shape
    rows = slice(int(0.25 * h), int(0.7 * h))
    centre = np.median(gray[rows, int(0.45 * w) : int(0.55 * w)])
    lungs = max(
        np.median(gray[rows, int(0.2 * w) : int(0.35 * w)]), np.median(gray[rows, int(0.65 * w) : int(0.8 * w)])
    )
    return float(centre) - float(lungs)


def test_header_window_off_the_pixels_falls_back_to_a_robust_window(tmp_path: Path) -> None:
    stored = _phantom16()
    path = _write_dicom(tmp_path / "dx.dcm", stored)
    gray = read_gray(path)
    assert gray.std() > 20, f"blank image: std {gray.std():.1f}, values {np.unique(gray)[:5]}"
    _close(gray, _robust_reference(stored))
    assert _mediastinum_minus_lungs(gray) > 10

    from deepcovidxr.imaging.reader import read_gray_info

    again, info = read_gray_info(path)
    np.testing.assert_array_equal(again, gray)
    assert info.window == "robust (header window missed the pixels)" and info.fallback


def test_voi_lut_off_the_pixels_falls_back_too(tmp_path: Path) -> None:
    stored = _phantom16()
    ramp = np.linspace(0, 65535, 4096).round().astype(np.uint16)  # maps 0..4095; the pixels lie far above
    path = _write_dicom(tmp_path / "lut.dcm", stored, window=None, voi_lut=(0, ramp))
    gray = read_gray(path)
    assert gray.std() > 20
    _close(gray, _robust_reference(stored))

    from deepcovidxr.imaging.reader import read_gray_info

    assert read_gray_info(path)[1].window == "robust (VOI LUT missed the pixels)"


def test_monochrome1_with_a_missed_window_is_inverted_after_the_fallback(tmp_path: Path) -> None:
    stored = (LOW + HIGH - _phantom16().astype(np.int64)).astype(np.uint16)  # bright lungs as stored
    path = _write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    gray = read_gray(path)
    assert gray.std() > 20
    _close(gray, 1.0 - _robust_reference(stored))
    assert _mediastinum_minus_lungs(gray) > 10  # dark lungs, as MONOCHROME2 displays them


def test_a_window_that_fits_is_kept(tmp_path: Path) -> None:
    from deepcovidxr.imaging.reader import read_gray_info

    stored = _phantom16()
    center, width = 49000.0, 30000.0
    gray, info = read_gray_info(_write_dicom(tmp_path / "fit.dcm", stored, window=(center, width)))
    expected = np.clip((stored - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    np.testing.assert_array_equal(gray, np.round(expected * 255.0).astype(np.uint8))
    assert info.window == "header" and not info.fallback


def test_shared_dicoms_keep_their_header_windows() -> None:
    from deepcovidxr.imaging.reader import ImageReadError, read_gray_info
    from tests.support.helpers import shared

    for path in sorted(shared("dicom").glob("*.dcm")):
        try:
            _, info = read_gray_info(path)
        except ImageReadError:
            continue
        assert not info.fallback, path.name


def test_crop_report_records_the_window(tmp_path: Path, lung_cropper) -> None:
    from deepcovidxr.config.data_stages import CropConfig
    from deepcovidxr.stages.crop import run as run_crop

    source = tmp_path / "in"
    source.mkdir()
    _write_dicom(source / "missed.dcm", _phantom16())
    Image.fromarray(make_phantom(12, False, height=256, width=256).image).save(source / "plain.png")
    config = CropConfig(input=source, output=tmp_path / "out", qc_montage=False, batch_size=2, workers=1)
    result = run_crop(config, cropper=lung_cropper)
    with result.report.open(newline="", encoding="utf-8") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert rows["missed.dcm"].get("window") == "robust (header window missed the pixels)", rows["missed.dcm"]
    assert rows["plain.png"]["window"] == "8-bit"
    assert rows["missed.dcm"]["status"] != "fallback", rows["missed.dcm"]


@pytest.mark.parametrize("window", [(200000.0, 10.0), (49000.0, 2.0)])
def test_windows_that_blacken_or_binarise_fall_back(tmp_path: Path, window: tuple[float, float]) -> None:
    """Above the pixels (all black) or so narrow that every pixel is black or white."""
    stored = _phantom16()
    gray = read_gray(_write_dicom(tmp_path / "w.dcm", stored, window=window))
    assert gray.dtype == np.uint8 and gray.shape == (256, 256) and gray.std() > 20
    _close(gray, _robust_reference(stored))
