"""What an audit reads besides the members: one split of the dataset tree (names, labels, the film
each mode starts from), each image's site and patient (``--sites``, else split_manifest.csv's
columns), and the manifest rows the leakage checks use.

Every mode starts from the tree's **uncropped** film at the largest size a member uses: the crop
views are cut from it in memory with the U-Net's box, exactly as predict.py cuts them, so the three
modes differ only by the masking. (An uncropped member at that size sees the tree's own pixels;
a crop view is cut from the resized film rather than the original, so its as-is score can differ
slightly from evaluate.py's.)
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr.contract import layout
from deepcovidxr.contract.layout import CropMode, DataTree, Member, Split
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imaging.reader import list_images
from deepcovidxr.scoring.task import task_for

log = logging.getLogger(__name__)

MANIFEST_SOURCE = layout.SPLIT_MANIFEST


@dataclass(frozen=True)
class AuditSplit:
    """One split of a tree as the audit sees it, one entry per image in ``names`` order."""

    split: Split
    size: int  # the uncropped films' size every mode starts from
    names: list[str]  # "<class>/<file>", relative to the split folder
    paths: list[Path]  # the uncropped film at ``size``
    labels: np.ndarray  # class indices into ``classes`` (binary: 1 = Positive)
    classes: tuple[str, ...]
    sites: list[str]  # "" where unknown
    patients: list[str]  # "" where unknown
    site_source: str | None  # the --sites file, split_manifest.csv, or None (no sites)


def source_size(tree: DataTree, members: list[tuple[Member, Path]]) -> int:
    """The largest size a member uses whose uncropped view the tree holds."""
    for size in sorted({m.size for m, _ in members}, reverse=True):
        if tree.view_dir(size, CropMode.UNCROP).is_dir():
            return size
    raise MissingInputError(
        f"{tree.root}: no uncrop folder at the members' sizes {sorted({m.size for m, _ in members})}; "
        "the audit masks the uncropped films (build_dataset.py writes them)"
    )


def uncropped_films(tree: DataTree, size: int, split: Split, classes: tuple[str, ...]) -> tuple[list[str], list[Path]]:
    """Every image of ``split`` in the uncropped view at ``size``, sorted by ``<class>/<file>``."""
    folder = tree.split_dir(size, CropMode.UNCROP, split)
    if not folder.is_dir():
        raise MissingInputError(f"missing folder {folder}")
    paths = [p for name in classes if (folder / name).is_dir() for p in list_images(folder / name)]
    if not paths:
        raise UsageError(f"no images in the {split.value} split of {tree.root}")
    names = [p.relative_to(folder).as_posix() for p in paths]
    return names, paths


def read_manifest(root: Path) -> list[dict[str, str]]:
    """build_dataset.py's split_manifest.csv rows, or [] when the tree has none."""
    path = Path(root) / layout.SPLIT_MANIFEST
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_sites(path: Path) -> dict[str, str]:
    """``--sites``: a CSV with columns ``file`` and ``site`` -> file -> site."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "file" not in fields or "site" not in fields:
            raise UsageError(f"{path}: needs columns file and site; found {reader.fieldnames}")
        return {row[fields["file"]].strip().replace("\\", "/"): (row[fields["site"]] or "").strip() for row in reader}


def _manifest_index(rows: list[dict[str, str]], split: Split) -> dict[str, dict[str, str]]:
    """This split's manifest rows by their name in the tree (``<label>/<name>``)."""
    return {f"{r['label']}/{r['name']}": r for r in rows if r.get("split") == split.value and r.get("name")}


def _site_of(name: str, row: dict[str, str] | None, table: dict[str, str]) -> str | None:
    """A --sites entry for the image: under its tree name, its file name in the tree, its raw path
    (split_manifest.csv's ``file``) or the raw file's name."""
    raw = (row or {}).get("file", "")
    for key in (name, name.split("/", 1)[-1], raw, raw.rsplit("/", 1)[-1]):
        if key and key in table:
            return table[key]
    return None


def audit_split(
    root: Path,
    split: Split,
    members: list[tuple[Member, Path]],
    classes: tuple[str, ...],
    sites_csv: Path | None = None,
) -> AuditSplit:
    """The split's images with labels, sites and patients (see the module docstring)."""
    tree = DataTree(root)
    size = source_size(tree, members)
    names, paths = uncropped_films(tree, size, split, classes)
    index_of = {name: i for i, name in enumerate(classes)}
    labels = np.array([index_of[n.split("/")[0]] for n in names], task_for(classes).label_dtype)
    manifest = _manifest_index(read_manifest(root), split)
    rows = [manifest.get(name) for name in names]
    patients = [(row or {}).get("patient_id", "") for row in rows]
    if sites_csv is not None:
        table = read_sites(sites_csv)
        found = [_site_of(name, row, table) for name, row in zip(names, rows, strict=True)]
        missing = [name for name, site in zip(names, found, strict=True) if site is None]
        if missing:
            raise UsageError(
                f"{sites_csv}: no site for {len(missing)} of {len(names)} images of {split.value}, e.g. {missing[:3]} "
                "(file is the name in the tree, e.g. Positive/a.png, or the raw path in split_manifest.csv)"
            )
        sites, source = [str(s) for s in found], str(sites_csv)
    elif any((row or {}).get("site") for row in rows):
        sites, source = [(row or {}).get("site", "") for row in rows], MANIFEST_SOURCE
    else:
        sites, source = [""] * len(names), None
    if source and not all(sites):
        log.warning("audit: %d image(s) have no site; they count as site ''", sum(1 for s in sites if not s))
    return AuditSplit(split, size, names, paths, labels, tuple(classes), sites, patients, source)
