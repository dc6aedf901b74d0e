"""The three scoring modes on films whose answer is known: a bright mark outside the lungs (a
marker, text) must vanish with the lungs only and stay with the lungs removed; a lesion inside
the lungs the other way round. The mask is hand-made and the "member" is a plain detector of
bright pixels, so the test checks the masking pipeline, not a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.audit.masked_scoring import MODES, mask_films, store_index, variants
from deepcovidxr.contract.layout import CropMode
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.reader import write_gray
from deepcovidxr.inference.streaming import ViewStore

SIDE = 128
VIEW = (64, CropMode.UNCROP)


def _lungs() -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[30:100, 20:58] = True
    mask[30:100, 70:108] = True
    return mask


def _film(lesion: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    gray = np.clip(rng.normal(120, 4, (SIDE, SIDE)), 0, 255).astype(np.uint8)
    gray[_lungs()] = 60
    if lesion == "inside":
        gray[55:70, 30:45] = 250
    else:  # a bright marker in the corner, outside both lungs
        gray[4:16, 4:16] = 250
    return gray


class _Found:
    """What the lung cropper returns for a film, with the hand-made mask."""

    class _Status:
        value = "ok"

    status = _Status()
    square = Box(0, 0, SIDE, SIDE)

    def full_resolution_mask(self, width: int, height: int) -> np.ndarray:
        assert (width, height) == (SIDE, SIDE)
        return _lungs().astype(np.uint8) * 255


def _bright(view: np.ndarray) -> float:
    """The detector: the share of bright pixels in the view."""
    return float(np.mean(view > 200))


@pytest.fixture
def scored(tmp_path: Path) -> dict[str, dict[str, float]]:
    names = ["outside", "inside"]
    paths = []
    for name in names:
        write_gray(tmp_path / f"{name}.png", _film(name))
        paths.append(tmp_path / f"{name}.png")
    store = ViewStore(tmp_path / "scratch", 3 * len(paths), (VIEW,))
    films = mask_films(paths, lambda grays: [_Found() for _ in grays], store, (VIEW,))
    scores = {
        name: {mode: _bright(store.arrays[VIEW][store_index(mode, i, len(paths))]) for mode in MODES}
        for i, name in enumerate(names)
    }
    assert films.ready == [0, 1] and films.lung_share[0] == pytest.approx(_lungs().mean())
    np.testing.assert_array_equal(films.mask(1), _lungs())
    store.close()
    return scores


def test_a_mark_outside_the_lungs_loses_its_score_when_the_outside_is_removed(scored) -> None:
    outside = scored["outside"]
    assert outside["as_is"] > 0.005
    assert outside["lungs_only"] == 0.0
    assert outside["lungs_removed"] == pytest.approx(outside["as_is"], abs=0.003)


def test_a_lesion_inside_the_lungs_loses_its_score_when_the_lungs_are_removed(scored) -> None:
    inside = scored["inside"]
    assert inside["as_is"] > 0.005
    assert inside["lungs_removed"] == 0.0
    assert inside["lungs_only"] == pytest.approx(inside["as_is"], abs=0.003)


def test_the_fill_is_the_mean_of_the_pixels_kept() -> None:
    gray, lungs = _film("inside"), _lungs()
    modes = variants(gray, lungs)
    assert set(np.unique(modes["lungs_only"][~lungs])) == {round(float(gray[lungs].mean()))}
    assert set(np.unique(modes["lungs_removed"][lungs])) == {round(float(gray[~lungs].mean()))}
    np.testing.assert_array_equal(modes["lungs_only"][lungs], gray[lungs])


def test_an_unreadable_film_is_reported_and_the_rest_masked(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    write_gray(tmp_path / "good.png", _film("inside"))
    store = ViewStore(tmp_path / "scratch", 6, (VIEW,))
    films = mask_films([tmp_path / "bad.png", tmp_path / "good.png"], lambda g: [_Found() for _ in g], store, (VIEW,))
    store.close()
    assert films.ready == [1] and list(films.errors) == [0] and films.errors[0]


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_phantoms_lesion_follows_the_mode_that_keeps_it(where: str) -> None:
    """A chest phantom and its twin without the lesion (``make_phantom(s, True)`` is ``make_phantom(s,
    False)`` plus opacities), with the phantom's true lung mask: the lesion (its opacities inside the
    lungs, or a bright patch painted outside them) is the only difference between the twins. It
    survives in the mode that keeps its region and vanishes from the other."""
    from deepcovidxr.synthetic.phantoms import make_phantom

    sick, healthy = make_phantom(11, True, 256, 256), make_phantom(11, False, 256, 256)
    lungs = sick.lung_mask > 0
    if where == "inside":
        region = sick.opacity_mask > 0
        with_lesion = sick.image
    else:
        region = np.zeros_like(lungs)
        region[8:40, 8:40] = True
        assert not (region & lungs).any()
        with_lesion = healthy.image.copy()
        with_lesion[region] = 250
    assert region.any()
    lesion = {mode: variants(with_lesion, lungs)[mode] for mode in MODES}
    twin = {mode: variants(healthy.image, lungs)[mode] for mode in MODES}

    def signal(mode: str) -> float:
        return float(np.abs(lesion[mode][region].astype(float) - twin[mode][region].astype(float)).mean())

    kept, gone = ("lungs_only", "lungs_removed") if where == "inside" else ("lungs_removed", "lungs_only")
    assert signal("as_is") > 5
    assert signal(kept) == pytest.approx(signal("as_is"))
    assert signal(gone) < 1  # the fill, the same (within rounding) for both twins
