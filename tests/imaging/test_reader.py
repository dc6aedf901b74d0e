"""The image reader: every PNG/JPEG mode and every DICOM file in ../shared/data/dicom."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.imaging.reader import (
    DecodeError,
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    UnsupportedFormatError,
    iter_input_files,
    read_gray,
)
from tests.support.helpers import shared

GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64, left dark, right bright


def _save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_gray_png_round_trips_exactly(tmp_path: Path) -> None:
    path = _save(tmp_path, "g.png", Image.fromarray(GRADIENT))
    out = read_gray(path)
    assert out.dtype == np.uint8 and out.shape == GRADIENT.shape
    np.testing.assert_array_equal(out, GRADIENT)


def test_16bit_png_is_scaled_by_its_bit_depth_not_stretched(tmp_path: Path) -> None:
    # The rule changed with defect 2 (one reader): 16-bit data are scaled by their (inferred) bit
    # depth, not min-max stretched per image, so an 8-bit image and its 16-bit copy read alike.
    values = GRADIENT.astype(np.uint16) * 16  # a 12-bit image (max 4032) stored in the low bits
    path = _save(tmp_path, "g16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = read_gray(path)
    expected = np.round(values * (255.0 / 4095.0)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 251  # not stretched to 255


def test_rgb_png_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.stack([GRADIENT, GRADIENT, GRADIENT], axis=-1)
    out = read_gray(_save(tmp_path, "rgb.png", Image.fromarray(rgb)))
    np.testing.assert_array_equal(out, GRADIENT)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    out = read_gray(_save(tmp_path, "red.png", Image.fromarray(red)))
    assert np.all(out == round(0.299 * 255))  # ITU-R 601 luma, as Pillow's "L"


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    out = read_gray(_save(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")))
    assert np.all(out[:2] == 200) and np.all(out[2:] == 0)


def test_palette_and_la_and_bilevel_png(tmp_path: Path) -> None:
    palette = Image.fromarray(GRADIENT).convert("P")
    np.testing.assert_array_equal(read_gray(_save(tmp_path, "p.png", palette)), GRADIENT)
    la = Image.fromarray(GRADIENT).convert("LA")
    np.testing.assert_array_equal(read_gray(_save(tmp_path, "la.png", la)), GRADIENT)
    bilevel = Image.fromarray((GRADIENT > 127).astype(np.uint8) * 255).convert("1")
    out = read_gray(_save(tmp_path, "b.png", bilevel))
    assert set(np.unique(out)) == {0, 255}


def test_jpeg_gray_and_rgb(tmp_path: Path) -> None:
    out = read_gray(_save(tmp_path, "g.jpg", Image.fromarray(GRADIENT), quality=95))
    assert out.shape == GRADIENT.shape and np.abs(out.astype(int) - GRADIENT).mean() < 3
    rgb = Image.fromarray(np.stack([GRADIENT] * 3, axis=-1))
    out = read_gray(_save(tmp_path, "c.jpeg", rgb, quality=95))
    assert out.ndim == 2 and np.abs(out.astype(int) - GRADIENT).mean() < 3


def test_empty_truncated_and_non_image_files_raise_typed_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"empty\.png: empty file"):
        read_gray(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image", encoding="utf-8")
    with pytest.raises(UnsupportedFormatError) as caught:
        read_gray(text)
    assert caught.value.path == text and "not a readable image" in caught.value.reason
    good = _save(
        tmp_path, "full.png", Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8))
    )
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DecodeError, match="truncated"):
        read_gray(truncated)
    with pytest.raises(ImageReadError, match=r"cannot read file"):
        read_gray(tmp_path / "missing.png")


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims a huge image (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(ImageTooLargeError, match=r"pixel limit|decompression bomb"):
        read_gray(bomb)


# ---- DICOM: every file of ../shared/data/dicom ------------------------------------------------


def _dicom_manifest() -> list[dict]:
    with (shared("dicom") / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _mediastinum_minus_lungs(gray: np.ndarray) -> float:
    """Central band minus the darker of the two lung bands (positive on a dark-lung chest film)."""
    h, w = gray.shape
    rows = slice(int(0.25 * h), int(0.7 * h))
    centre = np.median(gray[rows, int(0.45 * w) : int(0.55 * w)])
    lungs = max(
        np.median(gray[rows, int(0.15 * w) : int(0.35 * w)]), np.median(gray[rows, int(0.65 * w) : int(0.85 * w)])
    )
    return float(centre) - float(lungs)


def test_broken_dicom_fails_cleanly() -> None:
    path = shared("dicom", "966.dcm")
    with pytest.raises(DecodeError) as caught:
        read_gray(path)
    assert caught.value.path == path
    assert "cannot decode pixel data" in caught.value.reason and "1.2.840.10008.1.2.4.90" in caught.value.reason


@pytest.mark.parametrize(
    "name",
    [
        "RG1_J2KI.dcm",
        "966_fixed.dcm",
        "Fake_MONOHR1.dcm",
        "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        "c64d5667-a776-4f95-9e21-bfabafb07740.dcm",
    ],
)
def test_chest_dicoms_decode_with_dark_lungs(name: str) -> None:
    rows = {r["file"]: r for r in _dicom_manifest()}
    assert name in rows, f"{name} not in the DICOM manifest"
    gray = read_gray(shared("dicom", name))
    assert gray.dtype == np.uint8
    assert gray.shape == (int(rows[name]["rows"]), int(rows[name]["columns"]))
    assert gray.max() - gray.min() > 100, "decoded image has almost no contrast"
    assert _mediastinum_minus_lungs(gray) > 10, f"{name}: lungs are not darker than the mediastinum"


def test_monochrome1_relabelled_copy_decodes_like_its_monochrome2_original() -> None:
    original = read_gray(shared("dicom", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"))
    relabelled = read_gray(shared("dicom", "Fake_MONOHR1.dcm"))
    np.testing.assert_array_equal(relabelled, original)


def test_monochrome1_inverse_lut_and_window_are_applied() -> None:
    import pydicom

    path = shared("dicom", "966_fixed.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PresentationLUTShape == "INVERSE"
    raw = ds.pixel_array.astype(np.float64)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    windowed = np.clip((raw - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    expected = np.round((1.0 - windowed) * 255).astype(np.uint8)  # displayed inverted once
    np.testing.assert_array_equal(read_gray(path), expected)


def test_extremity_dicom_decodes_with_bright_bone() -> None:
    gray = read_gray(shared("dicom", "RG3_J2KR.dcm"))
    _h, w = gray.shape
    # MONOCHROME1: the leg in the middle comes out brighter than the air either side of it
    # (the collimated borders, which hold no signal, come out white as on a film).
    leg = np.median(gray[:, int(0.45 * w) : int(0.50 * w)])
    air = max(np.median(gray[:, int(0.25 * w) : int(0.30 * w)]), np.median(gray[:, int(0.62 * w) : int(0.67 * w)]))
    assert leg > air + 80


def test_every_shared_dicom_either_decodes_or_raises_a_typed_error() -> None:
    for row in _dicom_manifest():
        path = shared("dicom", row["file"])
        if row["file"] == "966.dcm":
            with pytest.raises(DecodeError):
                read_gray(path)
        else:
            assert read_gray(path).ndim == 2


def test_iter_input_files_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.png", "a/c.dcm", "a/.hidden.png", ".git/x.png", "z.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_input_files(tmp_path)]
    assert found == ["b.png", "z.txt", "a/c.dcm"]


def test_output_name_turns_dicom_into_png() -> None:
    from deepcovidxr.contract.layout import output_name

    assert output_name(Path("a/b.dcm")) == Path("a/b.png")
    assert output_name(Path("IM0001")) == Path("IM0001.png")
    assert output_name(Path("x.JPG")) == Path("x.JPG")
