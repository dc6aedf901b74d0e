"""build_dataset.py: labels table -> patient-wise split -> the four-view tree."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.contract.layout import DataTree, Label, Split, flat_name
from deepcovidxr.data.dataset import LabelledImage, patient_split, read_labels
from deepcovidxr.imaging.preprocess import lanczos_resize
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.synthetic.phantoms import write_phantom_set
from tests.support.helpers import run_script


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_read_labels_accepts_common_spellings(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "l.csv", ["Filename", "Class", "Patient"], [["a.png", "1", "p1"], ["sub\\b.png", "negative", ""]]
    )
    rows = read_labels(path)
    assert rows == [
        LabelledImage("a.png", Label.POSITIVE, "p1"),
        LabelledImage("sub/b.png", Label.NEGATIVE, "sub/b.png"),
    ]


def test_read_labels_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 3"):
        read_labels(_write_csv(tmp_path / "a.csv", ["file", "label"], [["a.png", "1"], ["b.png", "perhaps"]]))
    with pytest.raises(ValueError, match="file column and a label column"):
        read_labels(_write_csv(tmp_path / "b.csv", ["image_name", "y"], [["a.png", "1"]]))
    with pytest.raises(ValueError, match="more than once"):
        read_labels(_write_csv(tmp_path / "c.csv", ["file", "label"], [["a.png", "1"], ["a.png", "0"]]))


def _cohort(patients: int, images_per_patient: int = 3) -> list[LabelledImage]:
    return [
        LabelledImage(f"p{p}_{i}.png", Label.POSITIVE if p % 3 == 0 else Label.NEGATIVE, f"p{p}")
        for p in range(patients)
        for i in range(images_per_patient)
    ]


def test_patient_split_keeps_patients_whole_and_is_seeded() -> None:
    rows = _cohort(60)
    split = patient_split(rows, (0.7, 0.15, 0.15), seed=3)
    per_patient = defaultdict(set)
    for row in rows:
        per_patient[row.patient_id].add(split[row.file])
    assert all(len(s) == 1 for s in per_patient.values())
    assert split == patient_split(rows, (0.7, 0.15, 0.15), seed=3)
    assert split != patient_split(rows, (0.7, 0.15, 0.15), seed=4)
    for label in Label:  # each split holds both classes, in about the fraction's share (a binomial draw)
        patients = {r.patient_id for r in rows if r.label is label}
        counts = {s: sum(1 for p in patients if split[f"{p}_0.png"] is s) for s in Split}
        spread = 2.5 * (len(patients) * 0.15 * 0.85) ** 0.5
        assert all(counts.values())
        assert abs(counts[Split.TEST] - 0.15 * len(patients)) <= spread
        assert abs(counts[Split.VALIDATION] - 0.15 * len(patients)) <= spread
    # the draw of a big table holds the fractions closely
    large = patient_split(_cohort(3000, 1), (0.7, 0.15, 0.15), seed=0)
    shares = Counter(large.values())
    assert abs(shares[Split.TEST] / 3000 - 0.15) < 0.02 and abs(shares[Split.TRAIN] / 3000 - 0.7) < 0.025
    with pytest.raises(ValueError, match="summing to 1"):
        patient_split(rows, (0.5, 0.1, 0.1), seed=0)


def test_flat_name_is_unique_and_dicom_becomes_png() -> None:
    assert flat_name("a.png") == "a.png"
    assert flat_name("ward1/x.dcm") == "ward1__x.png"
    assert flat_name("ward1/x.png") != flat_name("ward2/x.png")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("dataset")
    phantoms = base / "phantoms"
    labels = write_phantom_set(phantoms, 20, seed=5, patients=14, size_range=(300, 400))
    with labels.open("a", newline="", encoding="utf-8") as handle:  # a listed file that is broken
        handle.write("images/broken.png,Positive,patient_broken\n")
    (phantoms / "images" / "broken.png").write_bytes(b"garbage")
    out = base / "tree"
    done = run_script(
        "build_dataset.py", "--images", phantoms, "--labels", labels, "-o", out, "--sizes", "64", "--seed", "1"
    )
    return phantoms, out, done


def test_tree_is_complete_and_views_pair_by_name(built) -> None:
    _phantoms, out, done = built
    assert done.returncode == 1, done.stderr[-2000:]  # the broken file
    tree = DataTree(out)
    tree.check(sizes=(64,))
    crop = sorted(p.relative_to(tree.view_dir(64, "crop")) for p in tree.view_dir(64, "crop").rglob("*.png"))
    uncrop = sorted(p.relative_to(tree.view_dir(64, "uncrop")) for p in tree.view_dir(64, "uncrop").rglob("*.png"))
    assert crop == uncrop and len(crop) == 20
    for relative in crop:
        assert Image.open(tree.view_dir(64, "crop") / relative).size == (64, 64)


def test_manifest_rows_match_what_was_written(built) -> None:
    phantoms, out, _ = built
    rows = list(csv.DictReader((out / "split_manifest.csv").open(newline="", encoding="utf-8")))
    assert len(rows) == 21
    broken = next(r for r in rows if r["file"] == "images/broken.png")
    assert broken["status"] == "error" and broken["split"] and broken["error"]
    splits_of_patient = defaultdict(set)
    labels = {
        r["file"]: r["label"] for r in csv.DictReader((phantoms / "labels.csv").open(newline="", encoding="utf-8"))
    }
    for row in rows:
        splits_of_patient[row["patient_id"]].add(row["split"])
        assert row["label"] == labels[row["file"]]
        if row["status"] == "error":
            continue
        target = out / "64" / "crop" / row["split"] / row["label"] / row["name"]
        original = read_gray(phantoms / row["file"])
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        expected = lanczos_resize(original[y0:y1, x0:x1], 64)
        np.testing.assert_array_equal(np.asarray(Image.open(target)), expected)
        uncropped = out / "64" / "uncrop" / row["split"] / row["label"] / row["name"]
        np.testing.assert_array_equal(np.asarray(Image.open(uncropped)), lanczos_resize(original, 64))
    assert all(len(s) == 1 for s in splits_of_patient.values())


def test_rerun_resumes_without_redoing_work(built) -> None:
    phantoms, out, _ = built
    again = run_script(
        "build_dataset.py",
        "--images",
        phantoms,
        "--labels",
        phantoms / "labels.csv",
        "-o",
        out,
        "--sizes",
        "64",
        "--seed",
        "1",
    )
    assert again.returncode == 1
    assert "20 to do" not in again.stderr and "1 to do" in again.stderr


def _tree_names(out: Path) -> dict[str, set[str]]:
    """Every image in the tree -> the splits it sits in (any size, view and class)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in out.glob("*/*/*/*/*"):
        if path.is_file():
            found[path.name].add(path.parent.parent.name)
    return found


