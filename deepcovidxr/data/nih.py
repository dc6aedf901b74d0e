"""NIH ChestX-ray14 for backbone pretraining: labels table, official patient-wise splits, the 14
findings and per-finding AUROC. Pure Python (pandas/numpy/scikit-learn), no TensorFlow. The
archive download is ``nih_download``.

What changes from the original ``pretrain.py`` + ``utils/NIH_util.py`` (SPEC section 7):

- all 14 findings are targets (the original kept labels with > 1000 images, dropping Hernia), and
  "No Finding" images stay in as all-zero targets (Keras silently dropped ~60k of them);
- the split is the NIH's official patient-wise ``train_val_list.txt`` / ``test_list.txt``, and
  validation is carved out of train_val by patient, not by image (the original's image-level 80/20
  split put follow-ups of one patient on both sides);
- the labels CSV may be named as the NIH ships it (``Data_Entry_2017.csv`` or the 2020 revision),
  and images are found in the flat layout and in the nested Kaggle layout;
- downloads (``nih_download``) resume, are checked (length, gzip/tar integrity, published SHA-1)
  and are extracted without path traversal; offline, the error says how to place them by hand.

Example::

    splits = load_splits(Path("/data/nih"), validation_fraction=0.1, seed=0)
    splits.train[["path", *FINDINGS]]   # multi-hot targets for a 14-unit sigmoid head
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepcovidxr.contract.atomic import write_text
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imaging.reader import is_hidden_name

log = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"

# Preference order: the 2020 revision fixes label errors of the 2017 table, so it wins when both exist.
LABEL_CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "NIH_Data_Entry.csv")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
BOX_FOLDER = "https://nihcc.app.box.com/v/ChestXray-NIHCC"


# --------------------------------------------------------------------------------------------------
# Labels table and images


def find_labels_csv(root: Path) -> Path:
    """The labels table in ``root``: ``Data_Entry_2017_v2020.csv`` if present, else
    ``Data_Entry_2017.csv``, else the original code's ``NIH_Data_Entry.csv``."""
    root = Path(root)
    for name in LABEL_CSV_NAMES:
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise MissingInputError(
        f"no NIH ChestX-ray14 labels table in {root}: expected one of {', '.join(LABEL_CSV_NAMES)} "
        f"(download Data_Entry_2017_v2020.csv from {BOX_FOLDER})"
    )


