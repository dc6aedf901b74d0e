"""Build the training tree in one go: raw images + a labels table ->
``<root>/{224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive}``.

Patients, not files, are split (seeded, stratified by label), so no patient sits on both sides.
Each image is decoded and segmented once; its four views are written under one name, so crop
and uncrop views pair by name. ``<root>/split_manifest.csv`` records, per input file, its label,
patient, split, output name, crop status and input check; a rerun resumes from it. Images the
input check flags (:mod:`deepcovidxr.lungs.input_check`) are left out of the tree, listed with status
``left_out`` (``LEFT_OUT``) and the reason in ``input_check``, unless ``--keep-flagged``; a rerun
checks them again.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from deepcovidxr.contract.layout import Label, Split
from deepcovidxr.errors import UsageError

log = logging.getLogger(__name__)

LEFT_OUT = "left_out"  # manifest status of an image the input check flagged and the tree leaves out

MANIFEST_COLUMNS = [
    "file",
    "label",
    "patient_id",
    "split",
    "name",
    "status",
    "x0",
    "y0",
    "x1",
    "y1",
    "lung_fraction",
    "input_check",  # ok, or why the image was left out of the tree (input_check.VALUES)
    "window",  # how the pixels were windowed (DICOM: header, VOI LUT or the robust fallback)
    "error",
    "site",  # the labels table's site (hospital, device...), for audit.py; last, so positions hold
]


@dataclass(frozen=True)
class LabelledImage:
    file: str  # relative to the images folder, posix
    label: str  # the class folder: Negative/Positive, or a multi-class table's class name
    patient_id: str
    site: str = ""  # the labels table's optional site column (audit.py reads it back from the manifest)


def _parses(value: str) -> bool:
    try:
        Label.parse(value)
    except ValueError:
        return False
    return True


def class_labels(raw: list[str], path: Path) -> list[str]:
    """The class folder of every raw label. Two kinds of table: binary (every value one of the
    spellings :meth:`Label.parse` knows: Negative/Positive, exactly as before) or multi-class
    (three or more distinct names, used as folder names as written, e.g. COVID-19 / Normal /
    Pneumonia)."""
    values = [value.strip() for value in raw]
    distinct = sorted(set(values))
    try:
        parsed = [Label.parse(value).value for value in values]
    except ValueError:
        parsed = None
    if parsed is not None:
        return parsed
    if len(distinct) < 3:
        line, value = next((i + 2, v) for i, v in enumerate(values) if not _parses(v))
        raise UsageError(
            f"{path}, line {line}: label {value!r} is not Positive/Negative (or 1/0, covid/normal, ...); "
            f"a multi-class table needs three or more class names (found {distinct})"
        )
    bad = [v for v in distinct if not v or "/" in v or "\\" in v or v.startswith(".") or v in (".", "..")]
    if bad:
        raise UsageError(f"{path}: class names {bad} cannot be folder names")
    log.info("%s: %d classes (%s): a multi-class tree", path, len(distinct), ", ".join(distinct))
    return values


def read_labels(path: Path) -> list[LabelledImage]:
    """Columns ``file`` and ``label`` (any case; ``path``/``image``/``filename`` and ``class``
    accepted too), optional ``patient_id`` (``patient``) and ``site`` (``hospital``,
    ``institution``). Without patient ids each file is its own patient, which is only honest when
    every patient has one image."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}

        def column(*names: str) -> str | None:
            return next((fields[n] for n in names if n in fields), None)

        file_col = column("file", "filename", "path", "image", "image index")
        label_col = column("label", "class", "covid", "target")
        patient_col = column("patient_id", "patient", "patientid", "patient id")
        site_col = column("site", "hospital", "institution")
        if file_col is None or label_col is None:
            raise UsageError(f"{path}: needs a file column and a label column; found {reader.fieldnames}")
        table = list(reader)
        labels = class_labels([row[label_col] or "" for row in table], path)
        rows = []
        for row, label in zip(table, labels, strict=True):
            file = row[file_col].strip().replace("\\", "/")
            patient = (row[patient_col].strip() if patient_col else "") or file
            site = (row[site_col] or "").strip() if site_col else ""
            rows.append(LabelledImage(file, label, patient, site))
    if not patient_col:
        log.warning("%s has no patient_id column: splitting by file, which leaks patients with several images", path)
    duplicates = [f for f, n in Counter(r.file for r in rows).items() if n > 1]
    if duplicates:
        raise UsageError(f"{path}: files listed more than once: {duplicates[:5]}")
    return rows


def patient_draw(patient_id: str, seed: int) -> float:
    """A patient's place in [0, 1) for the split: a hash of the seed and the patient id alone, so
    adding patients to the table never moves the patients already split (a shuffled list did)."""
    digest = hashlib.sha256(f"{seed}\0{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def patient_split(
    rows: list[LabelledImage],
    fractions: tuple[float, float, float],
    seed: int,
    pinned: dict[str, Split] | None = None,
) -> dict[str, Split]:
    """Patients into Train/Validation/Test by :func:`patient_draw`: Test below the Test fraction,
    then Validation, then Train; returns file -> split. Each patient's split depends on its id and
    the seed only, so the shares are the fractions on average (a binomial draw, not exact counts).

    One exception keeps small tables usable: a label with three or more patients gets at least one
    patient in every split with a non-zero fraction; when the draw leaves one empty, the patient of
    that label whose draw lies nearest to the split's interval moves there. ``pinned`` (patient ->
    split, from the manifest of an earlier run with the same seed and fractions) is kept as it is, so
    such a move is never undone by patients added later."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UsageError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    pinned = pinned or {}
    by_patient: dict[str, list[LabelledImage]] = defaultdict(list)
    for row in rows:
        by_patient[row.patient_id].append(row)
    _, f_val, f_test = fractions
    intervals = {
        Split.TEST: (0.0, f_test),
        Split.VALIDATION: (f_test, f_test + f_val),
        Split.TRAIN: (f_test + f_val, 1.0),
    }
    draws = {patient: patient_draw(patient, seed) for patient in by_patient}
    split_of_patient: dict[str, Split] = {}
    for patient, u in draws.items():
        drawn = Split.TEST if u < f_test else Split.VALIDATION if u < f_test + f_val else Split.TRAIN
        split_of_patient[patient] = pinned.get(patient) or drawn
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, images in sorted(by_patient.items()):
        votes = Counter(r.label for r in images)
        # ties: the later class name (binary: Positive, as before)
        by_label[max(votes, key=lambda lab: (votes[lab], lab))].append(patient)
    for label, patients in sorted(by_label.items()):
        if len(patients) < 3:
            continue
        for split, (low, high) in intervals.items():
            if high <= low or any(split_of_patient[p] is split for p in patients):
                continue
            counts = Counter(split_of_patient[p] for p in patients)
            movable = [p for p in patients if p not in pinned and counts[split_of_patient[p]] > 1]
            if not movable:
                continue
            nearest = min(movable, key=lambda p: (min(abs(draws[p] - low), abs(draws[p] - high)), p))
            log.info(
                "split: patient %s (%s) moved to %s, which the draw left without %s", nearest, label, split.value, label
            )
            split_of_patient[nearest] = split
    return {row.file: split_of_patient[row.patient_id] for row in rows}
