"""U-Net training augmentation: painted opacities stay inside the lung and never change the mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deepcovidxr.lungs.augment import add_lines, add_opacities, augment_pair, opacity_field
from deepcovidxr.synthetic.phantoms import make_phantom


@pytest.fixture(scope="module")
def film() -> tuple[np.ndarray, np.ndarray]:
    """A 256 px phantom film and its {0,1} float32 lung mask."""
    phantom = make_phantom(3, False, 256, 256)
    return phantom.image, (phantom.lung_mask > 0).astype(np.float32)


def test_opacity_field_lies_in_the_lung_and_favours_the_base(film) -> None:
    _, mask = film
    rows = np.flatnonzero(mask.any(axis=1))
    middle = (rows[0] + rows[-1]) // 2
    near_lung = cv2.dilate(mask, np.ones((17, 17), np.uint8)) > 0  # the edge blurs' kernels reach 8 px
    upper, lower = 0.0, 0.0
    for seed in range(40):
        field = opacity_field(np.random.default_rng(seed), mask)
        assert field.min() >= 0.0 and field.max() <= 1.0
        assert not field[~near_lung].any()
        upper += float(field[:middle].sum() / mask[:middle].sum())  # per lung pixel: the lower half is wider
        lower += float(field[middle:].sum() / mask[middle:].sum())
    assert lower > 1.5 * upper
    assert not opacity_field(np.random.default_rng(0), np.zeros_like(mask)).any()


def test_opacities_only_brighten_the_lung(film) -> None:
    image, mask = film
    changed = np.zeros(image.shape, bool)
    for seed in range(10):
        painted = add_opacities(image, mask, np.random.default_rng(seed))
        assert painted.dtype == np.uint8 and painted.shape == image.shape
        assert (painted >= image).all()
        changed |= painted != image
    inside = changed & (mask > 0)
    assert inside.sum() > 0.05 * mask.sum()
    assert not (changed & (cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0)).any()


def test_lines_are_drawn_across_the_film(film) -> None:
    image, _ = film
    dark = np.zeros_like(image)
    drawn = add_lines(dark, np.random.default_rng(1))
    assert drawn.max() >= 150 and 0 < (drawn > 0).mean() < 0.2
    assert (add_lines(image, np.random.default_rng(1)) != image).any()


def test_pathology_changes_the_image_but_never_the_mask(film) -> None:
    image, mask = film
    differing = 0
    for seed in range(8):
        plain_image, plain_mask = augment_pair(image, mask, np.random.default_rng(seed), 0.0)
        sick_image, sick_mask = augment_pair(image, mask, np.random.default_rng(seed), 1.0)
        np.testing.assert_array_equal(sick_mask, plain_mask)  # geometry is drawn first, from the same seed
        assert set(np.unique(sick_mask)) <= {0.0, 1.0}
        differing += int((sick_image != plain_image).any())
    assert differing == 8