def _images_in(folder: Path) -> list[Path]:
    """PNG files directly in ``folder`` (scandir: an order of magnitude faster than glob on 112k files)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return [
            Path(entry.path)
            for entry in entries
            if entry.name.lower().endswith(".png") and not is_hidden_name(entry.name) and entry.is_file()
        ]


def find_images(root: Path) -> dict[str, Path]:
    """Image index (``00000001_000.png``) -> path, sorted by index.

    Looks in ``root``, ``root/images`` (the flat layout this module's download writes) and
    ``root/images_*/images`` (the nested Kaggle/Box layout, e.g. ``images_001/images``). When one
    name occurs in several folders the first in that order (folders sorted) wins, and the count of
    such duplicates is logged.
    """
    root = Path(root)
    folders = [root, root / "images"]
    # Nested layout: images_001/images/*.png (Kaggle); also images_01/images (some re-packs).
    folders += sorted(p / "images" for p in root.glob("images_*") if p.is_dir())
    found: dict[str, Path] = {}
    duplicates = 0
    for folder in folders:
        for path in sorted(_images_in(folder)):
            if path.name in found:
                duplicates += 1
                continue
            found[path.name] = path
    if duplicates:
        log.warning("%d image names occur in more than one folder under %s; kept the first of each", duplicates, root)
    return dict(sorted(found.items()))


def _multi_hot(labels: pd.Series, source: Path) -> np.ndarray:
    """(n, 14) uint8 multi-hot from pipe-separated label strings. Only the ~800 distinct strings are
    parsed, then broadcast by their codes: ~50x faster than ``str.get_dummies`` on 112k rows."""
    if labels.isna().any():
        first = labels.index[labels.isna()][0]
        raise UsageError(f"{source}: empty 'Finding Labels' (first at data row {first})")
    codes, uniques = pd.factorize(labels, sort=False)
    column = {finding: i for i, finding in enumerate(FINDINGS)}
    table = np.zeros((len(uniques), len(FINDINGS)), dtype=np.uint8)
    unknown: set[str] = set()
    for row, text in enumerate(uniques):
        for name in (part.strip() for part in str(text).split("|")):
            if name == NO_FINDING:
                continue
            if name in column:
                table[row, column[name]] = 1
            else:
                unknown.add(name)
    if unknown:
        raise UsageError(f"{source}: unknown finding labels {sorted(unknown)}; known: {', '.join(FINDINGS)}")
    return table[codes]


def read_table(csv_path: Path) -> pd.DataFrame:
    """The NIH labels CSV as ``image``, ``patient_id`` (string) and one 0/1 int column per finding.

    "No Finding" rows are kept, with all 14 columns zero. Only the three columns needed are parsed,
    which also makes the 2017 table's trailing empty column harmless.
    """
    csv_path = Path(csv_path)
    wanted = ["Image Index", "Finding Labels", "Patient ID"]
    try:
        raw = pd.read_csv(csv_path, usecols=wanted, dtype=str, keep_default_na=False, na_values=[""])
    except ValueError as error:  # pandas names the missing columns in its message
        raise UsageError(f"{csv_path}: not an NIH ChestX-ray14 labels table ({error})") from None
    if raw["Image Index"].isna().any() or raw["Patient ID"].isna().any():
        raise UsageError(f"{csv_path}: rows with an empty 'Image Index' or 'Patient ID'")
    duplicated = raw["Image Index"][raw["Image Index"].duplicated()]
    if len(duplicated):
        raise UsageError(f"{csv_path}: images listed more than once: {duplicated.head(5).tolist()}")
    hot = _multi_hot(raw["Finding Labels"], csv_path)
    table = pd.DataFrame(
        {
            "image": raw["Image Index"].str.strip().to_numpy(),
            # Kept as text: an id is a name, and pandas would otherwise make it an int column.
            "patient_id": raw["Patient ID"].str.strip().to_numpy(),
        }
    )
    findings = pd.DataFrame(hot.astype(np.int64), columns=list(FINDINGS))
    return pd.concat([table, findings], axis=1)


# --------------------------------------------------------------------------------------------------
# Official splits


@dataclass(frozen=True, eq=False)  # DataFrames have no single truth value to compare by
class NihSplits:
    """Train / validation / test tables; each has ``path``, ``image``, ``patient_id`` and the 14
    finding columns. Test is the NIH's official test list; train and validation partition the
    official train_val list by patient."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        """(name, table) in the order train, validation, test."""
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per split: ``images``, ``patients``, ``no_finding`` (all-zero rows) and ``positives``
        (finding -> count)."""
        out: dict[str, dict[str, Any]] = {}
        for name, frame in self.items():
            targets = frame[list(FINDINGS)]
            out[name] = {
                "images": len(frame),
                "patients": int(frame["patient_id"].nunique()),
                "no_finding": int((targets.sum(axis=1) == 0).sum()),
                "positives": {finding: int(targets[finding].sum()) for finding in FINDINGS},
            }
        return out


def _read_list(root: Path, name: str) -> list[str]:
    path = root / name
    if not path.is_file():
        raise MissingInputError(
            f"official split list {path} not found: put {TRAIN_VAL_LIST} and {TEST_LIST} from {BOX_FOLDER} "
            f"next to the labels table (the patient-wise split depends on them)"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UsageError(f"{path} lists no images")
    return names


def _patient_split(patients: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The validation patients: ``round(fraction * n)`` of them, chosen by a seeded permutation of
    the sorted ids, so the choice depends only on (ids, fraction, seed), never on input order."""
    ordered = np.array(sorted(set(patients)), dtype=object)
    count = round(fraction * len(ordered))
    if fraction > 0 and count == 0 and len(ordered) > 1:
        count = 1  # a requested validation set should not vanish on tiny inputs
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return set(ordered[chosen].tolist())


def load_splits(root: Path, validation_fraction: float = 0.1, seed: int = 0, require_images: bool = True) -> NihSplits:
    """Official patient-wise NIH splits with a seeded patient-wise validation carve-out.

    The validation patients are chosen from the whole official train_val list before images are
    looked up, so a partial download keeps every patient on the same side as the full one. With
    ``require_images`` rows whose PNG is absent are dropped (counted per split in a warning);
    without it every row is kept and missing paths are None.
    """
    root = Path(root)
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    table = read_table(find_labels_csv(root))
    train_val = _read_list(root, TRAIN_VAL_LIST)
    test = _read_list(root, TEST_LIST)

    both = set(train_val) & set(test)
    if both:
        raise UsageError(f"{len(both)} images are in both {TRAIN_VAL_LIST} and {TEST_LIST}, e.g. {sorted(both)[:3]}")
    indexed = table.set_index("image", drop=False)
    listed = pd.Index(train_val + test)
    unknown = listed.difference(indexed.index)
    if len(unknown):
        raise UsageError(f"{len(unknown)} listed images are not in the labels table, e.g. {unknown[:3].tolist()}")
    unlisted = len(indexed) - len(listed)
    if unlisted:
        log.warning("%d images of the labels table are in neither official list; they are left out", unlisted)

    train_val_rows = indexed.loc[train_val].reset_index(drop=True)
    test_rows = indexed.loc[test].reset_index(drop=True)
    # The official lists are patient-wise; verify rather than trust, since a leak would inflate test AUROC.
    leaked = set(train_val_rows["patient_id"]) & set(test_rows["patient_id"])
    if leaked:
        raise UsageError(f"{len(leaked)} patients have images in both official lists, e.g. {sorted(leaked)[:3]}")

    validation_patients = _patient_split(train_val_rows["patient_id"].tolist(), validation_fraction, seed)
    in_validation = train_val_rows["patient_id"].isin(validation_patients)
    parts = {
        "train": train_val_rows[~in_validation],
        "validation": train_val_rows[in_validation],
        "test": test_rows,
    }

    images = {name: str(path) for name, path in find_images(root).items()}
    columns = ["path", "image", "patient_id", *FINDINGS]
    out: dict[str, pd.DataFrame] = {}
    dropped: dict[str, int] = {}
    for name, frame in parts.items():
        frame = frame.assign(path=frame["image"].map(images))
        if require_images:
            present = frame["path"].notna()
            dropped[name] = int((~present).sum())
            frame = frame[present]
        else:
            frame = frame.assign(path=frame["path"].astype(object).where(frame["path"].notna(), None))
        out[name] = frame[columns].reset_index(drop=True)
    if require_images and any(dropped.values()):
        log.warning(
            "images missing under %s, rows dropped: train %d, validation %d, test %d",
            root,
            dropped["train"],
            dropped["validation"],
            dropped["test"],
        )
    return NihSplits(train=out["train"], validation=out["validation"], test=out["test"])


# --------------------------------------------------------------------------------------------------
# Evaluation


def per_finding_auroc(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str] = FINDINGS) -> pd.DataFrame:
    """AUROC per finding (columns ``finding, auroc, positives, negatives``), NaN where ``y_true``
    holds one class only, plus a final ``mean`` row averaging the defined AUROCs (its counts are
    the totals)."""
    # Imported here: scikit-learn costs about a second to import, and only evaluation needs it.
    from deepcovidxr.scoring.metrics import auc_or_nan

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[1] != len(findings):
        raise ValueError(
            f"y_true {y_true.shape} and y_score {y_score.shape} must both be (n, {len(findings)}) for {len(findings)} "
            f"findings"
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    rows = []
    for j, finding in enumerate(findings):
        column = y_true[:, j].astype(np.int64)
        positives = int(column.sum())
        negatives = len(column) - positives
        auroc = auc_or_nan(column, y_score[:, j])
        rows.append({"finding": finding, "auroc": auroc, "positives": positives, "negatives": negatives})
    frame = pd.DataFrame(rows, columns=["finding", "auroc", "positives", "negatives"])
    defined = frame["auroc"].dropna()
    mean = float(defined.mean()) if len(defined) else float("nan")
    total = {
        "finding": "mean",
        "auroc": mean,
        "positives": int(frame["positives"].sum()),
        "negatives": int(frame["negatives"].sum()),
    }
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def write_auroc_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a :func:`per_finding_auroc` table as CSV, atomically (temporary file + rename)."""
    path = Path(path)
    write_text(path, frame.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return path
