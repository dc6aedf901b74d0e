"""The audit's numbers, from arrays the stage gathered: each mode's AUC with its bootstrap
interval, where the Grad-CAM mass lies against chance, and what the features know about the site.
Everything is JSON-ready; NaN (undefined) becomes None."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from deepcovidxr.audit.masked_scoring import MODES
from deepcovidxr.scoring import site
from deepcovidxr.scoring.task import Task


def number(value: float | None) -> float | None:
    """A float for JSON: None for NaN or None."""
    return None if value is None or math.isnan(float(value)) else float(value)


def mode_aucs(task: Task, labels: np.ndarray, scores: Mapping[str, np.ndarray], n_boot: int, seed: int) -> dict:
    """mode -> {auc, auc_ci95, n} over the images scored (``labels`` and each mode's scores hold
    exactly those)."""
    found = {}
    for mode in MODES:
        auc = task.auc(labels, scores[mode]) if len(labels) else math.nan
        ci = task.auc_ci(labels, scores[mode], n_boot=n_boot, seed=seed) if n_boot and len(labels) else None
        found[mode] = {
            "auc": number(auc),
            "auc_ci95": None if ci is None or any(map(math.isnan, ci)) else [float(ci[0]), float(ci[1])],
            "n": len(labels),
        }
    return found


def _auc_text(entry: Mapping) -> str:
    if entry["auc"] is None:
        return "undefined"
    ci = entry.get("auc_ci95")
    return f"{entry['auc']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def modes_summary(modes: Mapping[str, Mapping]) -> str:
    """The sentence the page and the model card show under the three AUCs: what they are, and
    what a model that reads the lungs would show."""
    return (
        f"AUC as is {_auc_text(modes['as_is'])}; lungs only {_auc_text(modes['lungs_only'])}; "
        f"lungs removed {_auc_text(modes['lungs_removed'])}. A model that reads the lungs keeps its AUC "
        "with the lungs only and falls toward 0.5 with the lungs removed."
    )


def attention_summary(cam_in_lungs: Sequence[float], lung_share: Sequence[float], target: str) -> dict:
    """The share of the ensemble's Grad-CAM mass inside the lung mask against the lungs' share of
    the film (the chance level: a map spread evenly puts exactly that share inside), over the
    images whose map has mass (an all-zero map has no share: NaN, left out)."""
    cam = np.asarray(cam_in_lungs, np.float64)
    share = np.asarray(lung_share, np.float64)
    keep = np.isfinite(cam) & np.isfinite(share)
    if not keep.any():
        return {
            "target": target,
            "images": 0,
            "cam_in_lungs_mean": None,
            "lung_share_mean": None,
            "ratio": None,
            "above_chance_share": None,
        }
    cam_mean, share_mean = float(cam[keep].mean()), float(share[keep].mean())
    return {
        "target": target,
        "images": int(keep.sum()),
        "cam_in_lungs_mean": cam_mean,
        "lung_share_mean": share_mean,
        "ratio": cam_mean / share_mean if share_mean > 0 else None,
        "above_chance_share": float(np.mean(cam[keep] > share[keep])),
    }


def site_purity(labels: Sequence, sites: Sequence) -> float:
    """The share of images that come from a site holding one class only (NaN with fewer than two
    sites): 1 when the site alone tells the label."""
    table = site.contingency(labels, sites)
    if len(table.sites) < 2:
        return math.nan
    pure = (table.counts > 0).sum(axis=0) == 1
    return float(table.counts[:, pure].sum() / table.counts.sum())


def _per_site_auc(task: Task, labels: np.ndarray, scores: np.ndarray, sites: np.ndarray) -> tuple[dict, list]:
    """site -> {auc, n} for sites holding every class (one-vs-rest macro AUC when multi-class);
    the other sites are named in the list."""
    found, skipped = {}, []
    for name in sorted(set(sites.tolist())):
        keep = sites == name
        auc = task.auc(labels[keep], scores[keep])
        if math.isnan(auc):
            skipped.append(name)
        else:
            found[name] = {"auc": auc, "n": int(keep.sum())}
    return found, skipped


def _by_site(by_label: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """label -> site -> count turned into site -> label -> count (a site's row on the page)."""
    found: dict[str, dict[str, int]] = {}
    for label, counts in by_label.items():
        for name, count in counts.items():
            found.setdefault(name, {})[label] = count
    return found


def site_section(
    task: Task,
    labels: np.ndarray,
    scores: np.ndarray,
    sites: Sequence[str],
    patients: Sequence[str],
    features: np.ndarray | None,
    source: str,
    folds: int,
    seed: int,
) -> dict:
    """The site checks over the scored images: the label-site counts, Cramér's V, the share of
    images from single-class sites, the AUC within each site, and the patient-grouped probe
    reading the site from the members' pooled features (when there are two sites or more and
    enough patients for the folds)."""
    sites = np.asarray([str(s) for s in sites])
    class_names = np.asarray(task.classes)[np.asarray(labels, np.int64)]
    per_site, skipped = _per_site_auc(task, np.asarray(labels), np.asarray(scores), sites)
    groups = np.asarray([p or f"image{i}" for i, p in enumerate(patients)])
    probe, probe_note = None, None
    usable_folds = min(folds, len(set(groups.tolist())))
    if len(set(sites.tolist())) < 2:
        probe_note = "one site only"
    elif usable_folds < 2:
        probe_note = "fewer than two patients"
    elif features is None:
        probe_note = "no pooled features"
    else:
        result = site.site_probe(features, sites, groups, folds=usable_folds, seed=seed)
        probe = {
            "balanced_accuracy": result.balanced_accuracy,
            "chance": result.chance,
            "folds": usable_folds,
            "sites": len(result.sites),
            "features": int(features.shape[1]),
        }
    return {
        "source": source,
        "column": "site",
        "contingency": _by_site(site.contingency(class_names, sites).to_dict()),
        "cramers_v": number(site.cramers_v(class_names, sites)),
        "site_purity": number(site_purity(class_names, sites)),
        "per_site_auc": per_site,
        "skipped": skipped,
        "probe": probe,
        "probe_note": probe_note,
    }
