"""audit.py on a phantom tree with two random-weight members: the files it writes, its AUCs
against scikit-learn's on scores.csv, site confounding flagged (and not for one site), a planted
duplicate found across splits, --strict exit codes, the model card's audit section equal to
audit.json. The masking's known answers are in tests/audit/test_masked_scoring.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.support.helpers import make_phantom_tree, save_random_members

SIZE = 64
MEMBERS = (f"res_{SIZE}_uncrop", f"dense_{SIZE}_crop")
LOOSE = [  # thresholds no random member can cross: only the site checks can flag
    "--max-auc-lungs-removed", "1", "--max-auc-drop-lungs-only", "1", "--min-cam-ratio", "0",
    "--max-near-duplicates", "100", "--max-shared-patients", "100",
]  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 64 px phantom tree (crop and uncrop views), its split_manifest.csv with a site column that
    equals the label and a patient per film, and one Train film planted in Test under another name."""
    root = tmp_path_factory.mktemp("audit")
    for view in ("uncrop", "crop"):
        make_phantom_tree(root / "tree", 30, SIZE, seed=3, view=view)
    uncrop = root / "tree" / str(SIZE) / "uncrop"
    rows = []
    for path in sorted(uncrop.rglob("*.png")):
        split, label, name = path.relative_to(uncrop).parts
        site = "hospital_a" if label == "Positive" else "hospital_b"
        rows.append({"file": f"raw/{name}", "label": label, "patient_id": name[:-4], "split": split,
                     "name": name, "status": "ok", "site": site})  # fmt: skip
    planted = next(p for p in sorted((uncrop / "Train").rglob("*.png")))
    for view in ("uncrop", "crop"):
        source = root / "tree" / str(SIZE) / view / "Train" / planted.parent.name / planted.name
        shutil.copy(source, root / "tree" / str(SIZE) / view / "Test" / planted.parent.name / "planted.png")
    rows.append({**rows[0], "file": "raw/planted.png", "split": "Test", "name": "planted.png",
                 "label": planted.parent.name, "patient_id": "planted",
                 "site": "hospital_a" if planted.parent.name == "Positive" else "hospital_b"})  # fmt: skip
    with (root / "tree" / "split_manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "tree", save_random_members(root / "members", MEMBERS)


def _run(argv: list[str]) -> int:
    from deepcovidxr import cli

    return cli.main("audit", [*argv, "--engine", "keras", "--bootstrap", "200", "--batch-size", "8"])


WEIGHTS = {MEMBERS[0]: 0.25, MEMBERS[1]: 0.75}


@pytest.fixture(scope="module")
def confounded(tree, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, Path]:
    """The audit with sites from the manifest, ``--strict``, and ``-e`` naming weights in an
    ``Ensemble_Results`` folder where ensemble.py's card is stood in for by a placeholder."""
    from deepcovidxr.scoring import weights_file

    root, members = tree
    base = tmp_path_factory.mktemp("confounded")
    results = base / "fit" / "Ensemble_Results"
    weights_file.save_weights(WEIGHTS, results)
    (results / "model_card.json").write_text("{}", encoding="utf-8")
    argv = ["-w", str(members), "-e", str(results / "ensemble_weights.json"), "-i", str(root), "-o", str(base / "out")]
    return base / "out", _run([*argv, "--strict", *LOOSE]), results


def test_the_outputs_are_written_and_strict_exits_3_when_flagged(confounded) -> None:
    out, code, _ = confounded
    for name in ("scores.csv", "audit.json", "audit.html", "MODEL_CARD.md", "model_card.json"):
        assert (out / name).is_file(), name
    assert code == 3
    assert not (out / ".audit_journal").exists()  # the outputs are written: nothing is left to resume
    assert not (out / ".scratch").exists() or not any((out / ".scratch").iterdir())


def test_the_aucs_equal_scikit_learns_on_scores_csv(confounded) -> None:
    out, _, _ = confounded
    table = pd.read_csv(out / "scores.csv")
    audit = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert len(table) == audit["images"] == 7  # 6 Test films and the planted one
    for mode in ("as_is", "lungs_only", "lungs_removed"):
        expected = roc_auc_score(table["y"], table[mode])
        assert audit["modes"][mode]["auc"] == pytest.approx(expected, abs=1e-5)
        low, high = audit["modes"][mode]["auc_ci95"]
        assert 0 <= low <= high <= 1
    assert ((table["lung_share"] > 0) & (table["lung_share"] < 1)).all()
    assert table["cam_in_lungs"].between(0, 1).all()


def test_site_equal_to_label_is_flagged_and_the_planted_duplicate_found(confounded) -> None:
    out, _, _ = confounded
    audit = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    found = {f["check"]: f for f in audit["findings"]}
    assert audit["sites"]["source"] == "split_manifest.csv"
    assert found["site_label_association"]["flagged"] and found["site_label_association"]["value"] == pytest.approx(1.0)
    assert found["site_purity"]["flagged"] and found["site_purity"]["value"] == pytest.approx(1.0)
    pairs = audit["leakage"]["near_duplicates"]
    assert any({p["split_a"], p["split_b"]} == {"Train", "Test"} and p["distance"] == 0 for p in pairs)
    assert any(p["a"].endswith("planted.png") or p["b"].endswith("planted.png") for p in pairs)
    assert audit["leakage"]["patients_in_two_splits"] == []
    for finding in audit["findings"]:
        assert set(finding) == {"check", "value", "threshold", "flagged", "why"}


def test_the_model_card_carries_the_findings_of_audit_json(confounded) -> None:
    out, _, _ = confounded
    audit = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    assert card["audit"]["findings"] == audit["findings"]
    assert card["audit"]["modes"] == audit["modes"]
    text = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "no evidence of clinical validity" in text and "site_label_association" in text


def test_the_card_beside_the_weights_gains_the_audit(confounded) -> None:
    """-e naming ensemble.py's Ensemble_Results/ensemble_weights.json: the card there is rewritten
    with the findings and the weights of that file."""
    out, _, results = confounded
    beside = json.loads((results / "model_card.json").read_text(encoding="utf-8"))
    audit = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert beside["audit"]["findings"] == audit["findings"]
    assert beside["ensemble"]["weights"] == pytest.approx(WEIGHTS)
    assert "## Audit" in (results / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_one_site_is_not_flagged_members_alone_get_equal_weights_and_strict_exits_0(tree, tmp_path: Path) -> None:
    """--sites naming one site for every film: no site check flags. Members alone (no -e; not the
    published 24): equal weights over them, written beside the audit, which the card cites."""
    root, members = tree
    names = sorted(p.relative_to(root / str(SIZE) / "uncrop" / "Test").as_posix()
                   for p in (root / str(SIZE) / "uncrop" / "Test").rglob("*.png"))  # fmt: skip
    (tmp_path / "sites.csv").write_text("file,site\n" + "".join(f"{n},one\n" for n in names), encoding="utf-8")
    argv = ["-w", str(members), "-i", str(root), "-o", str(tmp_path / "out"), "--sites", str(tmp_path / "sites.csv")]
    code = _run([*argv, "--strict", *LOOSE])
    audit = json.loads((tmp_path / "out" / "audit.json").read_text(encoding="utf-8"))
    site_checks = [f for f in audit["findings"] if f["check"].startswith("site")]
    assert len(site_checks) == 3 and not any(f["flagged"] for f in site_checks)
    assert audit["sites"]["probe"] is None and audit["sites"]["probe_note"] == "one site only"
    assert code == 0, [f for f in audit["findings"] if f["flagged"]]
    card = json.loads((tmp_path / "out" / "model_card.json").read_text(encoding="utf-8"))
    assert card["ensemble"]["weights"] == pytest.approx({MEMBERS[0]: 0.5, MEMBERS[1]: 0.5})
    assert card["provenance"]["sources"]["weights"] == "ensemble_weights.json"
    assert (tmp_path / "out" / "equal_weights" / "ensemble_weights.json").is_file()


def test_a_three_class_ensemble_is_audited_one_vs_rest(tmp_path: Path) -> None:
    """Three classes: scores.csv holds ``<mode>.p_<class>``; each mode's AUC is scikit-learn's
    macro one-vs-rest AUC of those columns; the page and the card are written."""
    import keras

    from deepcovidxr import cli
    from deepcovidxr.contract.layout import Member
    from deepcovidxr.networks import members
    from tools.phantom_tasks import PHANTOM_CLASSES, write_class_view_tree

    classes = tuple(PHANTOM_CLASSES)
    write_class_view_tree(tmp_path / "tree", 30, SIZE, seed=4)
    member = Member.parse(f"res_{SIZE}_uncrop")
    keras.utils.set_random_seed(0)
    units, activation = members.head_for(classes)
    model = members.build_member(member.backbone, SIZE, weights=None, outputs=units, activation=activation)
    (tmp_path / "members").mkdir()
    members.save_member(model, tmp_path / "members" / member.legacy_filename, member, classes=classes)
    argv = ["-w", str(tmp_path / "members"), "-i", str(tmp_path / "tree"), "-o", str(tmp_path / "out")]
    assert cli.main("audit", [*argv, "--engine", "keras", "--bootstrap", "100", "--montage", "2"]) == 0
    table = pd.read_csv(tmp_path / "out" / "scores.csv")
    audit = json.loads((tmp_path / "out" / "audit.json").read_text(encoding="utf-8"))
    assert audit["task"] == "multiclass" and audit["classes"] == list(classes)
    for mode in ("as_is", "lungs_only", "lungs_removed"):
        probabilities = table[[f"{mode}.p_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        expected = roc_auc_score(table["y"], probabilities, multi_class="ovr", average="macro")
        assert audit["modes"][mode]["auc"] == pytest.approx(expected, abs=1e-5)
    assert audit["sites"] is None and (tmp_path / "out" / "audit.html").is_file()
    assert (tmp_path / "out" / "MODEL_CARD.md").is_file()


def test_the_page_opens_in_chromium_with_every_image_loaded(confounded) -> None:
    from tests.support.browser import image_widths

    out, _, _ = confounded
    widths = image_widths(out / "audit.html")
    assert len(widths) >= 4 and all(width > 0 for _, width in widths), widths
    text = (out / "audit.html").read_text(encoding="utf-8")
    assert text.index("Findings") < text.index("Where the evidence lies")
    assert "no evidence of clinical validity" in text
