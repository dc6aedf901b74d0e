"""deepcovidxr.imaging.masking on hand-made images and masks: what survives each edit, the fill,
and the mass share on maps whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepcovidxr.imaging import masking


def _film() -> tuple[np.ndarray, np.ndarray]:
    """A 40x40 film of grey 100: a lung (rows 10-29, cols 5-19) holding a lesion of 200, and a
    marker of 250 outside the lung (rows 2-4, cols 30-35)."""
    gray = np.full((40, 40), 100, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:20] = 255
    gray[15:18, 8:11] = 200  # lesion inside
    gray[2:5, 30:36] = 250  # marker outside
    return gray, mask


def test_each_edit_keeps_its_region_and_drops_the_other() -> None:
    """The marker outside survives lungs_removed and vanishes in lungs_only; the lesion inside,
    the reverse."""
    gray, mask = _film()
    removed = masking.lungs_removed(gray, mask)
    only = masking.lungs_only(gray, mask)
    assert np.all(removed[2:5, 30:36] == 250) and not np.any(only == 250)
    assert np.all(only[15:18, 8:11] == 200) and not np.any(removed == 200)


def test_the_default_fill_is_the_mean_of_the_region_kept() -> None:
    gray, mask = _film()
    inside = mask.astype(bool)
    only = masking.lungs_only(gray, mask)
    assert np.all(only[~inside] == round(gray[inside].mean()))
    removed = masking.lungs_removed(gray, mask)
    assert np.all(removed[inside] == round(gray[~inside].mean()))
    assert only.dtype == gray.dtype and only.shape == gray.shape
    assert np.all(gray[2:5, 30:36] == 250)  # the input is untouched


def test_the_image_mean_fill_and_a_number() -> None:
    gray, mask = _film()
    inside = mask.astype(bool)
    assert np.all(masking.lungs_only(gray, mask, fill="image")[~inside] == round(gray.mean()))
    assert np.all(masking.lungs_removed(gray, mask.astype(bool), fill=7)[inside] == 7)
    assert np.all(masking.lungs_only(gray, mask, fill=999)[~inside] == 255)  # clipped, not wrapped
    floats = gray.astype(np.float32) / 255
    assert masking.lungs_only(floats, mask)[0, 0] == pytest.approx(floats[inside].mean())


def test_nothing_kept_gives_mid_grey() -> None:
    gray, _ = _film()
    empty = np.zeros_like(gray, bool)
    assert np.all(masking.lungs_only(gray, empty) == 128)
    assert np.all(masking.lungs_removed(gray, ~empty) == 128)


def test_bad_inputs_are_refused() -> None:
    gray, mask = _film()
    with pytest.raises(ValueError, match="shape"):
        masking.lungs_only(gray, mask[:-1])
    with pytest.raises(ValueError, match="fill"):
        masking.lungs_only(gray, mask, fill="median")
    with pytest.raises(ValueError, match="2-D"):
        masking.lungs_only(np.dstack([gray] * 3), np.dstack([mask] * 3))


def test_mask_share() -> None:
    _, mask = _film()
    assert masking.mask_share(mask) == pytest.approx(20 * 15 / 1600)
    assert masking.mask_share(np.ones((3, 3), bool)) == 1.0


def test_mass_inside_on_known_maps() -> None:
    _, mask = _film()
    inside = mask.astype(bool)
    uniform = np.ones(mask.shape)
    assert masking.mass_inside(uniform, mask) == pytest.approx(masking.mask_share(mask))
    assert masking.mass_inside(inside * 3.0, mask) == 1.0
    assert masking.mass_inside(~inside * 0.5, mask) == 0.0
    mixed = np.zeros(mask.shape)
    mixed[12, 12] = 3.0  # inside
    mixed[0, 0] = 1.0  # outside
    assert masking.mass_inside(mixed, mask) == pytest.approx(0.75)


def test_mass_inside_of_an_all_zero_map_is_undefined() -> None:
    _, mask = _film()
    assert math.isnan(masking.mass_inside(np.zeros(mask.shape), mask))


def test_mass_inside_refuses_negative_or_misshapen_maps() -> None:
    _, mask = _film()
    signed = np.ones(mask.shape)
    signed[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        masking.mass_inside(signed, mask)
    with pytest.raises(ValueError, match="shape"):
        masking.mass_inside(np.ones((10, 10)), mask)
    with pytest.raises(ValueError, match="non-finite"):
        masking.mass_inside(np.full(mask.shape, np.nan), mask)
