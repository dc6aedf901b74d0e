"""The inference stages: predict (raw files), evaluate (a dataset tree's Test split) and
ensemble (fit weights on Validation, report on Test), on the shared machinery of
:mod:`deepcovidxr.inference.streaming`.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract import layout, shipped
from deepcovidxr.contract.atomic import write_text
from deepcovidxr.contract.layout import DataTree, Member, Split
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.inference.streaming import MemberLoader, ViewStore, image_seed, score_members
from deepcovidxr.scoring import combination, weights_file
from deepcovidxr.scoring.task import NEGATIVE, POSITIVE, THRESHOLD, Task, decision, task_for  # noqa: F401

log = logging.getLogger(__name__)

# Package data (the authors' published weights), found the same way in a checkout and in a wheel.
DEFAULT_ENSEMBLE_WEIGHTS = shipped.ensemble_weights()


# Multi-class evaluation: every member's probability of every class, beside predictions.csv.
MEMBER_PROBABILITIES_CSV = "member_probabilities.csv"


@dataclass(frozen=True)
class Ensemble:
    """The members to run (with their files) and their weights, in canonical order, and the
    classes they were trained on (one list for all: :func:`deepcovidxr.contract.classes.common`)."""

    members: list[tuple[Member, Path]]
    weights: np.ndarray
    rule: str = "weighted"  # stored with the weights (weights_file.load_rule)
    classes: tuple[str, ...] = class_names.BINARY
    # The Validation fit stored with the weights (weights_file.load_calibration): None for the authors'
    # weights and files written before calibration existed.
    calibration: dict | None = None
    # Why a fit stored with the weights was not kept (say, --members chose a subset of the members
    # it was fitted for); empty when nothing was dropped.
    calibration_dropped: str = ""

    @property
    def names(self) -> list[str]:
        return [m.short_name for m, _ in self.members]

    @property
    def calibrated(self) -> bool:
        """Whether ``Probability`` and the named operating points belong to these members and rule."""
        return self.calibration is not None

    @property
    def uncalibrated_reason(self) -> str:
        """Why there is no calibration, in words a report can show."""
        return self.calibration_dropped or (
            "none stored with the ensemble weights (rerun ensemble.py to fit one on Validation)"
        )

    @property
    def task(self) -> Task:
        """What differs between the binary task and a multi-class one (:mod:`deepcovidxr.scoring.task`)."""
        return task_for(self.classes)

    @property
    def rule_weights(self) -> np.ndarray:
        """The weights the rule gives the members: the stored ones for ``weighted``, equal weights for
        mean / vote / max (which ignore the stored values)."""
        if self.rule == "weighted":
            return self.weights
        return np.full(len(self.members), 1.0 / len(self.members))

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Member scores by the ensemble's rule: binary (images, members) -> one score per image;
        multi-class (images, members, classes) -> (images, classes) rows summing to 1."""
        return combination.combine_rule(scores, self.rule, self.weights)


def member_columns(names: list[str], classes: tuple[str, ...]) -> list[str]:
    """Column names of every member's probability of every class: ``<member>.p_<class>``."""
    return task_for(classes).member_columns(names)


def class_rows(
    names: list[str], labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]
) -> tuple[list[str], list[list]]:
    """The multi-class predictions table: ``Filenames``, ``Predictions`` (the argmax class),
    ``Actual`` (the folder's class), one ``p_<class>`` column per class (rows sum to 1)."""
    header = ["Filenames", "Predictions", "Actual", *(class_names.probability_column(c) for c in classes)]
    calls = probabilities.argmax(axis=1)
    rows = [
        [name, classes[int(call)], classes[int(label)], *(f"{v:.6f}" for v in row)]
        for name, label, call, row in zip(names, labels, calls, probabilities, strict=True)
    ]
    return header, rows


