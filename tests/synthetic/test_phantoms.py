"""Synthetic chest-X-ray phantoms: determinism, anatomy sanity, opacity placement, the set writer."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepcovidxr.synthetic.phantoms import Phantom, make_phantom, write_phantom_set

SEEDS = range(6)


@pytest.fixture(scope="module")
def negatives() -> list[Phantom]:
    return [make_phantom(seed, positive=False) for seed in SEEDS]


@pytest.fixture(scope="module")
def positives() -> list[Phantom]:
    return [make_phantom(seed, positive=True) for seed in SEEDS]


def lung_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive (y0, y1, x0, x1) of the nonzero pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    count, _, stats, centroids = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return count - 1, stats[1:], centroids[1:]


def test_same_arguments_give_identical_phantoms() -> None:
    a = make_phantom(11, positive=True)
    b = make_phantom(11, positive=True)
    assert a.label == b.label == 1
    for name in ("image", "lung_mask", "opacity_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = make_phantom(11, positive=False, height=300, width=280)
    d = make_phantom(11, positive=False, height=300, width=280)
    np.testing.assert_array_equal(c.image, d.image)


def test_different_seeds_differ(negatives: list[Phantom]) -> None:
    fixed = [make_phantom(seed, positive=False, height=256, width=256) for seed in (1, 2)]
    assert not np.array_equal(fixed[0].image, fixed[1].image)
    assert not np.array_equal(fixed[0].lung_mask, fixed[1].lung_mask)
    shapes = {p.image.shape for p in negatives}
    assert len(shapes) > 1, "sizes should vary with the seed"


def test_no_global_random_state_is_used() -> None:
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    make_phantom(5, positive=True, height=160, width=160)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_dtypes_shapes_and_default_size_range(negatives: list[Phantom], positives: list[Phantom]) -> None:
    for p in negatives + positives:
        h, w = p.image.shape
        assert p.image.dtype == np.uint8 and p.image.ndim == 2
        assert p.lung_mask.shape == p.opacity_mask.shape == (h, w)
        assert p.lung_mask.dtype == p.opacity_mask.dtype == np.uint8
        assert set(np.unique(p.lung_mask)) == {0, 255}
        assert set(np.unique(p.opacity_mask)) <= {0, 255}
        assert 320 <= h <= 560 and 320 <= w <= 560
        assert 0.8 - 1e-9 <= w / h <= 1.25 + 1e-9
        assert p.image.std() > 20, "not a flat image"
    assert all(p.label == 0 for p in negatives) and all(p.label == 1 for p in positives)


def test_explicit_sizes_and_size_range() -> None:
    assert make_phantom(1, positive=False, height=200, width=300).image.shape == (200, 300)
    h_only = make_phantom(2, positive=False, height=400).image.shape
    assert h_only[0] == 400 and 0.8 * 400 <= h_only[1] <= 1.25 * 400
    w_only = make_phantom(3, positive=True, width=350).image.shape
    assert w_only[1] == 350 and 0.8 <= 350 / w_only[0] <= 1.25
    for seed in range(3):
        h, w = make_phantom(seed, positive=False, size_range=(96, 128)).image.shape
        assert 96 <= h <= 128 and 96 <= w <= 128


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        make_phantom(-1, positive=False)
    with pytest.raises(ValueError):
        make_phantom(0, positive=False, height=10)
    with pytest.raises(ValueError):
        make_phantom(0, positive=False, size_range=(300, 200))


def test_lungs_are_two_plausible_dark_fields(negatives: list[Phantom], positives: list[Phantom]) -> None:
    for p in negatives + positives:
        h, w = p.image.shape
        lung = p.lung_mask > 0
        assert 0.12 <= lung.mean() <= 0.45
        count, stats, centroids = components(p.lung_mask)
        assert count == 2, "exactly two lung fields"
        assert all(area > 0.05 * h * w for area in stats[:, cv2.CC_STAT_AREA])
        xs = sorted(c[0] for c in centroids)
        assert xs[0] < w / 2 < xs[1], "one lung on each side"
        # lungs are taller than wide, each one
        assert all(s[cv2.CC_STAT_HEIGHT] > s[cv2.CC_STAT_WIDTH] for s in stats)

        # the thorax box (around both lungs) without the lungs is mediastinum, heart, spine and
        # chest wall: all inside the body and all denser (brighter) than the lungs
        y0, y1, x0, x1 = lung_box(lung)
        thorax = np.zeros_like(lung)
        thorax[y0 : y1 + 1, x0 : x1 + 1] = True
        lung_mean = p.image[lung].mean()
        assert p.image[thorax & ~lung].mean() > lung_mean + 25
        # the mediastinum column between the two lungs is brighter still
        mid = round((xs[0] + xs[1]) / 2)
        column = p.image[y0 : y1 + 1, mid - 2 : mid + 3]
        assert column.mean() > lung_mean + 40
        # background outside the body (left and right image edges at mid-lung rows) is dark
        assert np.median(p.image[(y0 + y1) // 2, :3]) < lung_mean + 10


def test_negatives_have_no_opacity(negatives: list[Phantom]) -> None:
    for p in negatives:
        assert not p.opacity_mask.any()


def test_positive_opacities_in_lower_lung_zones(positives: list[Phantom]) -> None:
    for p in positives:
        lung = p.lung_mask > 0
        opacity = p.opacity_mask > 0
        assert opacity.sum() > 0.01 * lung.sum(), "a visible opacity"
        assert not (opacity & ~lung).any(), "opacities stay inside the lungs"
        y0, y1, _, _ = lung_box(lung)
        rows = np.flatnonzero(opacity.any(axis=1))
        assert rows[0] >= y0 + 0.5 * (y1 - y0), "opacities only in the lower half of the lung box"
        assert opacity.sum() < 0.35 * lung.sum(), "haze, not a white-out"
        # brighter than the rest of the same lungs
        assert p.image[opacity].mean() > p.image[lung & ~opacity].mean() + 3


def test_positive_is_negative_plus_opacities(negatives: list[Phantom], positives: list[Phantom]) -> None:
    for neg, pos in zip(negatives, positives, strict=True):
        assert neg.image.shape == pos.image.shape
        np.testing.assert_array_equal(neg.lung_mask, pos.lung_mask)
        opacity = pos.opacity_mask > 0
        gain = pos.image[opacity].astype(np.float64).mean() - neg.image[opacity].mean()
        assert gain > 20, f"opacity gain {gain:.1f} gray levels is too faint"
        # everywhere away from the lungs the two images are identical
        near_lungs = cv2.dilate(pos.lung_mask, np.ones((15, 15), np.uint8)) > 0
        np.testing.assert_array_equal(neg.image[~near_lungs], pos.image[~near_lungs])


def read_rows(labels_csv: Path) -> list[dict[str, str]]:
    with labels_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["file", "label", "patient_id"]
        return list(reader)


def test_write_phantom_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    labels_csv = write_phantom_set(out, count=6, seed=3, positive_fraction=0.5, size_range=(96, 128))
    assert labels_csv == out / "labels.csv"
    rows = read_rows(labels_csv)
    assert [r["file"] for r in rows] == [f"images/phantom_{i:04d}.png" for i in range(6)]
    assert sorted(r["label"] for r in rows) == ["Negative"] * 3 + ["Positive"] * 3
    assert len({r["patient_id"] for r in rows}) == 6
    assert all(r["patient_id"].startswith("patient_") for r in rows)
    for row in rows:
        name = Path(row["file"]).name
        image = cv2.imread(str(out / row["file"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "masks" / name), cv2.IMREAD_UNCHANGED)
        opacity = cv2.imread(str(out / "opacities" / name), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.ndim == 2
        assert 96 <= image.shape[0] <= 128 and 96 <= image.shape[1] <= 128
        assert mask.shape == opacity.shape == image.shape
        assert set(np.unique(mask)) == {0, 255}
        assert opacity.any() == (row["label"] == "Positive")
        assert not (opacity & ~mask).any()
    leftovers = [p.name for p in out.rglob("*") if p.is_file() and ".part" in p.name]
    assert not leftovers

    # deterministic: a second run with the same seed writes the same bytes
    again = write_phantom_set(tmp_path / "again", count=6, seed=3, positive_fraction=0.5, size_range=(96, 128))
    assert again.read_bytes() == labels_csv.read_bytes()
    for sub in ("images", "masks", "opacities"):
        for i in range(6):
            name = f"phantom_{i:04d}.png"
            assert (out / sub / name).read_bytes() == (tmp_path / "again" / sub / name).read_bytes()
    other = write_phantom_set(tmp_path / "other", count=6, seed=4, size_range=(96, 128))
    assert (other.parent / "images/phantom_0000.png").read_bytes() != (out / "images/phantom_0000.png").read_bytes()


def test_write_phantom_set_groups_patients(tmp_path: Path) -> None:
    rows = read_rows(write_phantom_set(tmp_path, count=7, seed=1, patients=3, size_range=(80, 96)))
    assert len(rows) == 7
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["label"])
    assert len(by_patient) == 3
    assert all(pid.startswith("patient_") and len(pid) == len("patient_0000") for pid in by_patient)
    assert all(len(labels) == 1 for labels in by_patient.values()), "one label per patient"
    counts = sorted(sum(r["patient_id"] == pid for r in rows) for pid in by_patient)
    assert counts == [2, 2, 3]


def test_write_phantom_set_label_fractions(tmp_path: Path) -> None:
    rows = read_rows(write_phantom_set(tmp_path / "neg", count=3, positive_fraction=0.0, size_range=(64, 72)))
    assert {r["label"] for r in rows} == {"Negative"}
    rows = read_rows(write_phantom_set(tmp_path / "pos", count=3, positive_fraction=1.0, size_range=(64, 72)))
    assert {r["label"] for r in rows} == {"Positive"}
    empty = write_phantom_set(tmp_path / "empty", count=0)
    assert read_rows(empty) == []
    with pytest.raises(ValueError):
        write_phantom_set(tmp_path / "bad", count=2, positive_fraction=1.5)


# ---- the diffuse pathology and the three-class set ----------------------------------------------------


def test_diffuse_opacities_are_bilateral_widespread_and_seeded(negatives: list[Phantom]) -> None:
    for seed, neg in zip(SEEDS, negatives, strict=True):
        p = make_phantom(seed, positive=True, pathology="diffuse")
        assert p.label == 1 and p.pathology == "diffuse"
        np.testing.assert_array_equal(p.image, make_phantom(seed, positive=True, pathology="diffuse").image)
        np.testing.assert_array_equal(p.lung_mask, neg.lung_mask)  # the same anatomy as the negative
        lung, opacity = p.lung_mask > 0, p.opacity_mask > 0
        assert not (opacity & ~lung).any()
        assert opacity.sum() > 0.5 * lung.sum(), "widespread, not focal"
        y0, y1, x0, x1 = lung_box(lung)
        assert opacity[y0 : y0 + (y1 - y0) // 3].any(), "upper zones too"
        middle = (x0 + x1) // 2
        left, right = opacity[:, :middle].sum(), opacity[:, middle:].sum()
        assert min(left, right) > 0.25 * opacity.sum(), "both lungs"
        gain = p.image[opacity].astype(np.float64).mean() - neg.image[opacity].mean()
        assert gain > 15, f"diffuse gain {gain:.1f} gray levels is too faint"
        near_lungs = cv2.dilate(p.lung_mask, np.ones((15, 15), np.uint8)) > 0
        np.testing.assert_array_equal(neg.image[~near_lungs], p.image[~near_lungs])
    # the default pathology is unchanged: lower-zone opacities
    assert make_phantom(0, positive=True).pathology == "lower_zone"
    np.testing.assert_array_equal(
        make_phantom(0, positive=True).image, make_phantom(0, positive=True, pathology="lower_zone").image
    )
    with pytest.raises(ValueError, match="pathology"):
        make_phantom(0, positive=True, pathology="cavity")


def test_write_class_set(tmp_path: Path) -> None:
    from deepcovidxr.synthetic.phantoms import PHANTOM_CLASSES, write_class_set

    assert list(PHANTOM_CLASSES) == sorted(PHANTOM_CLASSES) == ["Diffuse", "LowerZone", "Normal"]
    labels_csv = write_class_set(tmp_path / "set", count=7, seed=5, size_range=(80, 96))
    rows = read_rows(labels_csv)
    assert [r["file"] for r in rows] == [f"images/phantom_{i:04d}.png" for i in range(7)]
    assert sorted(r["label"] for r in rows) == ["Diffuse"] * 3 + ["LowerZone"] * 2 + ["Normal"] * 2
    for row in rows:
        name = Path(row["file"]).name
        mask = cv2.imread(str(tmp_path / "set" / "masks" / name), cv2.IMREAD_UNCHANGED) > 0
        opacity = cv2.imread(str(tmp_path / "set" / "opacities" / name), cv2.IMREAD_UNCHANGED) > 0
        if row["label"] == "Normal":
            assert not opacity.any()
        elif row["label"] == "Diffuse":
            assert opacity.sum() > 0.5 * mask.sum()
        else:
            assert 0 < opacity.sum() < 0.35 * mask.sum()
    again = write_class_set(tmp_path / "again", count=7, seed=5, size_range=(80, 96))
    assert again.read_bytes() == labels_csv.read_bytes()
    for i in range(7):
        name = f"images/phantom_{i:04d}.png"
        assert (tmp_path / "set" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    grouped = read_rows(write_class_set(tmp_path / "patients", count=8, seed=1, patients=4, size_range=(64, 72)))
    by_patient: dict[str, set[str]] = {}
    for row in grouped:
        by_patient.setdefault(row["patient_id"], set()).add(row["label"])
    assert len(by_patient) == 4 and all(len(labels) == 1 for labels in by_patient.values())
    with pytest.raises(ValueError, match="unknown phantom class"):
        write_class_set(tmp_path / "bad", count=2, classes=("Normal", "Cavity"))
