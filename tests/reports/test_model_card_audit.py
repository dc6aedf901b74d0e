"""deepcovidxr.reports.model_card with an audit: the card's "audit" entry and its Markdown section hold
the figures of the audit.json they were given, nothing else; without an audit the card is unchanged."""

from __future__ import annotations

import json

import pytest

from deepcovidxr.reports import model_card

STATEMENT = "Passing this audit is no evidence of clinical validity; it only looks for known shortcuts."
AUDIT = {
    "statement": STATEMENT,
    "classes": ["Negative", "Positive"],
    "task": "binary",
    "modes": {
        "as_is": {"auc": 0.7812, "auc_ci95": [0.6523, 0.8934], "n": 40},
        "lungs_only": {"auc": 0.3719, "auc_ci95": [0.2105, 0.5388], "n": 40},
        "lungs_removed": {"auc": None, "auc_ci95": None, "n": 0},
    },
    "attention": {
        "target": "Positive",
        "cam_in_lungs_mean": 0.4137,
        "lung_share_mean": 0.2861,
        "ratio": 1.446,
        "above_chance_share": 0.675,
        "images": 40,
    },
    "findings": [
        {"check": "lungs_removed_auc", "value": 0.7911, "threshold": 0.65, "flagged": True, "why": "AUC kept | lungs"},
        {"check": "site_cramers_v", "value": 0.9516, "threshold": 0.5, "flagged": True, "why": "site = label"},
        {"check": "site_probe", "value": None, "threshold": 0.2, "flagged": False, "why": "no features"},
    ],
    "run": {"split": "Test", "members": ["ResNet50_224_uncrop"]},
}


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The card without and with the audit (no members: an audit-only check of the card)."""
    folder = tmp_path_factory.mktemp("card")
    weights, summary = folder / "ensemble_weights.json", folder / "summary.json"
    weights.write_text(
        json.dumps({"rule": "weighted", "weights": {}, "classes": ["Negative", "Positive"]}), encoding="utf-8"
    )
    summary.write_text(json.dumps({"test": {"auc": 0.78}}), encoding="utf-8")
    plain = model_card.build([], {}, weights, summary)
    audited = model_card.build([], {}, weights, summary, audit=AUDIT, audit_source="../audit/audit.json")
    return plain, audited


def test_the_card_holds_the_audits_figures(cards: tuple[dict, dict]) -> None:
    _, card = cards
    entry = json.loads(json.dumps(card))["audit"]  # as model_card.json holds it
    assert entry["source"] == "../audit/audit.json" and entry["split"] == "Test"
    assert entry["statement"] == STATEMENT
    assert entry["modes"] == AUDIT["modes"]
    assert entry["attention"] == AUDIT["attention"] and entry["findings"] == AUDIT["findings"]
    assert entry["flagged"] == sum(f["flagged"] for f in AUDIT["findings"]) == 2


def test_the_markdown_shows_the_same_figures(cards: tuple[dict, dict]) -> None:
    page = model_card.markdown(cards[1])
    section = page[page.index("## Audit") : page.index("## Calibration")]
    assert STATEMENT in section and "From `../audit/audit.json` (Test split): 2 of 3 checks flagged." in section
    for mode, entry in AUDIT["modes"].items():
        if entry["auc"] is None:
            assert f"| {mode} | — | — – — | {entry['n']} |" in section
        else:
            low, high = entry["auc_ci95"]
            assert f"| {mode} | {entry['auc']:.4f} | {low:.4f} – {high:.4f} | {entry['n']} |" in section
    for finding in AUDIT["findings"]:
        value = "—" if finding["value"] is None else f"{finding['value']:.4f}"
        mark = "**FLAGGED**" if finding["flagged"] else "ok"
        why = finding["why"].replace("|", "\\|")
        assert f"| {finding['check']} | {value} | {finding['threshold']:.4f} | {mark} | {why} |" in section
    assert f"| ratio | {AUDIT['attention']['ratio']:.4f} |" in section


def test_without_an_audit_the_card_is_unchanged(cards: tuple[dict, dict]) -> None:
    plain, audited = cards
    assert "audit" not in plain and "## Audit" not in model_card.markdown(plain)
    rest = {k: v for k, v in audited.items() if k not in ("audit", "created")}
    assert rest == {k: v for k, v in plain.items() if k != "created"}


def test_an_audit_without_ensemble_records_still_has_a_card() -> None:
    """audit.py run without ``-e`` has no weights JSON or summary.json to cite: the card says so."""
    card = model_card.build([], {}, None, None, audit=AUDIT)
    assert card["provenance"]["sources"] == {"weights": None, "metrics": None}
    assert card["audit"]["modes"] == AUDIT["modes"] and "## Audit" in model_card.markdown(card)


def test_an_empty_findings_list_counts_none_flagged() -> None:
    entry = model_card.audit_summary({"modes": {}, "findings": []})
    assert entry["flagged"] == 0 and entry["source"] == "audit.json" and entry["split"] is None