def resolve_ensemble(weights_dir: Path, ensemble_weights: Path | None, subset: tuple[str, ...] = ()) -> Ensemble:
    """Members with a non-zero weight (optionally a chosen subset, weights renormalised), each
    with its ``<Prefix>_<size>_up_<crop>.h5`` under ``weights_dir`` (any member the layout can name,
    the published 24 and members of other sizes); missing files are one error listing them all.
    Without ``ensemble_weights`` the authors' published weights are used, unless the member files in
    ``weights_dir`` (or the subset) are multi-class, which those weights cannot fit: then every such
    member gets an equal weight (a warning says so). A weights file that names no classes takes the
    members' (their sidecars). The calibration and operating points stored with the weights belong
    to the members they were fitted for: a subset drops them (a warning; ``calibrated`` is False)."""
    if ensemble_weights is None:
        present = available_members(weights_dir, subset)
        trained_on = class_names.common(present)
        if not task_for(trained_on).published_weights:
            # The shipped weights are the authors' binary ensemble: they can never fit these members.
            log.warning(
                "no --ensemble_weights given and the members in %s are %d-class (%s): equal weights over "
                "the %d found (%s); fit weights on Validation with ensemble.py",
                weights_dir,
                len(trained_on),
                ", ".join(trained_on),
                len(present),
                ", ".join(m.short_name for m, _ in present),
            )
            return Ensemble(present, np.full(len(present), 1.0 / len(present)), "weighted", trained_on, None)
    source = ensemble_weights or DEFAULT_ENSEMBLE_WEIGHTS
    by_name = weights_file.load_weights(source)  # canonical order, any member the layout can name
    fitted = [Member.parse(name) for name, weight in by_name.items() if weight > 0]
    chosen = fitted
    if subset:
        wanted = {Member.parse(s).short_name for s in subset}
        chosen = [m for m in fitted if m.short_name in wanted]
        if not chosen:
            raise UsageError(f"none of {', '.join(subset)} has a non-zero ensemble weight")
        unweighted = sorted(wanted - {m.short_name for m in chosen})
        if unweighted:
            log.warning("--members: %s have no non-zero weight in %s; left out", ", ".join(unweighted), source)
    missing = [m.legacy_filename for m in chosen if not (Path(weights_dir) / m.legacy_filename).is_file()]
    if missing:
        raise MissingInputError(f"{weights_dir}: missing member file(s): {', '.join(missing)}")
    weights = np.array([by_name[m.short_name] for m in chosen], np.float64)
    if subset:
        weights = weights / weights.sum()
    rule = weights_file.load_rule(source)
    if rule != "weighted":
        log.info("ensemble rule %s (stored with %s)", rule, source)
    members = [(m, Path(weights_dir) / m.legacy_filename) for m in chosen]
    trained_on = class_names.common(members)
    fitted_for = weights_file.load_classes(source)
    if fitted_for is not None and fitted_for != trained_on:
        raise UsageError(
            f"{source}: the ensemble weights were fitted for classes {list(fitted_for)}, but the members in "
            f"{weights_dir} were trained on {list(trained_on)}"
        )
    stored, dropped = weights_file.load_calibration(source), ""
    if stored is not None and len(chosen) < len(fitted):
        # A Platt map or a threshold fitted on the whole ensemble's score says nothing about a
        # subset's score (a different number for the same image): refuse to borrow it.
        left_out = [m.short_name for m in fitted if m not in chosen]
        dropped = (
            f"the calibration and operating points in {source} were fitted for {len(fitted)} members and "
            f"--members chose a subset of {len(chosen)} (without {', '.join(left_out)}); rerun ensemble.py "
            "with these --members to fit them"
        )
    elif stored is not None and not task_for(trained_on).owns(stored):
        dropped = f"the calibration in {source} was fitted for another task than these {len(trained_on)}-class members"
    if dropped:
        log.warning("calibrated: false: %s", dropped)
        stored = None
    return Ensemble(members, weights, rule, trained_on, stored, dropped)


def views_of(members: list[tuple[Member, Path]]) -> tuple:
    return tuple(dict.fromkeys((m.size, m.crop) for m, _ in members))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, out.getvalue())
    return path


# ---- dataset tree (evaluate, ensemble) ---------------------------------------------------------


@dataclass(frozen=True)
class SplitImages:
    names: list[str]  # "<class>/<file>", the same in every view
    labels: np.ndarray  # class indices into ``classes`` (binary: 1 = Positive)
    classes: tuple[str, ...] = class_names.BINARY
    # (name, reason) of the files no view could read: left out of ``names`` and the scores
    unreadable: tuple[tuple[str, str], ...] = ()


def tree_classes(view_dir: Path, split: Split, expected: tuple[str, ...]) -> tuple[str, ...]:
    """The classes of one view of the tree (:func:`deepcovidxr.contract.classes.discover`), which must be
    the members' classes. A binary tree whose split holds only one of Negative/ and Positive/ (a
    positives-only cohort, say) is still read, as before multi-class."""
    split_dir = Path(view_dir) / split.value
    try:
        found = class_names.discover(view_dir)
    except (UsageError, MissingInputError):
        present = class_names.folder_classes(split_dir) if split_dir.is_dir() else ()
        if task_for(expected).partial_splits and present and set(present) <= set(expected):
            return tuple(expected)
        raise
    if found != tuple(expected):
        raise UsageError(f"{view_dir}: the tree's classes {list(found)} are not the members' classes {list(expected)}")
    return found


