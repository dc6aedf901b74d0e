"""``audit.html``: the audit's page, findings first.

Sections, in order: the disclaimer and the statement that passing is no evidence of clinical
validity; the findings (each check's value, threshold and why, flagged rows marked); where the
evidence lies (the AUC of the three scoring modes with their intervals, their ROC curves drawn from
``scores.csv``, and the images whose score changes most without the lungs); where the model looks
(Grad-CAM mass inside the lung mask against the lungs' share of the image, the chance level, and
overlays with the mask's outline); sites; leakage; what was run.

The page is built on :class:`deepcovidxr.reports.page.Report` (same style, escaping and relative
links), under its own names: ``audit.html`` with its figures in ``audit_files/``, so the folder can
be copied or zipped intact. Every file is written atomically, the page last.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepcovidxr.contract.atomic import write_text
from deepcovidxr.reports import audit_figures as figures
from deepcovidxr.reports.audit_figures import MODE_LABELS, MODES, AuditImage
from deepcovidxr.reports.page import Failure, Metric, Report, _number, _text

logger = logging.getLogger(__name__)

PAGE = "audit.html"
FILES = "audit_files"
TITLE = "deepcovidxr audit"
MOST_ROWS = 200  # longest list shown (near-duplicates, patients); audit.json holds them all
FLAGGED_CELL = "<td style='background:#b71c1c;color:#fff;font-weight:700'>FLAGGED</td>"
FLAGGED_ROW = " style='background:#fdecea'"
ATTENTION_NOTE = (
    "A map spread evenly over the image puts the lungs' share of the image inside the lungs: that "
    "share is the chance level. A model that reads the lungs puts clearly more of its Grad-CAM mass "
    "there (a ratio well above 1)."
)
MODES_NOTE = (
    "The masked modes put flat regions into the film that no training image had; compare the modes "
    "with each other, and read the lungs-only AUC as an ordering (scores may all move toward one class)."
)
NO_SITE_AUC = "No site holds every class: no AUC within a site."
SMALL_CHANGE = 0.05  # below this largest score change, removing the lungs barely moves any score


def _shown(value: Any) -> str:
    """A value as escaped cell text: None (a check that does not apply) as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list | tuple | dict):
        return _text(json.dumps(value, default=str))
    return _text(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    """An HTML table of escaped cells (columns from ``numeric_from`` on right-aligned)."""
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_shown(v)}</td>" if k >= numeric_from else f"<td>{_shown(v)}</td>"
            for k, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class AuditReport(Report):
    """:class:`Report` writing ``audit.html`` and ``audit_files/``, with raw sections and figures
    under a subheading (the audit groups several figures in one section)."""

    @property
    def files(self) -> Path:
        return self.folder / FILES

    def raw(self, markup: str) -> AuditReport:
        """Append markup built here from escaped parts."""
        self._parts.append(markup)
        return self

    def figure(self, path: Path, caption: str) -> AuditReport:
        """One figure under the current heading, linking to its full-size file."""
        link = self._figure_link(path)
        return self.raw(
            f"<figure style='max-width:100%'><a href='{link}'><img src='{link}' alt='{_text(caption)}'></a>"
            f"<figcaption>{_text(caption)}</figcaption></figure>"
        )

    def write(self) -> Path:
        page = self.folder / PAGE
        write_text(page, self.html())
        logger.info("wrote %s", page)
        return page


