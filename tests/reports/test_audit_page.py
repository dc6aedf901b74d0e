"""deepcovidxr.reports.audit_page: audit.html puts the findings first, shows the figures it is
given from scores.csv (ROC curves equal scikit-learn's, error rows left out), escapes every name,
links only inside its folder, and every picture loads in headless Chromium."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from deepcovidxr import DISCLAIMER
from deepcovidxr.imaging import masking
from deepcovidxr.reports.audit_figures import LINE_CHARS, MODES, _wrapped, roc_points
from deepcovidxr.reports.audit_page import FILES, MODES_NOTE, NO_SITE_AUC, PAGE, AuditImage, write_audit_page
from tests.reports.test_page import _parse  # the page parser report.html's tests use
from tests.support.browser import image_widths, screenshot

SIZE = 96
CLASSES_3 = ["COVID-19", "Normal", "Pneumonia"]
STATEMENT = "Passing this audit is no evidence of clinical validity."
AWKWARD = "Positive/<b>bold</b> & 'x'.png"
LONG = "Positive/Positive__hannover_0123456789abcdef.png"  # drawn over two lines


def _image(name: str, seed: int, heatmap: bool = True, scores: dict | None = None) -> AuditImage:
    """A random gray film with two elliptical lung fields and a smooth heatmap over the left one."""
    rng = np.random.default_rng(seed)
    gray = rng.integers(40, 220, (SIZE, SIZE), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((SIZE, SIZE), bool)
    for cx in (30, 66):
        mask |= ((xx - cx) / 14) ** 2 + ((yy - 48) / 30) ** 2 <= 1
    heat = np.exp(-(((xx - 30) / 12) ** 2 + ((yy - 50 + seed) / 16) ** 2)).astype(np.float32) if heatmap else None
    scores = scores or {"as_is": 0.8 - 0.05 * seed, "lungs_only": 0.3, "lungs_removed": 0.75 - 0.1 * seed}
    return AuditImage(name, gray, mask, heat, scores, masking.lungs_only(gray, mask), masking.lungs_removed(gray, mask))


def _csv(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as the stage's reader sees it: written as scores.csv and read back with pandas."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    buffer.seek(0)
    return pd.read_csv(buffer)


def _table(classes: list[str], rows: int = 20, seed: int = 0) -> pd.DataFrame:
    """scores.csv of ``rows`` images plus one error row (NaN scores: must be left out everywhere)."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    y = np.arange(rows) % k
    frame = pd.DataFrame(
        {
            "file": [f"{classes[c]}/img{i:02d}.png" for i, c in enumerate(y)],
            "split": "Test",
            "label": [classes[c] for c in y],
            "y": y,
            "site": ["A" if c else "B" for c in y],
            "patient_id": [f"p{i}" for i in range(rows)],
        }
    )
    for strength, mode in zip((0.35, 0.1, 0.3), MODES, strict=True):
        if k == 2:
            frame[mode] = np.clip(strength * y + rng.random(rows) * (1 - strength), 0, 1)
        else:
            raw = rng.random((rows, k)) + strength * np.eye(k)[y]
            for c, name in enumerate(classes):
                frame[f"{mode}.p_{name}"] = raw[:, c] / raw.sum(axis=1)
    frame["lung_share"] = rng.uniform(0.2, 0.35, rows)
    frame["cam_in_lungs"] = rng.uniform(0.1, 0.9, rows)
    frame["error"] = ""
    broken = {column: np.nan for column in frame.columns if frame[column].dtype.kind == "f"}
    error_row = {**frame.iloc[0].to_dict(), **broken, "file": "broken.png", "y": 1, "error": "unreadable"}
    return _csv(pd.concat([frame, pd.DataFrame([error_row])], ignore_index=True))


