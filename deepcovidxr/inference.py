"""The inference stages: predict (raw files), evaluate (a dataset tree's Test split) and
ensemble (fit weights on Validation, report on Test), on the shared machinery of
:mod:`deepcovidxr.predictor`.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr import ensemble, shipped
from deepcovidxr.atomic import write_text
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.layout import DataTree, Label, Member, Split, ensemble_members
from deepcovidxr.predictor import MemberLoader, ViewStore, image_seed, score_members

log = logging.getLogger(__name__)

# Package data (the authors' published weights), found the same way in a checkout and in a wheel.
DEFAULT_ENSEMBLE_WEIGHTS = shipped.ensemble_weights()
POSITIVE, NEGATIVE = "COVID-19 Positive", "COVID-19 Negative"
THRESHOLD = 0.5


@dataclass(frozen=True)
class Ensemble:
    """The members to run (with their files) and their weights, in canonical order."""

    members: list[tuple[Member, Path]]
    weights: np.ndarray
    rule: str = "weighted"  # stored with the weights (ensemble.load_rule)

    @property
    def names(self) -> list[str]:
        return [m.short_name for m, _ in self.members]

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Member scores (images, members) -> one score per image by the ensemble's rule."""
        return ensemble.combine_rule(scores, self.rule, self.weights)


def decision(score: float) -> list:
    """The original's three result columns for one ensemble score: the score, the binary call at
    THRESHOLD and its label."""
    positive = score >= THRESHOLD
    return [f"{score:.6f}", int(positive), POSITIVE if positive else NEGATIVE]


def resolve_ensemble(weights_dir: Path, ensemble_weights: Path | None, subset: tuple[str, ...] = ()) -> Ensemble:
    """Members with a non-zero weight (optionally a chosen subset, weights renormalised), each
    with its ``<Prefix>_<size>_up_<crop>.h5`` under ``weights_dir``; missing files are one error
    listing them all."""
    source = ensemble_weights or DEFAULT_ENSEMBLE_WEIGHTS
    by_name = ensemble.load_weights(source)
    chosen = [m for m in ensemble_members() if by_name.get(m.short_name, 0.0) > 0]
    if subset:
        wanted = {Member.parse(s).short_name for s in subset}
        chosen = [m for m in chosen if m.short_name in wanted]
        if not chosen:
            raise UsageError(f"none of {', '.join(subset)} has a non-zero ensemble weight")
    missing = [m.legacy_filename for m in chosen if not (Path(weights_dir) / m.legacy_filename).is_file()]
    if missing:
        raise MissingInputError(f"{weights_dir}: missing member file(s): {', '.join(missing)}")
    weights = np.array([by_name[m.short_name] for m in chosen], np.float64)
    if subset:
        weights = weights / weights.sum()
    rule = ensemble.load_rule(source)
    if rule != "weighted":
        log.info("ensemble rule %s (stored with %s)", rule, source)
    return Ensemble([(m, Path(weights_dir) / m.legacy_filename) for m in chosen], weights, rule)


def views_of(members: list[tuple[Member, Path]]) -> tuple:
    return tuple(dict.fromkeys((m.size, m.crop) for m, _ in members))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, out.getvalue())
    return path


# ---- predict ----------------------------------------------------------------------------------


def load_member_file(path: Path, member: Member):
    from deepcovidxr.models import load_member

    return load_member(path, member)


# ---- dataset tree (evaluate, ensemble) ---------------------------------------------------------


@dataclass(frozen=True)
class SplitImages:
    names: list[str]  # "<Label>/<file>", the same in every view
    labels: np.ndarray


def load_split(
    root: Path, split: Split, members: list[tuple[Member, Path]], store_folder: Path
) -> tuple[SplitImages, ViewStore]:
    """Read one split of the tree for every view the members need, pairing views by relative
    path (never by position); a file missing from or extra in a view is an error naming it.
    Listing and decoding are the training pipeline's (hidden files skipped, ``read_view``)."""
    from deepcovidxr.data import IMAGE_SUFFIXES
    from deepcovidxr.imageio import list_images, read_view

    tree = DataTree(root)
    views = views_of(members)
    listing: dict[tuple, list[str]] = {}
    for size, crop in views:
        folder = tree.split_dir(size, crop, split)
        names = (
            sorted(
                p.relative_to(folder).as_posix()
                for label in Label
                if (folder / label.value).is_dir()
                for p in list_images(folder / label.value, IMAGE_SUFFIXES)
            )
            if folder.is_dir()
            else None
        )
        if names is None:
            raise MissingInputError(f"missing folder {folder}")
        listing[(size, crop)] = names
    reference_view, reference = next(iter(listing.items()))
    for view, names in listing.items():
        if names != reference:
            extra, missing = sorted(set(names) - set(reference)), sorted(set(reference) - set(names))
            raise UsageError(
                f"{split.value}: views {reference_view[0]}/{reference_view[1].value} and {view[0]}/{view[1].value} "
                f"hold different images; only in the second: {extra[:5]}; missing from it: {missing[:5]}"
            )
    if not reference:
        raise UsageError(f"no images in the {split.value} split of {root}")
    store = ViewStore(store_folder, len(reference), views)
    for (size, crop), array in store.arrays.items():
        folder = tree.split_dir(size, crop, split)
        for index, name in enumerate(reference):
            array[index] = read_view(folder / name, size)
    labels = np.array([Label(n.split("/")[0]).index for n in reference], np.float64)
    return SplitImages(reference, labels), store


def score_split(
    root: Path, split: Split, chosen: Ensemble, scratch: Path, batch_size: int, tta: int = 0, seed: int = 0
) -> tuple[SplitImages, np.ndarray]:
    images, store = load_split(root, split, chosen.members, scratch)
    try:
        seeds = np.array([image_seed(n, seed) for n in images.names], np.int64)
        scores, _ = score_members(
            store,
            len(images.names),
            chosen.members,
            batch_size,
            tta,
            seeds,
            loader=MemberLoader(chosen.members, load_member_file),
        )
    finally:
        store.close()
    return images, scores


# ---- evaluate ---------------------------------------------------------------------------------


# ---- ensemble -------------------------------------------------------------------------------


def available_members(folder: Path, subset: tuple[str, ...] = ()) -> list[tuple[Member, Path]]:
    """Canonical-order members whose files are in ``folder`` (or the chosen subset, all required)."""
    wanted = [Member.parse(s) for s in subset] if subset else list(ensemble_members())
    found = [(m, Path(folder) / m.legacy_filename) for m in wanted if (Path(folder) / m.legacy_filename).is_file()]
    missing = [m.legacy_filename for m in wanted if not (Path(folder) / m.legacy_filename).is_file()]
    if subset and missing:
        raise MissingInputError(f"{folder}: missing member file(s): {', '.join(missing)}")
    if not found:
        raise MissingInputError(f"{folder}: no member files (<Prefix>_<size>_up_<crop>.h5)")
    if missing:
        log.warning("%d of 24 members have no file in %s; ensembling the %d present", len(missing), folder, len(found))
    return found
