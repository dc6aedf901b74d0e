"""The same film scores the same through the dataset tree (build_dataset.py + evaluate.py) and from
its raw file (predict.py): the tree is written lossless and every readable suffix reaches it.

Regression: tree views of JPEG inputs were re-encoded as JPEG (quality 75), moving grey levels by
up to 28 and scores by up to 5.7e-3, and TIFF/BMP files in the tree were never listed by training,
evaluation or the ensemble (the manifest said ok)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.support.helpers import run_script, save_random_members, shared

MEMBERS = ("res_224_uncrop", "res_224_crop")


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Real films as the field stores them: JPEG and PNG as published, a TIFF and a BMP copy."""
    root = tmp_path_factory.mktemp("films")
    images = root / "images"
    images.mkdir()
    positives = (
        sorted(shared("cxr", "Positive").glob("*.jpg"))[:2] + sorted(shared("cxr", "Positive").glob("*.png"))[:1]
    )
    negatives = sorted(shared("cxr", "Negative").glob("*.png"))[:3]
    rows = []
    for index, path in enumerate(positives + negatives):
        label = "Positive" if path in positives else "Negative"
        name = path.name
        if index == 2:  # a TIFF and a BMP, made from real films
            name = path.with_suffix(".tif").name
            Image.open(path).convert("L").save(images / name)
        elif index == 4:
            name = path.with_suffix(".bmp").name
            Image.open(path).convert("L").save(images / name)
        else:
            shutil.copy(path, images / name)
        rows.append([name, label, f"patient{index}"])
    labels = root / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["file", "label", "patient_id"], *rows])
    return images, labels


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_members(tmp_path_factory.mktemp("members"), MEMBERS, {MEMBERS[0]: 0.5, MEMBERS[1]: 0.5})


def test_tree_and_raw_files_give_the_same_scores(films, members: Path, tmp_path: Path) -> None:
    images, labels = films
    tree = tmp_path / "tree"
    done = run_script(
        "build_dataset.py",
        "--images",
        images,
        "--labels",
        labels,
        "-o",
        tree,
        "--sizes",
        "224",
        "--split",
        "0",
        "0",
        "1",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(p.name for p in (tree / "224" / "uncrop" / "Test").rglob("*") if p.is_file())
    assert len(written) == 6 and all(name.endswith(".png") for name in written)  # lossless, whatever came in

    evaluated = run_script(
        "evaluate.py", "-w", members, "-i", tree, "-o", tmp_path / "eval", "-e", members / "ensemble_weights.json"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    with (tmp_path / "eval" / "Results" / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        tree_scores = {Path(r["Filenames"]).name: float(r["Scores"]) for r in csv.DictReader(handle)}
    assert len(tree_scores) == 6  # the TIFF and the BMP reached evaluation

    predicted = run_script(
        "predict.py", "-w", members, "-i", images, "-o", tmp_path / "pred", "-e", members / "ensemble_weights.json"
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    with (tmp_path / "pred" / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        raw_scores = {r["Filenames"]: float(r["Scores"]) for r in csv.DictReader(handle)}
    manifest = {
        r["name"]: r["file"] for r in csv.DictReader((tree / "split_manifest.csv").open(newline="", encoding="utf-8"))
    }
    differences = {name: abs(score - raw_scores[manifest[name]]) for name, score in tree_scores.items()}
    assert max(differences.values()) <= 1e-3, differences
