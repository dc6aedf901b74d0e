"""The export stage: ensemble members as ONNX, TFLite or SavedModel files plus ``ensemble.json``,
which describes the ensemble well enough to run it without this package: members and their files
(with sha256), weights and combination rule, input contract, output meaning, class names.

Each exported member is checked against its Keras original on a small random batch and the
largest absolute score difference is recorded (``parity_max_abs_diff``) when a runtime for the
format is installed: every output column (one for the binary task, one per class for a softmax
member). The conversion runs in a process of its own (:mod:`deepcovidxr.runtime.export_worker`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepcovidxr import DISCLAIMER, __version__
from deepcovidxr.config.inference_stages import ExportConfig
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.layout import Member
from deepcovidxr.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD
from deepcovidxr.runtime import convert, export_worker, exports
from deepcovidxr.runtime.digest import file_sha256, package_version, tree_sha256
from deepcovidxr.scoring.task import task_for
from deepcovidxr.stages.common import StageResult

log = logging.getLogger(__name__)
# Re-exported: the checks live beside the conversion in the worker process.
parity = export_worker.parity
run_exported = export_worker.run_exported

REPORT = "ensemble.json"
PARITY_WARN = 1e-4
# How each format names the score tensor (ONNX: renamed by convert.to_onnx; the others: Keras' exporters).
OUTPUT_NAMES = {
    "onnx": convert.OUTPUT_NAME,
    "tflite": "the model's single output tensor",
    "saved_model": "output_0 of the 'serve' signature",
}


def _combination(chosen) -> dict:
    """The rule the resolved ensemble combines with. The rule travels with the weights: read it
    from the Ensemble object when it carries one (``method``/``rule``), else the published
    weighted sum of sigmoids."""
    from deepcovidxr.inference.ensemble import THRESHOLD

    carried = (getattr(chosen, name, None) for name in ("method", "rule", "combination"))
    rule = next((value for value in carried if isinstance(value, str)), "weighted")
    return {
        "rule": rule,
        "weights": dict(zip(chosen.names, (float(w) for w in chosen.weights), strict=True)),
        "threshold": float(getattr(chosen, "threshold", THRESHOLD)),
        "description": {
            "weighted": "sum over members of weight * member score",
            "mean": "mean of the member scores",
            "vote": "fraction of members scoring >= 0.5",
            "max": "largest member score",
        }.get(rule, rule),
    }


def input_contract(size: int) -> dict:
    return {
        "name": convert.INPUT_NAME,
        "shape": [None, size, size, 3],
        "layout": "NHWC",
        "size": size,
        "channels": 3,
        "dtype": "float32",
        "normalisation": "ImageNet mean/std after /255",
        "mean": IMAGENET_MEAN.tolist(),
        "std": IMAGENET_STD.tolist(),
        "preparation": "8-bit gray image (lung crop for *_crop members), Pillow Lanczos resize to size x size, "
        "replicated to 3 channels, x / 255, then (x - mean) / std per channel",
    }


def export_member(member: Member, member_path: Path, fmt: str, output: Path, classes: tuple[str, ...]) -> dict:
    """Export one member (in a process of its own: :data:`deepcovidxr.runtime.exports.ISOLATE_EXPORTS`,
    so 24 members cost one export's memory) and check every output column against Keras; returns
    its ensemble.json entry."""
    suffix = convert.CONVERTERS[fmt][0]
    destination = Path(output) / f"{Path(member.legacy_filename).stem}{suffix}"
    request = exports.member_request(member, member_path, fmt, destination, parity=True)
    result = exports.run_export_worker(request) if exports.ISOLATE_EXPORTS else export_worker.export(request)
    seconds, difference = result["seconds"], result["parity_max_abs_diff"]
    if difference is not None and difference > PARITY_WARN:
        log.warning("%s: exported scores differ from Keras by up to %.2e", destination.name, difference)
    log.info(
        "%s -> %s in %.1f s (max |diff| vs Keras over %d column(s) %s)",
        member_path.name,
        destination.name,
        seconds,
        task_for(classes).units,
        "not checked" if difference is None else f"{difference:.1e}",
    )
    digest = tree_sha256(destination) if destination.is_dir() else file_sha256(destination)
    return {
        "name": member.short_name,
        "backbone": member.backbone,
        "size": member.size,
        "crop": member.crop.value,
        "classes": list(classes),
        "file": destination.name,
        "sha256": digest,
        "source": member_path.name,
        "source_sha256": file_sha256(member_path),
        "input": input_contract(member.size),
        "export_seconds": round(seconds, 3),
        "parity_max_abs_diff": difference,
    }


def output_contract(fmt: str, classes: tuple[str, ...], combination: dict) -> dict:
    """What each member file outputs, as ensemble.json states it: one sigmoid unit for the binary
    task, a softmax over the classes otherwise (:mod:`deepcovidxr.scoring.task`)."""
    task = task_for(classes)
    meaning = task.pick(
        binary=(
            f"probability of class {classes[-1]!r} (COVID-19 positive); the ensemble score is "
            f"{combination['description']}, positive when >= {combination['threshold']}"
        ),
        multiclass=(
            f"probability of each class, in the order of class_names ({', '.join(classes)}); rows sum to 1; "
            f"the ensemble's probabilities are {combination['description']} per class, the predicted class "
            "the largest"
        ),
    )
    shape = [None, task.units]
    return {"name": OUTPUT_NAMES[fmt], "shape": shape, "activation": task.activation, "meaning": meaning}


def run(config: ExportConfig) -> StageResult:
    """Export every chosen member (default: those with a non-zero weight) and write ensemble.json."""
    from deepcovidxr.inference.ensemble import resolve_ensemble

    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    # The classes the members were trained on (their sidecars), as predict.py reads them.
    classes = tuple(getattr(chosen, "classes", None) or class_names.common(chosen.members))
    config.output.mkdir(parents=True, exist_ok=True)
    log.info("export: %d members as %s to %s", len(chosen.members), config.format, config.output)
    entries = []
    for (member, path), weight in zip(chosen.members, chosen.weights, strict=True):
        entry = export_member(member, path, config.format, config.output, classes)
        entry["weight"] = float(weight)
        entries.append(entry)
    combination = _combination(chosen)
    report = config.output / REPORT
    write_json(
        report,
        {
            "disclaimer": DISCLAIMER,
            "format": config.format,
            "members": entries,
            "combination": combination,
            "class_names": list(classes),
            "output": output_contract(config.format, classes, combination),
            "versions": {
                "deepcovidxr": __version__,
                **{p: package_version(p) for p in ("tensorflow", "keras", "tf2onnx", "onnx")},
            },
        },
    )
    log.info("export: wrote %s", report)
    # report: the ensemble.json written; files: the exported member files in ensemble order
    return StageResult(report, files=tuple(config.output / e["file"] for e in entries))