def _audit(table: pd.DataFrame, classes: list[str], sites: bool = True) -> dict:
    curves = roc_points(table, classes)
    first = next(iter(curves.values()))
    modes = {
        mode: {"auc": curve.auc, "auc_ci95": [curve.auc - 0.1, min(1.0, curve.auc + 0.1)], "n": curve.n}
        for mode, curve in first.items()
    }
    return {
        "statement": STATEMENT,
        "classes": classes,
        "task": "binary" if len(classes) == 2 else "multiclass",
        "findings": [
            {"check": "lungs_removed_auc", "value": 0.81, "threshold": 0.65, "flagged": True, "why": "AUC <kept>"},
            {"check": "cam_in_lungs_ratio", "value": 1.4, "threshold": 1.2, "flagged": False, "why": "fine"},
            {"check": "site_cramers_v", "value": 0.97, "threshold": 0.5, "flagged": True, "why": "site = label"},
            {"check": "site_probe", "value": None, "threshold": 0.2, "flagged": False, "why": "no features"},
        ],
        "modes": modes,
        "modes_summary": "The AUC stays with the lungs removed: the evidence lies outside the lungs.",
        "attention": {
            "target": classes[-1],
            "cam_in_lungs_mean": 0.52,
            "lung_share_mean": 0.27,
            "ratio": 1.93,
            "above_chance_share": 0.8,
            "images": 20,
        },
        "sites": {
            "source": "split_manifest.csv",
            "column": "site",
            "contingency": {"A": {classes[-1]: 10}, "B": {classes[0]: 10}},
            "cramers_v": 1.0,
            "per_site_auc": {"C": {"auc": 0.71, "n": 12}},
            "skipped": ["A", "B"],
            "probe": {"balanced_accuracy": 0.93, "chance": 0.5, "folds": 5, "sites": 2},
        }
        if sites
        else None,
        "leakage": {
            "max_distance": 4,
            "hashed": 21,
            "near_duplicates": [
                {"a": "Train/x.png", "split_a": "Train", "b": "Test/y.png", "split_b": "Test", "distance": 2}
            ],
            "patients_in_two_splits": None if not sites else [],
        },
        "run": {"members": ["ResNet50_224_crop"], "rule": "weighted", "split": "Test", "engine": "keras"},
        "thresholds": {"lungs_removed_auc": 0.65, "cramers_v": 0.5},
        "errors": {"broken.png": "unreadable <file>"},
    }


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    classes = ["Negative", "Positive"]
    table = _table(classes)
    audit = _audit(table, classes)
    changed = [_image(AWKWARD, 0), _image("Negative/n01.png", 1), _image(LONG, 2)]
    overlays = [*changed, _image("Positive/no_cam.png", 3, heatmap=False)]
    folder = tmp_path_factory.mktemp("binary") / "audit"
    return write_audit_page(folder, audit, table, changed, overlays), audit, table


def test_every_picture_is_a_file_inside_the_folder(binary: tuple[Path, dict, pd.DataFrame]) -> None:
    page, _, _ = binary
    assert page.name == PAGE and page.is_file()
    parser = _parse(page)
    assert len(parser.images) == 4  # ROC curves, montage, attention histogram, overlays
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc, link
        target = (page.parent / unquote(parsed.path)).resolve()
        assert target.is_file() and target.is_relative_to((page.parent / FILES).resolve()), link


def test_findings_come_first_and_flagged_rows_are_marked(binary: tuple[Path, dict, pd.DataFrame]) -> None:
    page, _, _ = binary
    source = page.read_text(encoding="utf-8")
    text = " ".join(_parse(page).text)
    assert source.index(">Findings<") < source.index(">Where the evidence lies<") < source.index(">Sites<")
    assert "2 of 4 checks flagged" in text and source.count(">FLAGGED<") == 2
    assert "n/a" in source[source.index(">Findings<") : source.index(">Where the evidence lies<")]
    assert text.index(DISCLAIMER) < text.index(STATEMENT) < text.index("Findings")
    assert "AUC <kept>" in text and "<kept>" not in source


def test_the_aucs_and_other_figures_shown_are_those_passed(binary: tuple[Path, dict, pd.DataFrame]) -> None:
    page, audit, _ = binary
    text = " ".join(_parse(page).text)
    for entry in audit["modes"].values():
        for value in (entry["auc"], *entry["auc_ci95"]):
            assert f"{value:.3f}" in text
        assert f"{entry['n']} images" in text
    shown_everywhere = ("1.930", "0.930", "No AUC (one class only): A, B", "Train/x.png", "unreadable <file>")
    for shown in (audit["modes_summary"], *shown_everywhere):
        assert shown in text, shown
    assert "ResNet50_224_crop" in text and "lungs_removed_auc" in text
    assert MODES_NOTE in text and text.index(MODES_NOTE) < text.index(audit["modes_summary"])
    assert "Site probe: a logistic regression" in text and NO_SITE_AUC not in text
    assert "barely moves any score" not in text  # the largest change here is 0.150


def _sites_page(tmp_path: Path, changed: list[AuditImage], **sites: object) -> str:
    """The text of a binary page whose audit["sites"] entries are replaced by ``sites``."""
    classes = ["Negative", "Positive"]
    table = _table(classes)
    audit = _audit(table, classes)
    audit["sites"].update(sites)
    page = write_audit_page(tmp_path / "audit", audit, table, changed, [])
    return " ".join(_parse(page).text)


