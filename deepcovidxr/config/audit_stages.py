"""The config of audit.py: whether the ensemble reads the lungs or the hospital. Its thresholds
are fields like any other, so a config file or a flag sets them and run_config.json records them
(docs/audit.md explains each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from deepcovidxr.config import options
from deepcovidxr.config.checks import at_least, exists, unit_interval
from deepcovidxr.config.schema import StageConfig, option


def _threshold(flag: str, help: str, default: float, check=unit_interval):
    return option(flag, help=help, default=default, check=check)


@dataclass(frozen=True, kw_only=True)
class AuditConfig(StageConfig):
    """Audit an ensemble on one split of a dataset tree: does it read the lungs or the hospital?
    Every image is scored three ways with the U-Net's lung mask (as is; lungs only: outside the
    mask filled; lungs removed: inside the mask filled) with bootstrap AUC intervals; the share of
    the ensemble's Grad-CAM inside the lungs against the lungs' share of the image (chance); with
    sites (--sites, or a site column in split_manifest.csv) the label-site counts, Cramér's V,
    per-site AUC and a patient-grouped probe predicting the site from the members' pooled
    features; near-duplicate films across splits (perceptual hash) and patients in two splits.
    Writes scores.csv (one row per image, the three scores: recompute the AUCs from it),
    audit.json (each check as {check, value, threshold, flagged, why}), audit.html, and a model
    card (MODEL_CARD.md, model_card.json) with the findings. Exit code 0 whatever the findings;
    --strict exits 3 when a check is flagged. Passing the audit is no evidence of clinical
    validity. Research use only: not for diagnosis.

    Examples:
        python audit.py -w weights/ -e ensemble_out/Ensemble_Results/ensemble_weights.json -i dataset/ -o audit/
        python audit.py -w weights/ -i dataset/ -o audit/ --sites sites.csv --strict      # CI gate
    """

    INPUT_FIELD: ClassVar[str] = "image"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output",)

    weights: Path = options.member_folder()
    image: Path = options.dataset_root("-i", "--image", splits="<split>")
    output: Path = options.output("output folder (scores.csv, audit.json, audit.html, the model card)")
    ensemble_weights: Path | None = options.ensemble_weight(" (ensemble.py's; its model card gains the audit)")
    members: tuple[str, ...] = options.members()
    split: str = options.choice("--split", help="the split audited", choices=("Test", "Validation", "Train"))
    sites: Path | None = option(
        "--sites",
        help="CSV with columns file (the image's name in the tree, e.g. Positive/a.png, or its raw path as in "
        "split_manifest.csv) and site (default: the site column of split_manifest.csv, if any)",
        default=None,
        check=exists,
        show_default=False,
    )
    fill: str = options.choice(
        "--fill",
        help="what replaces the masked-out pixels: kept (the mean of the pixels kept) or image (the film's mean)",
        choices=("kept", "image"),
    )
    strict: bool = options.switch("--strict", help="exit code 3 when any check is flagged (for CI pipelines)")
    unet: Path | None = options.unet()
    batch_size: int = options.batch_size()
    engine: str = options.engine()
    precision: str = options.engine_precision()
    engine_cache: Path | None = options.engine_cache()
    seed: int = options.seed()
    bootstrap: int = option(
        "--bootstrap", help="bootstrap resamples for each AUC interval", default=2000, check=at_least(0)
    )
    montage: int = option(
        "--montage", help="images shown in the page's montage and Grad-CAM overlays", default=8, check=at_least(0)
    )
    probe_folds: int = option(
        "--probe-folds", help="patient-grouped folds of the site probe", default=5, check=at_least(2)
    )
    hash_distance: int = option(
        "--hash-distance",
        help="perceptual-hash bits (of 64) within which two films of different splits are near-duplicates",
        default=4,
        check=at_least(0),
    )
    # The thresholds of the findings (docs/audit.md says why each default).
    max_auc_lungs_removed: float = _threshold(
        "--max-auc-lungs-removed", "flag when the AUC with the lungs removed is above this", 0.65
    )
    max_auc_drop_lungs_only: float = _threshold(
        "--max-auc-drop-lungs-only", "flag when the AUC falls by more than this with the lungs only", 0.10
    )
    min_cam_ratio: float = _threshold(
        "--min-cam-ratio",
        "flag when the Grad-CAM share inside the lungs over the lungs' share of the image is below this",
        1.2,
        check=at_least(0),
    )
    max_cramers_v: float = _threshold("--max-cramers-v", "flag when Cramér's V of label and site is above this", 0.3)
    max_site_purity: float = _threshold(
        "--max-site-purity", "flag when more than this share of images come from sites holding one class only", 0.5
    )
    max_probe_margin: float = _threshold(
        "--max-probe-margin",
        "flag when the site probe's balanced accuracy exceeds chance (1/sites) by more than this",
        0.2,
    )
    max_near_duplicates: int = option(
        "--max-near-duplicates", help="flag when more near-duplicate pairs cross splits", default=0, check=at_least(0)
    )
    max_shared_patients: int = option(
        "--max-shared-patients", help="flag when more patients sit in two splits", default=0, check=at_least(0)
    )

    THRESHOLDS: ClassVar[tuple[str, ...]] = (
        "max_auc_lungs_removed",
        "max_auc_drop_lungs_only",
        "min_cam_ratio",
        "max_cramers_v",
        "max_site_purity",
        "max_probe_margin",
        "max_near_duplicates",
        "max_shared_patients",
    )

    def thresholds(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.THRESHOLDS}
