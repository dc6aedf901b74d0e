"""The audit's checks, each a :class:`~deepcovidxr.scoring.site.Finding` ``{check, value,
threshold, flagged, why}`` read off audit.json's sections against the configured thresholds
(docs/audit.md explains each default). A check that cannot be made (no sites, no patient ids, an
undefined AUC) has value None and is not flagged; its ``why`` says what was missing."""

from __future__ import annotations

import math
from collections.abc import Mapping

from deepcovidxr.scoring.site import Finding

NAN = math.nan


def _value(value: float | None) -> float:
    return NAN if value is None else float(value)


def _above(
    check: str, value: float | None, threshold: float, flagged_why: str, passed_why: str, missing: str
) -> Finding:
    """Flagged when ``value`` is above ``threshold``; not flagged when it is undefined."""
    value = _value(value)
    if math.isnan(value):
        return Finding(check, NAN, threshold, False, missing)
    flagged = value > threshold
    return Finding(
        check, value, threshold, flagged, (flagged_why if flagged else passed_why).format(v=value, t=threshold)
    )


def _separation(auc: float | None, limit: float) -> Finding:
    """The AUC with the lungs removed, flagged when it separates the classes either way: an AUC
    far below 0.5 (the order reversed) is as much evidence outside the lungs as one far above."""
    if auc is None:
        return Finding("auc_lungs_removed", NAN, limit, False, "The AUC with the lungs removed is undefined.")
    flagged = max(auc, 1 - auc) > limit
    why = (
        f"With the lungs removed the ensemble still separates the classes (AUC {auc:.3f}; above {limit} or below "
        f"{1 - limit:.2f}): its evidence lies outside the lungs (devices, text, collimation, the hospital's "
        "processing)."
        if flagged
        else f"With the lungs removed the AUC is {auc:.3f} (within {1 - limit:.2f}-{limit}): little of the evidence "
        "lies outside the lungs."
    )
    return Finding("auc_lungs_removed", auc, limit, flagged, why)


def _mode_findings(modes: Mapping, limits: Mapping[str, float]) -> list[Finding]:
    removed = modes["lungs_removed"]["auc"]
    as_is, only = modes["as_is"]["auc"], modes["lungs_only"]["auc"]
    drop = None if as_is is None or only is None else as_is - only
    return [
        _separation(removed, limits["max_auc_lungs_removed"]),
        _above(
            "auc_drop_lungs_only",
            drop,
            limits["max_auc_drop_lungs_only"],
            "Shown the lungs only, the AUC falls by {v:.3f} (> {t}): much of what the ensemble uses is outside them.",
            "Shown the lungs only, the AUC changes by {v:.3f} (at most {t} lost).",
            "The AUC as is or with the lungs only is undefined.",
        ),
    ]


def _attention_finding(attention: Mapping, limit: float) -> Finding:
    ratio = _value(attention.get("ratio"))
    if math.isnan(ratio):
        return Finding("cam_in_lungs_ratio", NAN, limit, False, "No Grad-CAM map had mass (or no lung was found).")
    flagged = ratio < limit
    why = f"The Grad-CAM mass inside the lungs is {ratio:.2f} times the lungs' share of the film " + (
        "(below {t}: the ensemble looks at the lungs no more than chance)." if flagged else "(at least {t})."
    )
    return Finding("cam_in_lungs_ratio", ratio, limit, flagged, why.format(t=limit))


def _site_findings(sites: Mapping | None, limits: Mapping[str, float]) -> list[Finding]:
    probe = (sites or {}).get("probe")
    margin = None if not probe else probe["balanced_accuracy"] - probe["chance"]
    missing = (
        "One site only: the site cannot stand in for the label."
        if sites
        else "No sites given (--sites, or a site column in the labels table of build_dataset.py)."
    )
    sites = sites or {}
    return [
        _above(
            "site_label_association",
            sites.get("cramers_v"),
            limits["max_cramers_v"],
            "Label and site are associated (Cramér's V {v:.2f} > {t}): a model can score the hospital and look right.",
            "Label and site are weakly associated (Cramér's V {v:.2f}, at most {t}).",
            missing,
        ),
        _above(
            "site_purity",
            sites.get("site_purity"),
            limits["max_site_purity"],
            "{v:.0%} of the images come from sites holding one class only (> {t:.0%}): there the site alone "
            "tells the label.",
            "{v:.0%} of the images come from sites holding one class only (at most {t:.0%}).",
            missing,
        ),
        _above(
            "site_probe_margin",
            margin,
            limits["max_probe_margin"],
            "The members' features tell the site {v:+.2f} from chance (balanced accuracy, more than {t} above): "
            "they encode the hospital.",
            "The members' features tell the site {v:+.2f} from chance (balanced accuracy; at most {t} above).",
            missing,
        ),
    ]


def _leakage_findings(leakage: Mapping, limits: Mapping[str, float]) -> list[Finding]:
    pairs = len(leakage.get("near_duplicates") or [])
    patients = leakage.get("patients_in_two_splits")
    return [
        _above(
            "near_duplicates_across_splits",
            pairs,
            limits["max_near_duplicates"],
            "{v:.0f} pair(s) of near-identical films sit in two splits (> {t:.0f}): the held-out figures are inflated.",
            "{v:.0f} near-duplicate pair(s) across splits (at most {t:.0f}).",
            "",
        ),
        _above(
            "patients_in_two_splits",
            None if patients is None else len(patients),
            limits["max_shared_patients"],
            "{v:.0f} patient(s) have images in two splits (> {t:.0f}).",
            "{v:.0f} patient(s) in two splits (at most {t:.0f}).",
            "No patient_id in split_manifest.csv: patients in two splits cannot be checked.",
        ),
    ]


def findings(audit: Mapping, limits: Mapping[str, float]) -> list[dict]:
    """Every check of ``audit`` (audit.json's ``modes``, ``attention``, ``sites``, ``leakage``)
    against ``limits`` (the config's thresholds), as JSON-ready dicts."""
    found = [
        *_mode_findings(audit["modes"], limits),
        _attention_finding(audit["attention"], limits["min_cam_ratio"]),
        *_site_findings(audit.get("sites"), limits),
        *_leakage_findings(audit["leakage"], limits),
    ]
    return [f.to_dict() for f in found]