def test_no_site_with_every_class_says_so_and_the_probe_says_why_not(tmp_path: Path) -> None:
    text = _sites_page(tmp_path, [], per_site_auc={}, probe=None, probe_note="one site only")
    assert NO_SITE_AUC in text and "No AUC (one class only): A, B." in text
    assert "Site probe: not run (one site only)." in text
    assert "AUC (as is)" not in text  # no table with only a header
    assert "None to show." in text and MODES_NOTE in text


def test_the_probe_without_a_note_keeps_the_old_text(tmp_path: Path) -> None:
    text = _sites_page(tmp_path, [], probe=None)
    assert "Site probe: not run." in text and "not run (" not in text
    assert "AUC (as is)" in text and "0.710" in text and NO_SITE_AUC not in text


def test_a_small_largest_change_is_said_in_the_caption(tmp_path: Path) -> None:
    flat = [
        _image(LONG, 0, scores={"as_is": 0.6, "lungs_only": 0.9, "lungs_removed": 0.63}),
        _image("Negative/n01.png", 1, scores={"as_is": 0.2, "lungs_only": 0.9, "lungs_removed": 0.17}),
    ]
    text = _sites_page(tmp_path, flat)
    assert "The largest change is 0.030: removing the lungs barely moves any score." in text


def test_long_names_keep_their_start_and_end() -> None:
    assert _wrapped("Positive/p.png") == "Positive/p.png"
    real = "Positive/Positive__hannover_b0500187.png"  # cut to "...ive/Positive__hannover_b0500187.png"
    assert _wrapped(real) == "Positive/\nPositive__hannover_b0500187.png"
    assert _wrapped(LONG) == "Positive/Positive__hannover_\n0123456789abcdef.png"  # the rest is too long
    long_file = "Positive/" + "y" * 50 + ".png"  # the file's name alone takes more than a line
    assert _wrapped(long_file) == f"{long_file[:LINE_CHARS]}\n{long_file[LINE_CHARS:]}"
    longest = "Positive/" + "x" * 100 + "_end.png"
    first, second = _wrapped(longest).split("\n")
    assert first.startswith("Positive/") and first.endswith("...") and second.endswith("_end.png")
    assert max(len(first), len(second)) <= LINE_CHARS


def test_names_are_escaped(binary: tuple[Path, dict, pd.DataFrame]) -> None:
    page, _, _ = binary
    source = page.read_text(encoding="utf-8")
    assert "<b>" not in source and "&lt;b&gt;bold&lt;/b&gt;" in source
    assert AWKWARD in " ".join(_parse(page).text)


@pytest.mark.parametrize("classes", [["Negative", "Positive"], CLASSES_3])
def test_roc_points_equal_scikit_learn_without_the_error_row(classes: list[str]) -> None:
    table = _table(classes)
    kept = table[table["error"].isna()]
    assert len(kept) == len(table) - 1
    curves = roc_points(table, classes)
    assert list(curves) == (classes[-1:] if len(classes) == 2 else classes)
    for index, (name, by_mode) in enumerate(curves.items()):
        target = 1 if len(classes) == 2 else index
        for mode, curve in by_mode.items():
            column = mode if len(classes) == 2 else f"{mode}.p_{name}"
            y = (kept["y"] == target).astype(int)
            fpr, tpr, _ = roc_curve(y, kept[column])
            np.testing.assert_array_equal(curve.fpr, fpr)
            np.testing.assert_array_equal(curve.tpr, tpr)
            assert curve.auc == pytest.approx(roc_auc_score(y, kept[column])) and curve.n == len(kept)


def test_multiclass_page_without_sites(tmp_path: Path) -> None:
    table = _table(CLASSES_3, rows=21)
    audit = _audit(table, CLASSES_3, sites=False)
    page = write_audit_page(tmp_path / "audit", audit, table, [_image("COVID-19/c.png", 0)], [])
    text = " ".join(_parse(page).text)
    assert "No sites given (--sites or a site column in split_manifest.csv)" in text
    assert "no patient_id in split_manifest.csv" in text
    assert len(_parse(page).images) == 3  # no overlays given: no overlay figure
    assert all((page.parent / unquote(src)).is_file() for src in _parse(page).images)


def test_the_browser_shows_every_picture(binary: tuple[Path, dict, pd.DataFrame], tmp_path: Path) -> None:
    page, _, _ = binary
    copy = tmp_path / "copied" / "audit"
    shutil.copytree(page.parent, copy)  # the folder is self-contained: a copy shows every picture
    widths = image_widths(copy / PAGE)
    assert len(widths) == 4 and all(width > 0 for _, width in widths), widths
    shot = screenshot(copy / PAGE, tmp_path / "audit_page.png", size=(1280, 4000))
    assert shot.stat().st_size > 10_000