def _findings(page: AuditReport, findings: Sequence[Mapping[str, Any]]) -> None:
    flagged = sum(bool(f.get("flagged")) for f in findings)
    colour = "#b71c1c" if flagged else "#1b5e20"
    page.heading("Findings")
    page.raw(f"<p style='font-weight:700;color:{colour}'>{flagged} of {len(findings)} checks flagged</p>")
    rows = []
    for f in findings:
        mark = FLAGGED_CELL if f.get("flagged") else "<td>ok</td>"
        rows.append(
            f"<tr{FLAGGED_ROW if f.get('flagged') else ''}><td><code>{_text(f.get('check'))}</code></td>"
            f"<td class='num'>{_shown(f.get('value'))}</td><td class='num'>{_shown(f.get('threshold'))}</td>"
            f"{mark}<td>{_text(f.get('why', ''))}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("check", "value", "threshold", "flagged", "why"))
    page.raw(f"<table class='findings'><tr>{head}</tr>{''.join(rows)}</table>")


def _mode_metrics(modes: Mapping[str, Any]) -> list[Metric]:
    rows = []
    for mode in MODES:
        entry = modes.get(mode)
        if entry is None:
            continue
        low, high = entry.get("auc_ci95") or (None, None)
        auc = entry.get("auc")
        rows.append(
            Metric(f"AUC, {MODE_LABELS[mode]}", "n/a" if auc is None else auc, low, high, f"{entry.get('n')} images")
        )
    return rows


def _changed_rows(changed: Sequence[AuditImage]) -> list[list[Any]]:
    rows = []
    for index, image in enumerate(changed, 1):
        scores = [image.scores.get(mode) for mode in MODES]
        as_is, removed = scores[0], scores[2]
        change = removed - as_is if as_is is not None and removed is not None else None
        rows.append([index, image.name, *scores, change])
    return rows


def _montage_caption(rows: Sequence[Sequence[Any]]) -> str:
    """The montage's caption, saying so when even the largest score change is small."""
    caption = "Each image as is, with the lungs only and with the lungs removed, and its score in each"
    changes = [abs(row[-1]) for row in rows if row[-1] is not None and math.isfinite(row[-1])]
    if changes and max(changes) < SMALL_CHANGE:
        caption += f". The largest change is {_number(max(changes))}: removing the lungs barely moves any score."
    return caption


def _evidence(page: AuditReport, audit: Mapping[str, Any], table: pd.DataFrame, changed: Sequence[AuditImage]) -> None:
    page.metrics("Where the evidence lies", _mode_metrics(audit.get("modes") or {}))
    page.paragraph(MODES_NOTE)
    if audit.get("modes_summary"):
        page.paragraph(str(audit["modes_summary"]))
    classes = list(audit.get("classes") or ("Negative", "Positive"))
    roc = figures.plot_mode_rocs(table, classes, page.files / "roc_modes.png")
    page.figure(roc, "ROC curves of the three scoring modes, from scores.csv (rows with an error left out)")
    page.raw(f"<h3>The images whose score changes most without the lungs ({len(changed)})</h3>")
    if not changed:
        page.paragraph("None to show.")
        return
    header = ["#", "image", *(MODE_LABELS[m] for m in MODES), "change (lungs removed - as is)"]
    rows = _changed_rows(changed)
    page.raw(_table(header, rows, numeric_from=2))
    montage = figures.write_changed_montage(changed, page.files / "changed.png")
    page.figure(montage, _montage_caption(rows))


def _attention(
    page: AuditReport, attention: Mapping[str, Any] | None, table: pd.DataFrame, overlays: Sequence[AuditImage]
) -> None:
    page.heading("Where the model looks")
    if not attention:
        page.paragraph("Grad-CAM was not computed.")
    else:
        page.paragraph(ATTENTION_NOTE)
        rows = [
            ("Grad-CAM target class", attention.get("target")),
            ("mean share of the Grad-CAM mass inside the lungs", attention.get("cam_in_lungs_mean")),
            ("mean share of the image the lungs cover (chance)", attention.get("lung_share_mean")),
            ("ratio (inside / chance)", attention.get("ratio")),
            ("share of images above chance", attention.get("above_chance_share")),
            ("images with a Grad-CAM", attention.get("images")),
        ]
        page.raw(_table(["", "value"], rows))
    hist = figures.plot_attention(table, page.files / "attention.png")
    page.figure(hist, "Per image: Grad-CAM mass inside the lung mask and the lungs' share of the image")
    if overlays:
        grid = figures.write_overlay_grid(overlays, page.files / "overlays.png")
        page.figure(grid, "Grad-CAM over the image (red: most evidence) with the lung mask's outline in white")


def _site_by_class(contingency: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> dict[str, dict]:
    """Site -> class -> count; a table keyed the other way round (label -> site, as
    :meth:`deepcovidxr.scoring.site.Contingency.to_dict` gives it) is turned over."""
    outer = set(contingency)
    inner = {key for counts in contingency.values() for key in counts}
    if outer and outer <= set(classes) and not inner <= set(classes):
        turned: dict[str, dict] = {}
        for label, counts in contingency.items():
            for site, count in counts.items():
                turned.setdefault(site, {})[label] = count
        return turned
    return {site: dict(counts) for site, counts in contingency.items()}


def _sites(page: AuditReport, sites: Mapping[str, Any] | None, classes: Sequence[str]) -> None:
    page.heading("Sites")
    if sites is None:
        page.paragraph("No sites given (--sites or a site column in split_manifest.csv)")
        return
    page.paragraph(f"Sites from {sites.get('source')} (column {sites.get('column', 'site')}).")
    by_site = _site_by_class(sites.get("contingency") or {}, classes)
    names = list(dict.fromkeys([*classes, *(c for counts in by_site.values() for c in counts)]))
    rows = [[site, *(counts.get(c, 0) for c in names), sum(counts.values())] for site, counts in by_site.items()]
    page.raw("<h3>Images per site and class</h3>" + _table(["site", *names, "total"], rows))
    page.paragraph(
        f"Cramér's V between label and site: {_shown(sites.get('cramers_v'))} "
        "(0: the classes are spread alike over the sites; 1: the site decides the label)."
    )
    per_site = sites.get("per_site_auc") or {}
    page.raw("<h3>AUC within each site holding every class</h3>")
    if per_site:
        rows = [[s, r.get("auc"), r.get("n")] for s, r in per_site.items()]
        page.raw(_table(["site", "AUC (as is)", "images"], rows))
    else:
        page.paragraph(NO_SITE_AUC)
    skipped = sites.get("skipped") or []
    page.paragraph(f"No AUC (one class only): {', '.join(map(str, skipped))}." if skipped else "No site skipped.")
    probe = sites.get("probe")
    if probe is None:
        note = sites.get("probe_note")
        page.paragraph(f"Site probe: not run ({note})." if note else "Site probe: not run.")
    else:
        page.paragraph(
            f"Site probe: a logistic regression on the members' pooled features predicts the site with "
            f"balanced accuracy {_shown(probe.get('balanced_accuracy'))} against a chance level of "
            f"{_shown(probe.get('chance'))} ({probe.get('folds')} patient-grouped folds, {probe.get('sites')} sites)."
        )


def _limited(page: AuditReport, rows: Sequence[Any]) -> Sequence[Any]:
    """At most ``MOST_ROWS`` rows, saying so when some are left out."""
    if len(rows) <= MOST_ROWS:
        return rows
    page.paragraph(f"The first {MOST_ROWS} of {len(rows)}; audit.json lists all.")
    return rows[:MOST_ROWS]


def _leakage(page: AuditReport, leakage: Mapping[str, Any] | None) -> None:
    page.heading("Leakage")
    leakage = leakage or {}
    pairs = leakage.get("near_duplicates") or []
    page.raw(
        f"<h3>Near-duplicate images across splits ({len(pairs)})</h3><p>{_text(leakage.get('hashed'))} images "
        f"hashed (64-bit perceptual hash); a pair within {_text(leakage.get('max_distance'))} bits is listed.</p>"
    )
    columns = ("a", "split_a", "b", "split_b", "distance")
    if pairs:
        page.raw(_table(columns, [[p.get(c) for c in columns] for p in _limited(page, pairs)], numeric_from=4))
    else:
        page.paragraph("None found.")
    patients = leakage.get("patients_in_two_splits")
    page.raw("<h3>Patients in more than one split</h3>")
    if patients is None:
        page.paragraph("Not checked: no patient_id in split_manifest.csv.")
    elif not patients:
        page.paragraph("None found.")
    else:
        page.paragraph(f"{len(patients)} patients.")
        rows = [[p.get("patient_id"), ", ".join(map(str, p.get("splits") or []))] for p in _limited(page, patients)]
        page.raw(_table(["patient_id", "splits"], rows, numeric_from=2))


def write_audit_page(
    folder: Path,
    audit: Mapping[str, Any],
    table: pd.DataFrame,
    changed: Sequence[AuditImage],
    overlays: Sequence[AuditImage],
) -> Path:
    """Writes folder/audit.html and its figures under folder/audit_files/; returns the page path.

    ``audit``: the content of ``audit.json``; ``table``: ``scores.csv`` read with pandas; ``changed``:
    the images whose score changes most without the lungs (largest first); ``overlays``: images for
    the Grad-CAM overlays."""
    page = AuditReport(Path(folder), TITLE)
    page.raw(f"<p class='warn' style='font-size:1.15em'>{_text(audit.get('statement', ''))}</p>")
    _findings(page, audit.get("findings") or [])
    _evidence(page, audit, table, changed)
    _attention(page, audit.get("attention"), table, overlays)
    _sites(page, audit.get("sites"), list(audit.get("classes") or ()))
    _leakage(page, audit.get("leakage"))
    if "errors" in audit:  # the stage's images that could not be scored (their scores.csv rows say why)
        page.failures([Failure(str(name), str(why)) for name, why in (audit["errors"] or {}).items()])
    page.run_info(audit.get("run") or {}, heading="What was run")
    thresholds = audit.get("thresholds") or {}
    page.raw("<h3>Thresholds</h3>" + _table(["threshold", "value"], list(thresholds.items())))
    return page.write()


__all__ = ["FILES", "PAGE", "AuditImage", "AuditReport", "write_audit_page"]