@dataclass(frozen=True)
class SplitListing:
    """One split of a dataset tree as listed for scoring: the relative names (the same in every
    view the members need), each view's split folder, the classes."""

    root: Path
    split: Split
    names: list[str]
    folders: dict[tuple, Path]
    classes: tuple[str, ...]

    def read(self, name: str) -> tuple[dict[tuple, np.ndarray], str]:
        """Every view of one image (``read_view``, the training pipeline's decode) and, when a
        view cannot be read, the first reason (each failure logged)."""
        from deepcovidxr.imaging.reader import ImageReadError, read_view

        views, reason = {}, ""
        for (size, crop), folder in self.folders.items():
            try:
                views[(size, crop)] = read_view(folder / name, size)
            except ImageReadError as error:  # one bad file must not stop the split: report it, go on
                log.error("%s: %s", folder / name, error.reason)
                reason = reason or f"{size}/{crop.value}: {error.reason}"
        return views, reason

    def images(self, unreadable: dict[str, str]) -> SplitImages:
        """The readable images in order, labelled by their class folder; the others listed."""
        kept = [name for name in self.names if name not in unreadable]
        if not kept:
            raise UsageError(f"no readable image in the {self.split.value} split of {self.root}")
        labels = np.array([self.classes.index(n.split("/")[0]) for n in kept], task_for(self.classes).label_dtype)
        return SplitImages(kept, labels, self.classes, tuple(sorted(unreadable.items())))


def list_split(
    root: Path, split: Split, members: list[tuple[Member, Path]], classes: tuple[str, ...] | None = None
) -> SplitListing:
    """One split of the tree for every view the members need, views paired by relative path (never
    by position); a file missing from or extra in a view is an error naming it. Listing is the
    training pipeline's (hidden files skipped). The class folders are the tree's
    (:func:`tree_classes`), checked against ``classes`` (default: the members' common classes)."""
    from deepcovidxr.imaging.reader import list_images

    expected = tuple(classes) if classes is not None else class_names.common(members)
    tree = DataTree(root)
    listing: dict[tuple, list[str]] = {}
    for size, crop in views_of(members):
        folder = tree.split_dir(size, crop, split)
        if not folder.is_dir():
            raise MissingInputError(f"missing folder {folder}")
        tree_classes(tree.view_dir(size, crop), split, expected)
        listing[(size, crop)] = sorted(
            p.relative_to(folder).as_posix()
            for name in expected
            if (folder / name).is_dir()
            for p in list_images(folder / name)
        )
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
    folders = {view: tree.split_dir(*view, split) for view in listing}
    return SplitListing(Path(root), split, reference, folders, expected)


def load_split(
    root: Path,
    split: Split,
    members: list[tuple[Member, Path]],
    store_folder: Path,
    classes: tuple[str, ...] | None = None,
) -> tuple[SplitImages, ViewStore]:
    """One split of the tree (:func:`list_split`) read into a :class:`ViewStore`; a file some view
    cannot read is logged and left out of every view (``SplitImages.unreadable``: which, why)."""
    listing = list_split(root, split, members, classes)
    store = ViewStore(store_folder, len(listing.names), tuple(listing.folders))
    unreadable: dict[str, str] = {}
    for index, name in enumerate(listing.names):
        views, reason = listing.read(name)
        if reason:
            unreadable[name] = reason
        else:
            store.put(index, views)
    kept = [i for i, name in enumerate(listing.names) if name not in unreadable]
    if not kept:
        store.close()  # listing.images raises: nothing readable
    images = listing.images(unreadable)
    if unreadable:  # the readable images first, in order, as predict does
        for array in store.arrays.values():
            array[: len(kept)] = array[kept]
    return images, store


def write_unreadable(path: Path, splits: list[tuple[str, SplitImages]]) -> int:
    """The files of ``splits`` no view could read, listed in ``path``
    (:func:`deepcovidxr.contract.file_report.write_unreadable`); their number."""
    from deepcovidxr.contract import file_report

    rows = [(s, name, why) for s, images in splits for name, why in images.unreadable]
    return file_report.write_unreadable(path, rows)


@dataclass(frozen=True)
class EngineChoice:
    """How a stage runs its members (``--engine``, ``--precision``, ``--engine-cache``) and, for
    int8, the dataset split whose images calibrate it (never the split being scored)."""

    engine: str = "keras"
    precision: str = "fp32"
    cache: Path | None = None
    calibration_root: Path | None = None
    calibration_split: Split = Split.TRAIN

    @classmethod
    def of(cls, config, calibration_split: Split) -> EngineChoice:
        return cls(config.engine, config.precision, config.engine_cache, config.calibration, calibration_split)

    def refuse_split(self, split: Split) -> None:
        if self.calibration_root is not None and self.calibration_split == split:
            raise UsageError(f"int8 calibration must not use the {split.value} split it scores")

    def opener(self, members: list[tuple[Member, Path]]):
        from deepcovidxr.inference.streaming import member_opener

        calibration = None
        if self.calibration_root is not None:
            calibration = tree_calibration(self.calibration_root, self.calibration_split, members)
        return member_opener(self.engine, self.precision, self.cache, calibration)


