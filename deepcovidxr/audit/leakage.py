"""Leakage between the splits of a tree: the same film (or a near copy: re-encoded, resized,
slightly windowed) in two splits, found by a 64-bit perceptual hash within a documented number of
bits (:mod:`deepcovidxr.imaging.perceptual_hash`), and patients with images in two splits (from
split_manifest.csv's ``patient_id``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from deepcovidxr.contract.layout import CropMode, DataTree, Split
from deepcovidxr.imaging.perceptual_hash import near_duplicates, phash
from deepcovidxr.imaging.reader import ImageReadError, list_images, read_gray

log = logging.getLogger(__name__)

# Manifest rows of images the tree does not hold (failed, left out by the input check) cannot leak.
_NOT_IN_TREE = ("error", "left_out")


def split_hashes(root: Path, size: int) -> dict[str, dict[str, int]]:
    """split -> ``<class>/<file>`` -> perceptual hash of every uncropped film at ``size`` (all the
    splits the tree holds; an unreadable file is skipped with a log line: the scoring reports it)."""
    tree = DataTree(root)
    found: dict[str, dict[str, int]] = {}
    for split in Split:
        folder = tree.split_dir(size, CropMode.UNCROP, split)
        if not folder.is_dir():
            continue
        hashes: dict[str, int] = {}
        for path in tqdm(list_images(folder), desc=f"hash {split.value}", unit="img", leave=False):
            try:
                hashes[path.relative_to(folder).as_posix()] = phash(read_gray(path))
            except ImageReadError as error:
                log.warning("%s: not hashed (%s)", path, error.reason)
        found[split.value] = hashes
    return found


def duplicates_across_splits(root: Path, size: int, max_distance: int) -> tuple[list[dict], int]:
    """Near-duplicate pairs across splits as JSON-ready dicts (nearest first) and the number of
    films hashed."""
    hashes = split_hashes(root, size)
    pairs = near_duplicates(hashes, max_distance)
    records = [
        {"a": d.name_a, "split_a": d.split_a, "b": d.name_b, "split_b": d.split_b, "distance": d.distance}
        for d in pairs
    ]
    return records, sum(len(h) for h in hashes.values())


def patients_in_two_splits(manifest: list[dict[str, str]]) -> list[dict] | None:
    """Every patient whose images in the tree sit in more than one split, or None when the
    manifest names no patient (each file was then its own patient: nothing can be checked)."""
    rows = [r for r in manifest if r.get("status") not in _NOT_IN_TREE and r.get("split")]
    if not rows or not any(r.get("patient_id") and r["patient_id"] != r.get("file") for r in rows):
        return None
    splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits[row["patient_id"]].add(row["split"])
    return [
        {"patient_id": patient, "splits": sorted(found)} for patient, found in sorted(splits.items()) if len(found) > 1
    ]