def test_adding_patients_never_moves_a_split_patient() -> None:
    """A patient's split depends on that patient and the seed only (regression: adding one
    patient re-drew every split)."""
    rows = _cohort(80, 1)
    before = patient_split(rows, (0.7, 0.15, 0.15), seed=2)
    more = rows + [
        LabelledImage(f"new{p}_0.png", Label.POSITIVE if p % 2 else Label.NEGATIVE, f"new{p}") for p in range(9)
    ]
    after = patient_split(more, (0.7, 0.15, 0.15), seed=2)
    assert {f: after[f] for f in before} == before


def test_rebuild_after_patients_are_added_leaves_no_image_in_two_splits(tmp_path: Path) -> None:
    """Regression: rerunning build_dataset.py into the same -o after adding patients to the table
    moved images to other splits and left their old copies behind (8 images in Train and Test)."""
    phantoms = tmp_path / "phantoms"
    labels = write_phantom_set(phantoms, 24, seed=3, patients=24, size_range=(200, 260))
    rows = list(csv.reader(labels.open(newline="", encoding="utf-8")))
    header, body = rows[0], rows[1:]
    first = _write_csv(tmp_path / "first.csv", header, body[:16])
    out = tmp_path / "tree"
    args = ["--images", phantoms, "-o", out, "--sizes", "32", "--seed", "4"]
    assert run_script("build_dataset.py", "--labels", first, *args).returncode == 0
    split_before = {n: s for n, splits in _tree_names(out).items() for s in splits}

    done = run_script("build_dataset.py", "--labels", labels, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    found = _tree_names(out)
    assert all(len(s) == 1 for s in found.values()), {n: s for n, s in found.items() if len(s) > 1}
    assert len(found) == 24
    assert all(found[n] == {s} for n, s in split_before.items())  # nothing of the first run moved
    manifest = {r["name"]: r["split"] for r in csv.DictReader((out / "split_manifest.csv").open(encoding="utf-8"))}
    assert {n: next(iter(s)) for n, s in found.items()} == manifest

    # another seed re-draws the split: every copy the old split left is removed, none stays behind
    done = run_script("build_dataset.py", "--labels", labels, *args[:-1], "9")
    assert done.returncode == 0, done.stderr[-2000:]
    found = _tree_names(out)
    assert all(len(s) == 1 for s in found.values()) and len(found) == 24
    assert "removed" in done.stderr


def test_rebuild_refuses_files_it_did_not_write(tmp_path: Path) -> None:
    phantoms = tmp_path / "phantoms"
    labels = write_phantom_set(phantoms, 8, seed=1, size_range=(200, 240))
    out = tmp_path / "tree"
    args = ["--images", phantoms, "--labels", labels, "-o", out, "--sizes", "32"]
    assert run_script("build_dataset.py", *args).returncode == 0
    stranger = out / "32" / "crop" / "Test" / "Positive" / "added_by_hand.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(stranger)
    done = run_script("build_dataset.py", *args)
    assert done.returncode == 2 and "added_by_hand.png" in done.stderr
    assert stranger.is_file()


def test_site_column_travels_into_the_manifest_and_a_changed_site_is_not_kept(tmp_path: Path) -> None:
    """A ``site`` column of the labels table lands in split_manifest.csv (audit.py reads it there);
    a rerun after a site was corrected in the table writes the corrected site, not the old row."""
    from deepcovidxr import cli

    phantoms = tmp_path / "phantoms"
    labels = write_phantom_set(phantoms, 6, seed=2, patients=6, size_range=(200, 240))
    table = list(csv.DictReader(labels.open(newline="", encoding="utf-8")))
    sites = {row["file"]: f"hospital_{row['label']}" for row in table}

    def build() -> dict[str, dict]:
        rows = [[row["file"], row["label"], row["patient_id"], sites[row["file"]]] for row in table]
        _write_csv(tmp_path / "sites.csv", ["file", "label", "patient_id", "site"], rows)
        argv = ["--images", str(phantoms), "--labels", str(tmp_path / "sites.csv"), "-o", str(tmp_path / "tree")]
        assert cli.main("build_dataset", [*argv, "--sizes", "64", "--seed", "1"]) == 0
        manifest = (tmp_path / "tree" / "split_manifest.csv").open(newline="", encoding="utf-8")
        return {row["file"]: row for row in csv.DictReader(manifest)}

    first = build()
    assert {file: row["site"] for file, row in first.items()} == sites
    corrected = table[0]["file"]
    sites[corrected] = "hospital_elsewhere"
    assert build()[corrected]["site"] == "hospital_elsewhere"
