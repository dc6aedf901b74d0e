"""The export stage: ensemble members as ONNX, TFLite or SavedModel files plus ``ensemble.json``,
which describes the ensemble well enough to run it without this package: members and their files
(with sha256), weights and combination rule, input contract, output meaning, class names.

Each exported member is checked against its Keras original on a small random batch and the
largest absolute score difference is recorded (``parity_max_abs_diff``) when a runtime for the
format is installed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER, __version__, engines
from deepcovidxr.atomic import write_json
from deepcovidxr.configs import ExportConfig
from deepcovidxr.layout import Member
from deepcovidxr.preprocess import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

REPORT = "ensemble.json"
CLASS_NAMES = ["Negative", "Positive"]
PARITY_WARN = 1e-4
# How each format names the score tensor (ONNX: renamed by engines.to_onnx; the others: Keras' exporters).
OUTPUT_NAMES = {
    "onnx": engines.OUTPUT_NAME,
    "tflite": "the model's single output tensor",
    "saved_model": "output_0 of the 'serve' signature",
}


@dataclass(frozen=True)
class ExportResult:
    """``report``: the ensemble.json written; ``files``: the exported member files in ensemble order."""

    report: Path
    files: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0


def _combination(chosen) -> dict:
    """The rule the resolved ensemble combines with. The rule travels with the weights: read it
    from the Ensemble object when it carries one (``method``/``rule``), else the published
    weighted sum of sigmoids."""
    from deepcovidxr.inference import THRESHOLD

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
        "name": engines.INPUT_NAME,
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


def parity(model, fmt: str, path: Path, size: int, seed: int = 0) -> float | None:
    """Largest |exported - Keras| score on two random standardised images; None when no runtime
    for the format is installed here (the export itself does not need one)."""
    batch = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = np.asarray(model(batch, training=False))[:, 0]
    got = run_exported(fmt, path, batch)
    return None if got is None else float(np.max(np.abs(got - expected)))


def run_exported(fmt: str, path: Path, batch: np.ndarray) -> np.ndarray | None:
    """Scores (n,) of an exported member file on a preprocessed batch, with the format's own
    runtime (onnxruntime, the TFLite interpreter, tf.saved_model); None if that is not installed."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([engines.OUTPUT_NAME], {engines.INPUT_NAME: batch})[0][:, 0]
    import tensorflow as tf

    if fmt == "tflite":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation notice
            interpreter = tf.lite.Interpreter(model_path=str(path))
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:, 0]
    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(batch)))[:, 0]


def export_member(member: Member, member_path: Path, fmt: str, output: Path) -> dict:
    """Export one member; returns its ensemble.json entry."""
    from deepcovidxr.models import load_member

    suffix = engines.CONVERTERS[fmt][0]
    destination = Path(output) / f"{Path(member.legacy_filename).stem}{suffix}"
    model = load_member(member_path, member)
    start = time.perf_counter()
    engines.convert(model, fmt, destination)
    seconds = time.perf_counter() - start
    difference = parity(model, fmt, destination, member.size)
    if difference is not None and difference > PARITY_WARN:
        log.warning("%s: exported scores differ from Keras by up to %.2e", destination.name, difference)
    log.info(
        "%s -> %s in %.1f s (max |diff| vs Keras %s)",
        member_path.name,
        destination.name,
        seconds,
        "not checked" if difference is None else f"{difference:.1e}",
    )
    digest = engines.tree_sha256(destination) if destination.is_dir() else engines.file_sha256(destination)
    return {
        "name": member.short_name,
        "backbone": member.backbone,
        "size": member.size,
        "crop": member.crop.value,
        "file": destination.name,
        "sha256": digest,
        "source": member_path.name,
        "source_sha256": engines.file_sha256(member_path),
        "input": input_contract(member.size),
        "export_seconds": round(seconds, 3),
        "parity_max_abs_diff": difference,
    }


def run(config: ExportConfig) -> ExportResult:
    """Export every chosen member (default: those with a non-zero weight) and write ensemble.json."""
    from deepcovidxr.inference import resolve_ensemble

    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    config.output.mkdir(parents=True, exist_ok=True)
    log.info("export: %d members as %s to %s", len(chosen.members), config.format, config.output)
    entries = []
    for (member, path), weight in zip(chosen.members, chosen.weights, strict=True):
        entry = export_member(member, path, config.format, config.output)
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
            "class_names": CLASS_NAMES,
            "output": {
                "name": OUTPUT_NAMES[config.format],
                "shape": [None, 1],
                "activation": "sigmoid",
                "meaning": f"probability of class {CLASS_NAMES[1]!r} (COVID-19 positive); "
                f"the ensemble score is {combination['description']}, positive when >= {combination['threshold']}",
            },
            "versions": {
                "deepcovidxr": __version__,
                **{p: engines.package_version(p) for p in ("tensorflow", "keras", "tf2onnx", "onnx")},
            },
        },
    )
    log.info("export: wrote %s", report)
    return ExportResult(report, [config.output / e["file"] for e in entries])
