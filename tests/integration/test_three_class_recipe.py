"""The documented recipe for a real 3-class tree from ../shared/data (docs/data.md): the snippet
itself is run, then build_dataset.py on a sample of its table gives one folder per class in every view and split. Both
run under a plain-ASCII locale, as on the CI machine where the manifest's non-ASCII bytes broke
the recipe (the snippet and our code must say encoding="utf-8")."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from deepcovidxr.contract import classes
from tests.support.helpers import ASCII_LOCALE, REPO, run_script, shared


def recipe() -> str:
    text = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- recipe:three-class -->\s*```python\n(.*?)```\s*<!-- /recipe -->", text, re.S)
    assert block, "docs/data.md lost its 3-class recipe"
    return block.group(1)


def test_the_documented_recipe_builds_a_three_class_tree(tmp_path: Path) -> None:
    cxr = shared("cxr")
    code = recipe().replace('Path("../shared/data/cxr")', f"Path({str(cxr)!r})")
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, **ASCII_LOCALE},
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "labels_3class.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert Counter(r["label"] for r in table) == {"COVID-19": 167, "Normal": 118, "Pneumonia": 68}
    # Twelve patients per class keep the test short; the whole table works the same way.
    sample, per_class = [], Counter()
    patients: dict[str, set[str]] = {}
    for row in table:
        chosen = patients.setdefault(row["label"], set())
        if row["patient_id"] in chosen or len(chosen) < 12:
            chosen.add(row["patient_id"])
            if per_class[row["label"]] < 16:
                per_class[row["label"]] += 1
                sample.append(row)
    labels = tmp_path / "sample.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(sample)
    out = tmp_path / "tree3"
    done = run_script(
        "build_dataset.py",
        *("--images", cxr, "--labels", labels, "-o", out, "--sizes", "224", "--keep-flagged"),
        env=ASCII_LOCALE,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for crop in ("crop", "uncrop"):
        view = out / "224" / crop
        assert classes.discover(view) == ("COVID-19", "Normal", "Pneumonia")
        for split in ("Train", "Validation", "Test"):
            for name in ("COVID-19", "Normal", "Pneumonia"):
                assert any((view / split / name).iterdir()), f"{view}/{split}/{name} is empty"
    with (out / "split_manifest.csv").open(newline="", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    assert {r["label"] for r in manifest} == {"COVID-19", "Normal", "Pneumonia"}
    # No patient in two splits.
    split_of: dict[str, set[str]] = {}
    for row in manifest:
        split_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())


def test_a_two_name_table_that_is_not_binary_is_refused(tmp_path: Path) -> None:
    from deepcovidxr.data.dataset import read_labels
    from deepcovidxr.errors import UsageError

    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,cat\nb.png,dog\n", encoding="utf-8")
    try:
        read_labels(labels)
    except UsageError as error:
        assert "three or more" in str(error)
    else:
        raise AssertionError("a two-class table of other names must be refused")
    labels.write_text("file,label\na.png,Positive\nb.png,0\nc.png,covid\n", encoding="utf-8")
    assert [r.label for r in read_labels(labels)] == ["Positive", "Negative", "Positive"]
