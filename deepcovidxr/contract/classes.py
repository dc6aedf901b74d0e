"""The classes a dataset tree and its members hold.

The classes are the folder names under ``<view>/Train/`` (sorted), the same under
``Validation/`` and ``Test/``. Exactly ``Negative`` and ``Positive`` is the original's binary
task and keeps its behaviour everywhere: a sigmoid head whose one output is P(Positive), the
``_up_`` file names, the original's CSV columns, the authors' weights. Three or more classes: a
softmax head with one output per class, in this sorted order, and ``p_<class>`` columns. What
follows from the task (head, loss, calibration, the call, columns) is
:mod:`deepcovidxr.scoring.task`'s; this module only names and finds the classes.

Score arrays follow the head: a binary member gives one score per image (``(images,)``, stacked
``(images, members)``); a multi-class member gives ``(images, classes)`` (stacked
``(images, members, classes)``), rows summing to 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from deepcovidxr.errors import MissingInputError, UsageError

BINARY: tuple[str, ...] = ("Negative", "Positive")


def probability_column(name: str) -> str:
    return f"p_{name}"


def folder_classes(split_dir: Path) -> tuple[str, ...]:
    """Sorted class folders of one split folder (hidden folders such as ``.ipynb_checkpoints``
    are not classes)."""
    from deepcovidxr.contract.files import is_hidden_name

    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise MissingInputError(f"missing folder {split_dir}")
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_hidden_name(p.name)))


def discover(view_dir: Path, splits: Iterable[str] = ("Train", "Validation", "Test")) -> tuple[str, ...]:
    """The classes of ``<view_dir>``: the folders under its first existing split (``Train``
    first); every other split present must hold the same folders, else one error naming the
    difference. A binary tree must hold both ``Negative`` and ``Positive``."""
    view_dir = Path(view_dir)
    found = {s: folder_classes(view_dir / s) for s in splits if (view_dir / s).is_dir()}
    if not found:
        raise MissingInputError(f"{view_dir}: no {'/'.join(splits)} folder")
    reference_split, reference = next(iter(found.items()))
    for split, classes in found.items():
        if classes != reference:
            only_here = sorted(set(classes) - set(reference))
            missing = sorted(set(reference) - set(classes))
            raise UsageError(
                f"{view_dir}: class folders of {split}/ differ from {reference_split}/ {list(reference)}: "
                f"only in {split}/: {only_here}; missing from {split}/: {missing}"
            )
    if len(reference) < 2:
        raise UsageError(
            f"{view_dir}/{reference_split}: needs at least two class folders (found {list(reference)}); "
            "the binary task is Negative/ and Positive/"
        )
    # A folder-name rule of the tree: a pair of classes is the original's pair or nothing.
    if set(reference) & set(BINARY) and len(reference) == 2 and reference != BINARY:
        raise UsageError(
            f"{view_dir}/{reference_split}: two classes must be Negative/ and Positive/ (found {list(reference)})"
        )
    return reference


def member_classes(path: Path) -> tuple[str, ...]:
    """The class names a member file records in its JSON sidecar; the authors' files (and ours
    from before multi-class) have none and are binary."""
    meta = Path(path).with_suffix(".json")
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8")).get("classes")
        except (OSError, ValueError):
            recorded = None
        if recorded:
            return tuple(recorded)
    return BINARY


def common(members: Iterable[tuple[object, Path]]) -> tuple[str, ...]:
    """The one class list of a set of ``(member, path)``; different lists are one error naming
    the members and their classes."""
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for _member, path in members:
        by_classes.setdefault(member_classes(path), []).append(Path(path).name)
    if not by_classes:
        raise UsageError("no members given")
    if len(by_classes) > 1:
        listed = "; ".join(f"{list(c)}: {', '.join(names)}" for c, names in by_classes.items())
        raise UsageError(f"members were trained on different classes ({listed}); use members of one task")
    return next(iter(by_classes))
