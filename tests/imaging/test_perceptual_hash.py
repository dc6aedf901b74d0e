"""deepcovidxr.imaging.perceptual_hash: a planted near-duplicate (the same film shrunk, re-encoded
as JPEG at quality 75 and brightened) is found across splits; different films are not; the hash
against a direct DCT (scipy) computation."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.fft import dctn

from deepcovidxr.imaging import perceptual_hash as ph
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.synthetic.phantoms import make_phantom
from tests.support.helpers import shared


def _copy(gray: np.ndarray) -> np.ndarray:
    """The same film as a careless copy: shrunk to 3/4, JPEG quality 75, 10 grey levels brighter."""
    small = Image.fromarray(gray).resize((gray.shape[1] * 3 // 4, gray.shape[0] * 3 // 4), Image.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=75)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.int16)
    return np.clip(decoded + 10, 0, 255).astype(np.uint8)


def test_the_hash_is_the_median_split_of_the_low_dct_block() -> None:
    gray = make_phantom(3, True).image
    small = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    block = dctn(small.astype(np.float64), norm="ortho")[1:9, 1:9].ravel()
    expected = int("".join("1" if v > np.median(block) else "0" for v in block), 2)
    assert ph.phash(gray) == expected
    assert expected.bit_count() == 32
    assert 0 <= expected < 2**64


def test_hamming() -> None:
    assert ph.hamming(0, 0) == 0
    assert ph.hamming(0b1011, 0b0001) == 2
    assert ph.hamming(2**64 - 1, 0) == 64


def test_a_planted_copy_of_a_phantom_is_found_across_splits_and_other_phantoms_are_not() -> None:
    films = {f"p{seed}": make_phantom(seed, seed % 2 == 0).image for seed in range(8)}
    hashes = {
        "Train": {name: ph.phash(image) for name, image in films.items()},
        "Test": {"copy_of_p3": ph.phash(_copy(films["p3"])), "p99": ph.phash(make_phantom(99, False).image)},
    }
    found = ph.near_duplicates(hashes, ph.MAX_DISTANCE)
    assert [(d.split_a, d.name_a, d.split_b, d.name_b) for d in found] == [("Test", "copy_of_p3", "Train", "p3")]
    assert found[0].distance <= 2


def test_a_planted_copy_of_a_real_film_is_found_and_different_films_are_not() -> None:
    films = (
        sorted(shared("cxr", "Negative").glob("nih_*.png"))[:6] + sorted(shared("cxr", "Positive").glob("*.png"))[:6]
    )
    grays = {path.name: read_gray(path) for path in films}
    names = sorted(grays)
    hashes = {
        "Train": {name: ph.phash(grays[name]) for name in names[:8]},
        "Validation": {name: ph.phash(grays[name]) for name in names[8:]},
        "Test": {"planted": ph.phash(_copy(grays[names[0]]))},
    }
    found = ph.near_duplicates(hashes)
    assert [(d.split_a, d.name_a, d.split_b, d.name_b) for d in found] == [("Test", "planted", "Train", names[0])]


def test_pairs_inside_one_split_are_not_leakage() -> None:
    assert ph.near_duplicates({"Train": {"a": 5, "b": 5}, "Test": {"c": 2**64 - 1}}) == []


def test_the_cut_is_inclusive_and_pairs_come_nearest_first() -> None:
    hashes = {"A": {"x": 0b0000}, "B": {"far": 0b1111, "near": 0b0001, "same": 0}}
    found = ph.near_duplicates(hashes, max_distance=4)
    assert [(d.name_b, d.distance) for d in found] == [("same", 0), ("near", 1), ("far", 4)]
    assert [d.name_b for d in ph.near_duplicates(hashes, max_distance=3)] == ["same", "near"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="max_distance"):
        ph.near_duplicates({}, max_distance=65)
    with pytest.raises(ValueError, match="2-D"):
        ph.phash(np.zeros((4, 4, 3)))
