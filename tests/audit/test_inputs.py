"""Which site and patient each film of the audited split gets: --sites matched by the film's name
in the tree, its file name, its raw path in split_manifest.csv or the raw file's name; else the
manifest's site column; a film --sites does not name is an error naming it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from deepcovidxr.audit.inputs import audit_split
from deepcovidxr.contract.layout import Member, Split
from deepcovidxr.errors import UsageError

MEMBERS = [(Member.parse("res_64_uncrop"), Path("unused.h5"))]
FILMS = {"Positive": ["pos__a.png", "pos__b.png"], "Negative": ["neg__c.png", "neg__d.png"]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rows = []
    for label, names in FILMS.items():
        folder = tmp_path / "64" / "uncrop" / "Test" / label
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"")  # listed, never read here
            raw = name.replace("__", "/")
            rows.append({"file": raw, "label": label, "patient_id": f"p_{name[5]}", "split": "Test", "name": name,
                         "status": "ok", "site": f"manifest_{label}"})  # fmt: skip
    with (tmp_path / "split_manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_sites_and_patients_come_from_the_manifest_without_sites_csv(root: Path) -> None:
    split = audit_split(root, Split.TEST, MEMBERS, ("Negative", "Positive"))
    assert split.names == ["Negative/neg__c.png", "Negative/neg__d.png", "Positive/pos__a.png", "Positive/pos__b.png"]
    assert list(split.labels) == [0, 0, 1, 1] and split.size == 64
    assert split.sites == ["manifest_Negative"] * 2 + ["manifest_Positive"] * 2
    assert split.patients == ["p_c", "p_d", "p_a", "p_b"] and split.site_source == "split_manifest.csv"


def test_sites_csv_matches_every_spelling_of_a_film(root: Path) -> None:
    table = "file,site\nNegative/neg__c.png,tree\nneg__d.png,flat\npos/a.png,raw\nb.png,raw_name\n"
    (root / "sites.csv").write_text(table, encoding="utf-8")
    split = audit_split(root, Split.TEST, MEMBERS, ("Negative", "Positive"), root / "sites.csv")
    assert split.sites == ["tree", "flat", "raw", "raw_name"] and split.site_source == str(root / "sites.csv")


def test_a_film_the_sites_csv_does_not_name_is_an_error(root: Path) -> None:
    (root / "sites.csv").write_text("file,site\nNegative/neg__c.png,x\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no site for 3 of 4"):
        audit_split(root, Split.TEST, MEMBERS, ("Negative", "Positive"), root / "sites.csv")
