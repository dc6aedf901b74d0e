"""The ensemble's model card: ``MODEL_CARD.md`` (a page to read) and ``model_card.json`` (the same
facts for a program), written by ``ensemble.py`` beside ``ensemble_weights.json``.

Nothing is typed by hand: every figure is read from a record the pipeline already wrote, so the
card cannot disagree with the run. The JSON follows the spirit of a MONAI bundle's
``metadata.json``; its top-level keys and where each is read from:

- ``schema``: ``"deepcovidxr-model-card/1"``; ``name``; ``version`` (``deepcovidxr.__version__``);
  ``created`` (UTC time the card was written).
- ``disclaimer``: ``deepcovidxr.DISCLAIMER``; ``intended_use``: what the ensemble is for and not for.
- ``task``: ``classes`` and ``kind`` (binary / multiclass) from the weights JSON (else the members'
  sidecars), ``output`` (what the score means).
- ``members``: one entry per member: ``name``, ``backbone``, ``size``, ``crop``, ``file``,
  ``sha256`` (passed in by the stage, :func:`deepcovidxr.runtime.digest.file_sha256`), ``classes``
  (:func:`deepcovidxr.contract.classes.member_classes`) and ``training_data``: from the member's
  ``<stem>_config.json`` (image and positive counts, per-class counts when recorded) and
  ``<stem>_done.json`` (settings, data fingerprint, finish time) beside it
  (:class:`deepcovidxr.contract.run_paths.RunPaths`), or the string ``"not recorded"``.
- ``ensemble``: ``rule`` and ``weights`` (the weights JSON), ``fitted_on``, ``draws``, ``seed``
  (the stage's ``summary.json``).
- ``performance``: ``validation`` (the Validation fit stored in the weights JSON), ``test`` (the
  Test metrics with their CIs exactly as ``summary.json`` holds them), ``test_calibration``.
- ``calibration``: the weights JSON's ``calibration`` field (the map and, binary, the operating
  points chosen on Validation), or None.
- ``input``: ``sizes`` and ``crops`` (views) of the members, ``preprocessing`` (the constants of
  :mod:`deepcovidxr.imaging.preprocess`), ``unet`` (the shipped U-Net's metadata JSON and sha256),
  ``input_check`` (the shipped input check's held-out flag rates per kind of image).
- ``audit`` (only when the stage passes an audit): :func:`audit_summary` of ``audit.json``:
  ``source`` (its name relative to the card), ``statement``, ``split``, ``modes`` (AUC with its
  95% CI and image count, as is / lungs only / lungs removed), ``attention``, ``findings`` (as
  the audit wrote them) and ``flagged`` (how many of them are flagged).
- ``provenance``: ``versions`` and ``commit`` (:mod:`deepcovidxr.config.run_record`), the
  ``sources`` the card was read from.
- ``references``: the original paper and code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepcovidxr import DISCLAIMER, __version__
from deepcovidxr.config import run_record
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract import shipped
from deepcovidxr.contract.atomic import write_json, write_text
from deepcovidxr.contract.layout import Member
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.imaging import preprocess

log = logging.getLogger(__name__)

SCHEMA = "deepcovidxr-model-card/1"
NOT_RECORDED = "not recorded"
INPUT_CHECK_ASSET = ("input_check.json",)  # lungs.input_check.MODEL_ASSET (a layer above this one)
INTENDED_USE = (
    "Research on detecting COVID-19 findings on frontal chest radiographs (PA/AP), as in DeepCOVID-XR. "
    "Not for diagnosis, triage or any clinical decision; not validated for lateral views, CT, "
    "children or populations unlike the training data."
)
REFERENCES = (
    "Wehbe RM et al. DeepCOVID-XR: An Artificial Intelligence Algorithm to Detect COVID-19 on Chest "
    "Radiographs Trained and Tested on a Large U.S. Clinical Data Set. Radiology 2021;299(1):E167-E176.",
    "https://github.com/IVPLatNU/DeepCovidXR",
)
# What a member's _config.json records of its training data (trainer._run_info, Task.class_counts).
_DATA_FIELDS = (
    "train_images",
    "train_positives",
    "validation_images",
    "validation_positives",
    "train_counts",
    "validation_counts",
)
_COUNTS = ("n", "positives")  # metric leaves that are image counts


def _read(path: Path | None) -> dict[str, Any] | None:
    if path is None:  # a record the caller has not got (an audit run without -e)
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def training_data(member: Member, path: Path) -> dict[str, Any] | str:
    """What the member's training records beside its file say of its data, or "not recorded"
    (the authors' files and any file trained elsewhere have no record)."""
    paths = RunPaths(Path(path).parent, member)
    run = _read(paths.config) or {}
    done = _read(paths.member_record) or {}
    found: dict[str, Any] = {key: run[key] for key in _DATA_FIELDS if key in run}
    if done:
        found["data_fingerprint"] = done.get("data")
        found["finished"] = done.get("finished")
        found["epochs"] = done.get("settings", {}).get("epochs")
    if not found:
        return NOT_RECORDED
    found["records"] = [p.name for p in (paths.config, paths.member_record) if p.is_file()]
    return found


def _input_check() -> dict[str, Any] | str:
    """The shipped input check's held-out figures: per kind of image, the share flagged in its
    patient-split cross-validation (frontal kinds should be near 0, the others near 1)."""
    model = _read(shipped.asset(*INPUT_CHECK_ASSET))
    if not model:
        return NOT_RECORDED
    fit = model.get("fit", {})
    rates = {
        kind: {**row, "flag_rate": row["flagged"] / row["held_out"] if row.get("held_out") else None}
        for kind, row in fit.get("cross_validation", {}).items()
    }
    return {
        "model": model.get("model"),
        "threshold": model.get("threshold"),
        "splits": fit.get("cross_validation_splits"),
        "held_out": rates,
    }


def _unet(unet_sha256: str | None) -> dict[str, Any] | str:
    weights = shipped.unet_weights()
    meta = _read(weights.with_name("lung_unet.json"))
    if meta is None:
        return NOT_RECORDED
    keep = ("name", "input", "output", "validation", "date", "deepcovidxr_version", "keras_version")
    training = meta.get("training_data", {})
    return {
        "file": weights.name,
        "sha256": unet_sha256,
        **{key: meta.get(key) for key in keep},
        "training_data": {k: training.get(k) for k in ("root", "datasets", "train_pairs", "heldout_pairs")},
    }


def _input_contract(members: Sequence[tuple[Member, Path]], digests: Mapping[str, str]) -> dict[str, Any]:
    """The card's ``input``: the members' views, the CNN input path's constants, the U-Net, the input check."""
    return {
        "sizes": sorted({m.size for m, _ in members}),
        "crops": sorted({m.crop.value for m, _ in members}),
        "preprocessing": {
            "resize": "Lanczos (Pillow, antialiased) to the member's size",
            "channels": "gray repeated to RGB",
            "scale": "/255",
            # float32 constants: rounded so the card shows 0.485, not 0.48500001430511475
            "mean": [round(float(v), 6) for v in preprocess.IMAGENET_MEAN],
            "std": [round(float(v), 6) for v in preprocess.IMAGENET_STD],
        },
        "unet": _unet(digests.get("unet")),
        "input_check": _input_check(),
    }


def _name(path: Path | None) -> str | None:
    return Path(path).name if path is not None else None


def _provenance(weights_source: str | None, metrics_source: str | None) -> dict[str, Any]:
    """The versions, the commit and the records the card's figures come from."""
    return {
        "versions": run_record.versions(),
        "commit": run_record.commit(),
        "sources": {"weights": weights_source, "metrics": metrics_source},
    }


def _ran_weights(ran: Mapping[str, Any]) -> dict[str, float]:
    """member -> weight from audit.json's record of what ran ({} when it holds no weights)."""
    if not ran.get("weights"):
        return {}
    return dict(zip(ran.get("members", []), ran["weights"], strict=True))


def audit_summary(audit: Mapping[str, Any], source: str = "audit.json") -> dict[str, Any]:
    """What the card carries of an audit (``audit.json``'s content): every figure copied from the
    mapping, ``source`` naming the file relative to the card."""
    findings = list(audit.get("findings") or [])
    modes = audit.get("modes") or {}
    return {
        "source": source,
        "statement": audit.get("statement"),
        "split": audit.get("split", (audit.get("run") or {}).get("split")),
        "modes": {mode: {key: entry.get(key) for key in ("auc", "auc_ci95", "n")} for mode, entry in modes.items()},
        "attention": audit.get("attention"),
        "findings": findings,
        "flagged": sum(bool(f.get("flagged")) for f in findings),
    }


def build(
    members: Sequence[tuple[Member, Path]],
    digests: Mapping[str, str],
    weights_json: Path | None,
    summary_json: Path | None,
    audit: Mapping[str, Any] | None = None,
    audit_source: str = "audit.json",
) -> dict[str, Any]:
    """The card as a JSON-ready dict. ``digests``: each member's short name (and ``"unet"``) ->
    the file's sha256, computed by the stage (the digest cache is a layer above this one).
    ``audit``: ``audit.json``'s content when the audit ran (``audit_source``: its name relative to
    the card); without it the card has no ``audit`` key."""
    weights = _read(weights_json) or {}
    summary = _read(summary_json) or {}
    ran = (audit or {}).get("run") or {}
    ran_weights = _ran_weights(ran)
    first = members[0][1] if members else None
    classes = list(weights.get("classes") or (class_names.member_classes(first) if first else ()))
    fit = weights.get("calibration") or summary.get("calibration") or {}
    binary = len(classes) <= 2
    card = {
        "schema": SCHEMA,
        "name": "DeepCOVID-XR ensemble",
        "version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "disclaimer": DISCLAIMER,
        "intended_use": INTENDED_USE,
        "task": {
            "kind": "binary" if binary else "multiclass",
            "classes": classes,
            "output": "the ensemble score of Positive (0..1)" if binary else "one probability per class, summing to 1",
        },
        "members": [
            {
                "name": m.short_name,
                "backbone": m.backbone,
                "size": m.size,
                "crop": m.crop.value,
                "file": Path(path).name,
                "sha256": digests.get(m.short_name),
                "classes": list(class_names.member_classes(path)),
                "training_data": training_data(m, path),
            }
            for m, path in members
        ],
        "ensemble": {
            # without ensemble.py's records (audit.py given members alone, or a flat weights file)
            # the audit's record of what it ran is the source
            "rule": weights.get("rule", summary.get("method")) or ran.get("rule"),
            "weights": weights.get("weights") or ran_weights,
            **{key: summary.get(key) for key in ("fitted_on", "draws", "seed")},
        },
        "performance": {
            "validation": fit.get("validation"),
            "test": summary.get("test"),
            "test_calibration": (summary.get("calibration") or {}).get("test"),
        },
        "calibration": weights.get("calibration"),
        "input": _input_contract(members, digests),
        "provenance": _provenance(
            _name(weights_json) if weights.get("weights") else (audit_source if ran_weights else None),
            _name(summary_json),
        ),
        "references": list(REFERENCES),
    }
    if audit is not None:
        card["audit"] = audit_summary(audit, audit_source)
    return card


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        return json.dumps(value).replace("|", "\\|")
    return "—" if value is None else str(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """Nested metrics as (dotted name, leaf) rows for a two-column table."""
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flat(f"{prefix}.{key}" if prefix else key, item)]
    if prefix.rpartition(".")[2] in _COUNTS and isinstance(value, float) and value.is_integer():
        return [(prefix, int(value))]  # the Validation fit stores its counts as floats
    return [(prefix, value)]


def _data_cell(data: dict[str, Any] | str, key: str) -> Any:
    return data if isinstance(data, str) else data.get(key, NOT_RECORDED)


def _audit_lines(audit: Mapping[str, Any] | None) -> list[str]:
    """The card's "Audit" section: the audit's own statement, the modes' AUCs and the findings."""
    if not audit:
        return []
    findings = audit["findings"]
    lines = ["## Audit", ""]
    lines += [f"> {audit['statement']}", ""] if audit.get("statement") else []
    where = f"From `{audit['source']}` ({_cell(audit['split'])} split)"
    lines += [f"{where}: {audit['flagged']} of {len(findings)} checks flagged.", ""]
    rows = []
    for mode, entry in audit["modes"].items():
        low, high = entry.get("auc_ci95") or (None, None)
        rows.append([mode, entry.get("auc"), f"{_cell(low)} – {_cell(high)}", entry.get("n")])
    lines += ["### AUC as is, lungs only, lungs removed", "", *_table(["mode", "AUC", "95% CI", "images"], rows)]
    if audit.get("attention"):
        lines += [
            "### Where the model looks (Grad-CAM)",
            "",
            *_table(["field", "value"], _flat("", audit["attention"])),
        ]
    lines += ["### Findings", ""]
    lines += _table(
        ["check", "value", "threshold", "flagged", "why"],
        [
            [
                f.get("check"),
                f.get("value"),
                f.get("threshold"),
                "**FLAGGED**" if f.get("flagged") else "ok",
                f.get("why"),
            ]
            for f in findings
        ],
    )
    return lines


def markdown(card: Mapping[str, Any]) -> str:
    """The card as a Markdown page: the same facts as the JSON, as headings and tables."""
    members, perf, inp = card["members"], card["performance"], card["input"]
    lines = [f"# Model card: {card['name']} ({card['version']})", "", f"> {card['disclaimer']}", ""]
    lines += ["## Intended use", "", card["intended_use"], ""]
    task = card["task"]
    lines += ["## Task", "", f"{task['kind']}: classes {', '.join(task['classes'])}; output: {task['output']}.", ""]
    lines += ["## Members", ""]
    lines += _table(
        ["member", "backbone", "size", "crop", "classes", "sha256", "file"],
        [
            [m["name"], m["backbone"], m["size"], m["crop"], ", ".join(m["classes"]), m["sha256"], m["file"]]
            for m in members
        ],
    )
    lines += ["### Training data", ""]
    keys = ("train_images", "train_positives", "validation_images", "validation_positives", "train_counts")
    lines += _table(
        ["member", *keys], [[m["name"], *(_data_cell(m["training_data"], k) for k in keys)] for m in members]
    )
    ens = card["ensemble"]
    lines += [
        "## Ensemble",
        "",
        f"Rule `{ens['rule']}`, fitted on {ens['fitted_on']} (draws {ens['draws']}, seed {ens['seed']}).",
        "",
    ]
    lines += _table(["member", "weight"], list(ens["weights"].items()))
    lines += ["## Performance", ""]
    for title, key in (
        ("Validation (the fit)", "validation"),
        ("Test", "test"),
        ("Test calibration", "test_calibration"),
    ):
        lines += [f"### {title}", ""] + (
            _table(["metric", "value"], _flat("", perf[key])) if perf[key] else ["not recorded", ""]
        )
    lines += _audit_lines(card.get("audit"))
    lines += ["## Calibration and operating points", ""]
    lines += _table(["field", "value"], _flat("", card["calibration"])) if card["calibration"] else ["none", ""]
    lines += ["## Input contract", "", f"Sizes {inp['sizes']}; views {', '.join(inp['crops'])}.", ""]
    lines += _table(["preprocessing", "value"], list(inp["preprocessing"].items()))
    unet = inp["unet"]
    lines += ["### Lung U-Net", ""] + (
        _table(["field", "value"], _flat("", unet)) if isinstance(unet, dict) else [unet, ""]
    )
    check = inp["input_check"]
    lines += ["### Input check (held-out)", ""]
    if isinstance(check, dict):
        lines += [f"{check['model']}; threshold {check['threshold']}; {check['splits']} splits.", ""]
        lines += _table(
            ["kind", "held out", "flagged", "flag rate"],
            [[k, r.get("held_out"), r.get("flagged"), r.get("flag_rate")] for k, r in check["held_out"].items()],
        )
    else:
        lines += [check, ""]
    prov = card["provenance"]
    lines += ["## Versions", "", f"Commit: {prov['commit'] or NOT_RECORDED}; created {card['created']}.", ""]
    lines += _table(["package", "version"], list(prov["versions"].items()))
    lines += ["## References", "", *(f"- {ref}" for ref in card["references"]), ""]
    return "\n".join(lines)


def write(md_path: Path, json_path: Path, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """``MODEL_CARD.md`` and ``model_card.json`` (:class:`deepcovidxr.contract.run_paths.EnsemblePaths`),
    each written atomically."""
    write_json(json_path, dict(card))
    write_text(md_path, markdown(card))
    log.info("model card: %s and %s", md_path, json_path)
    return md_path, json_path


__all__ = ["NOT_RECORDED", "SCHEMA", "audit_summary", "build", "markdown", "training_data", "write"]
