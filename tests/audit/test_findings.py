"""The findings against their thresholds: a reversed AUC separates too, an undefined check is
not flagged and says what was missing, site purity from hand-counted tables."""

from __future__ import annotations

import math

import pytest

from deepcovidxr.audit.findings import findings
from deepcovidxr.audit.summary import attention_summary, site_purity
from deepcovidxr.config.audit_stages import AuditConfig

LIMITS = {name: AuditConfig.__dataclass_fields__[name].default for name in AuditConfig.THRESHOLDS}


def _audit(removed: float | None, as_is: float = 0.9, only: float = 0.88, sites=None, leakage=None) -> dict:
    return {
        "modes": {"as_is": {"auc": as_is}, "lungs_only": {"auc": only}, "lungs_removed": {"auc": removed}},
        "attention": {"ratio": 1.5},
        "sites": sites,
        "leakage": leakage or {"near_duplicates": [], "patients_in_two_splits": None},
    }


def _by_check(audit: dict) -> dict[str, dict]:
    return {f["check"]: f for f in findings(audit, LIMITS)}


@pytest.mark.parametrize(("removed", "flagged"), [(0.5, False), (0.64, False), (0.8, True), (0.2, True)])
def test_the_auc_without_lungs_is_flagged_when_it_separates_either_way(removed: float, flagged: bool) -> None:
    assert _by_check(_audit(removed))["auc_lungs_removed"]["flagged"] is flagged


def test_undefined_checks_are_not_flagged_and_say_why() -> None:
    found = _by_check(_audit(None))
    assert found["auc_lungs_removed"]["value"] is None and not found["auc_lungs_removed"]["flagged"]
    for check in ("site_label_association", "site_purity", "site_probe_margin", "patients_in_two_splits"):
        assert found[check]["value"] is None and not found[check]["flagged"] and found[check]["why"]
    assert "No sites given" in found["site_purity"]["why"]
    assert (
        found["near_duplicates_across_splits"]["value"] == 0 and not found["near_duplicates_across_splits"]["flagged"]
    )


def test_site_checks_and_leakage_against_their_thresholds() -> None:
    sites = {"cramers_v": 0.9, "site_purity": 0.95, "probe": {"balanced_accuracy": 0.95, "chance": 0.5}}
    leakage = {"near_duplicates": [{"a": "x"}], "patients_in_two_splits": [{"patient_id": "p"}]}
    found = _by_check(_audit(0.5, sites=sites, leakage=leakage))
    assert all(found[c]["flagged"] for c in ("site_label_association", "site_purity", "site_probe_margin"))
    assert found["site_probe_margin"]["value"] == pytest.approx(0.45)
    assert found["near_duplicates_across_splits"]["flagged"] and found["patients_in_two_splits"]["flagged"]
    assert not found["auc_drop_lungs_only"]["flagged"]  # 0.02 lost


def test_site_purity_counts_the_films_of_single_class_sites() -> None:
    labels = ["P"] * 5 + ["N"] * 5 + ["P", "N"]
    sites = ["a"] * 5 + ["b"] * 5 + ["c", "c"]
    assert site_purity(labels, sites) == pytest.approx(10 / 12)
    assert math.isnan(site_purity(labels, ["one"] * len(labels)))


def test_the_grad_cam_ratio_leaves_out_maps_without_mass() -> None:
    summary = attention_summary([0.6, math.nan, 0.2], [0.3, 0.3, 0.3], "predicted class")
    assert summary["images"] == 2 and summary["ratio"] == pytest.approx(0.4 / 0.3)
    assert summary["above_chance_share"] == pytest.approx(0.5)