CALIBRATION_IMAGES = 64  # int8 calibration: this many files of the split, taken in turn per class


def calibration_files(files: list[Path], folder: Path, limit: int = CALIBRATION_IMAGES) -> list[Path]:
    """Up to ``limit`` of a split's files, one class folder after the other in turn (sorted within
    each): the first ``limit`` in sorted order would be all of the first class (``Negative``) in
    any split larger than ``limit``, and int8 ranges fitted on one class misquantise the other."""
    by_class: dict[str, list[Path]] = {}
    for path in sorted(files):
        by_class.setdefault(path.relative_to(folder).parts[0], []).append(path)
    queues = [by_class[name] for name in sorted(by_class)]
    chosen: list[Path] = []
    for index in range(max(map(len, queues), default=0)):
        chosen += [queue[index] for queue in queues if index < len(queue)]
    return chosen[:limit]


def tree_calibration(root: Path, split: Split, members: list[tuple[Member, Path]]):
    """int8 calibration from one split of a dataset tree, made lazily per member view (a warm
    cache never reads the images); the digest covers the files' names and bytes."""
    from deepcovidxr.imaging.reader import list_images, read_view
    from deepcovidxr.runtime.int8 import files_calibration

    tree = DataTree(root)
    chosen: dict[tuple, list[Path]] = {}
    named: list[tuple[str, Path]] = []
    for size, crop in views_of(members):
        folder = tree.split_dir(size, crop, split)
        if not folder.is_dir():
            raise MissingInputError(f"--calibration {root}: missing folder {folder}")
        files = calibration_files(list_images(folder), folder)
        if not files:
            raise MissingInputError(f"--calibration {root}: no images in {folder}")
        chosen[(size, crop)] = files
        named += [(f"{size}/{crop.value}/{path.relative_to(folder).as_posix()}", path) for path in files]

    def views(member: Member) -> list[np.ndarray]:
        return [read_view(p, member.size) for p in chosen[(member.size, member.crop)]]

    return files_calibration(f"tree-v2\0{split.value}\0", named, views)  # v2: files taken per class


def score_split(
    root: Path,
    split: Split,
    chosen: Ensemble,
    scratch: Path,
    batch_size: int,
    tta: int = 0,
    seed: int = 0,
    engine: EngineChoice | None = None,
    tta_variance: list | None = None,
) -> tuple[SplitImages, np.ndarray]:
    """Every image of one split scored by every member (model-major), on ``engine`` (default:
    Keras fp32). ``tta_variance``, if given, receives the members' variance over the TTA passes
    (:func:`deepcovidxr.inference.streaming.score_members`), which the uncertainty adds."""
    engine = engine or EngineChoice()
    engine.refuse_split(split)
    opener = engine.opener(chosen.members)  # checks the engine/precision pair before any work
    images, store = load_split(root, split, chosen.members, scratch, chosen.classes)
    try:
        seeds = np.array([image_seed(n, seed) for n in images.names], np.int64)
        scores, _ = score_members(
            store,
            len(images.names),
            chosen.members,
            batch_size,
            tta,
            seeds,
            loader=MemberLoader(chosen.members, opener, ahead=2),
            tta_variance=tta_variance,
        )
    finally:
        store.close()
    return images, scores


# ---- ensemble -------------------------------------------------------------------------------


def available_members(folder: Path, subset: tuple[str, ...] = ()) -> list[tuple[Member, Path]]:
    """The chosen subset's member files in ``folder`` (all required), or without a subset every
    member file there (``layout.member_files``: the published 24 and members of other sizes), in
    canonical order, all trained on the same classes (else a UsageError naming them)."""
    if subset:
        wanted = [Member.parse(s) for s in subset]
        found = [(m, Path(folder) / m.legacy_filename) for m in wanted]
        missing = [file.name for _, file in found if not file.is_file()]
        if missing:
            raise MissingInputError(f"{folder}: missing member file(s): {', '.join(missing)}")
    else:
        found = layout.member_files(folder)
        if not found:
            raise MissingInputError(f"{folder}: no member files (<Prefix>_<size>_up_<crop>.h5)")
    class_names.common(found)  # one task: members trained on different classes are one error
    return found
