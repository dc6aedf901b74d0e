"""Mask -> components -> square box, on hand-made masks and on the real lung masks."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from deepcovidxr.imaging import geometry
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.lungs import segment
from deepcovidxr.lungs.cropper import locate
from deepcovidxr.lungs.segment import CropStatus
from tests.support.helpers import shared

SIZE = 256


def _gray_with_spine(column: int) -> np.ndarray:
    """Dark image with a bright vertical band peaking exactly at ``column``."""
    profile = np.clip(250 - 12 * np.abs(np.arange(SIZE) - column), 60, 250).astype(np.uint8)
    return np.tile(profile, (SIZE, 1))


def _probability(*rectangles: tuple[int, int, int, int]) -> np.ndarray:
    """A probability map with value 0.9 inside each (x0, y0, x1, y1) rectangle."""
    probability = np.zeros((SIZE, SIZE), np.float32)
    for x0, y0, x1, y1 in rectangles:
        probability[y0:y1, x0:x1] = 0.9
    return probability


def test_two_lungs_give_their_union_box_padded_by_8() -> None:
    lung = segment.lung_box(_probability((40, 50, 110, 200), (140, 60, 220, 210)), _gray_with_spine(128))
    assert lung.status is CropStatus.OK
    assert lung.box256 == Box(40 - 8, 50 - 8, 220 + 8, 210 + 8)
    assert lung.lung_mask256.sum() == 70 * 150 + 80 * 150


def test_one_lung_is_mirrored_about_the_spine() -> None:
    lung = segment.lung_box(_probability((40, 50, 110, 200)), _gray_with_spine(128))
    assert lung.status is CropStatus.ONE_LUNG
    # columns 40..109 mirrored about column 128 are 147..216, so the exclusive end is 217
    assert lung.box256 == Box(40 - 8, 50 - 8, 217 + 8, 200 + 8)


def test_two_components_on_one_side_are_mirrored_too() -> None:
    # two blobs left of the spine (a lung split by an opacity): the box must still cover both sides
    lung = segment.lung_box(_probability((30, 40, 100, 110), (30, 130, 100, 210)), _gray_with_spine(128))
    assert lung.box256.x0 == 30 - 8 and lung.box256.x1 == (2 * 128 - 30 + 1) + 8


def test_small_debris_and_thin_lines_are_ignored() -> None:
    probability = _probability((40, 50, 110, 200), (140, 60, 220, 210), (0, 0, 30, 30), (120, 0, 122, 256))
    lung = segment.lung_box(probability, _gray_with_spine(128))
    # the 30x30 blob is under 2 % of the image; the 2-px line disappears in the 5x5 opening
    assert lung.box256 == Box(32, 42, 228, 218)


def test_no_lung_is_a_fallback_not_a_silent_whole_image_crop() -> None:
    lung = segment.lung_box(np.zeros((SIZE, SIZE), np.float32), _gray_with_spine(128))
    assert lung.status is CropStatus.FALLBACK and lung.lung_fraction == 0.0
    result = locate(np.zeros((300, 200), np.uint8), np.zeros((SIZE, SIZE), np.float32))
    assert result.status is CropStatus.FALLBACK and result.square == Box(0, 0, 200, 300)


def test_background_larger_than_a_lung_is_not_mistaken_for_one() -> None:
    # lungs that fill most of the image: the original dropped "the largest component" as background
    probability = _probability((5, 5, 126, 250), (130, 5, 251, 250))
    lung = segment.lung_box(probability, _gray_with_spine(128))
    assert lung.status is CropStatus.OK and lung.box256 == Box(0, 0, 256, 256)


def test_spine_column_is_searched_in_the_middle_third() -> None:
    gray = _gray_with_spine(120)
    gray[:, 10:20] = 255  # a bright edge outside the middle third must not win
    assert segment.spine_column(gray) == 120


@pytest.mark.parametrize(
    ("box", "width", "height", "expected"),
    [
        (
            Box(10, 20, 30, 60),
            100,
            100,
            Box(0, 20, 40, 60),
        ),  # grow width 20 -> 40: 10 each side, left edge pushes right
        (Box(40, 20, 60, 60), 100, 100, Box(30, 20, 70, 60)),  # centred growth
        (Box(41, 20, 60, 60), 100, 100, Box(31, 20, 71, 60)),  # odd growth: extra pixel at the end
        (Box(80, 20, 95, 60), 100, 100, Box(60, 20, 100, 60)),  # right edge pushes left
        (Box(0, 0, 90, 30), 90, 50, Box(0, 0, 90, 50)),  # cannot become square: never shrinks
        (Box(10, 10, 50, 50), 100, 100, Box(10, 10, 50, 50)),  # already square
    ],
)
def test_square_box(box: Box, width: int, height: int, expected: Box) -> None:
    squared = geometry.square_box(box, width, height)
    assert squared == expected
    assert squared.x0 >= 0 and squared.y0 >= 0 and squared.x1 <= width and squared.y1 <= height
    assert squared.x0 <= box.x0 and squared.x1 >= box.x1 and squared.y0 <= box.y0 and squared.y1 >= box.y1


def test_scale_box_maps_256_space_to_original_pixels() -> None:
    assert geometry.scale_box(Box(32, 64, 128, 256), 256, 1024, 512) == Box(128, 128, 512, 512)


def test_unet_input_is_standardised_per_image() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 120, (300, 280), dtype=np.uint8)
    b = rng.integers(100, 255, (512, 512), dtype=np.uint8)
    x = segment.unet_input(a)
    assert x.shape == (256, 256, 1) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    # the same image gives the same input whatever it is batched with (the original normalised per batch)
    np.testing.assert_array_equal(segment.unet_input(a), x)
    assert not np.allclose(segment.unet_input(b)[:10, :10], x[:10, :10])


def _lungmask_rows(limit: int | None = None) -> list[dict]:
    with (shared("lungmasks") / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return rows[:: max(1, len(rows) // limit)] if limit else rows


def test_box_rules_on_real_masks_keep_99_percent_of_the_lung() -> None:
    """Feed each true mask through the rules as if the U-Net had predicted it perfectly."""
    root = shared("lungmasks")
    worst = 1.0
    for row in _lungmask_rows():
        truth = read_gray(root / row["mask"]) > 127
        gray = read_gray(root / row["image"])
        probability = cv2.resize(truth.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        result = locate(gray, probability)
        assert result.status is not CropStatus.FALLBACK, row["mask"]
        inside = result.square.crop(truth).sum() / truth.sum()
        worst = min(worst, inside)
        assert inside >= 0.99, f"{row['mask']}: square box holds {inside:.3%} of the lung"
        assert result.square.width == result.square.height
    assert worst >= 0.99
