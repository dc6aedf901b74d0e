"""One member export in a process of its own: ``python -m deepcovidxr.runtime.export_worker '<request JSON>'``.

The engine cache (:func:`deepcovidxr.runtime.exports.run_export_worker`) and the export stage run each
member's conversion here, so the converter's peak memory and whatever TensorFlow keeps afterwards
are returned to the OS when the process exits: a cold cache of 24 members costs one export's
memory, not their sum, and the calling process never imports TensorFlow for it.

Request (:func:`deepcovidxr.runtime.exports.member_request`): ``format`` (onnx, tflite, saved_model,
openvino), ``path`` (the member file), ``member`` ([backbone, size, crop]), ``destination``,
``parity`` (check the export against Keras here, where the model is already loaded). Result, the
last line on stdout: ``{"seconds", "parity_max_abs_diff"}``. Exit 2 on a user-mendable error (its
message is the last line on stderr), 1 on anything else.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from deepcovidxr.contract.layout import CropMode, Member
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import convert

log = logging.getLogger(__name__)


def run_exported(fmt: str, path: Path, batch: np.ndarray) -> np.ndarray | None:
    """Scores of an exported member file on a preprocessed batch, with the format's own runtime
    (onnxruntime, the TFLite interpreter, tf.saved_model, OpenVINO): (n,) for a one-unit head,
    (n, K) for K units (:func:`deepcovidxr.runtime.convert.head_scores`); None if that runtime is not installed."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return convert.head_scores(session.run([convert.OUTPUT_NAME], {convert.INPUT_NAME: batch})[0])
    if fmt == "openvino":
        try:
            import openvino as ov
        except ImportError:
            return None
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return convert.head_scores(compiled(batch)[0])
    import tensorflow as tf

    if fmt == "tflite":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation notice
            interpreter = tf.lite.Interpreter(model_path=str(path))
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        return convert.head_scores(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    loaded = tf.saved_model.load(str(path))
    return convert.head_scores(np.asarray(loaded.serve(tf.constant(batch))))


def parity(model, fmt: str, path: Path, size: int, seed: int = 0) -> float | None:
    """Largest |exported - Keras| over every output column on two random standardised images; None
    when no runtime for the format is installed here (the export itself does not need one)."""
    batch = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = convert.head_scores(np.asarray(model(batch, training=False)))
    got = run_exported(fmt, path, batch)
    if got is None:
        return None
    if got.shape != expected.shape:
        raise RuntimeError(f"{path.name}: exported output shape {got.shape}, Keras {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def export(request: dict) -> dict:
    """Load the member, convert it, optionally check it: the work of one worker process (also
    callable in-process)."""
    from deepcovidxr.networks.members import load_member

    backbone, size, crop = request["member"]
    member = Member(backbone, int(size), CropMode(crop))
    destination = Path(request["destination"])
    model = load_member(Path(request["path"]), member)
    start = time.perf_counter()
    convert.convert(model, request["format"], destination)
    seconds = time.perf_counter() - start
    difference = parity(model, request["format"], destination, member.size) if request.get("parity") else None
    return {"seconds": seconds, "parity_max_abs_diff": difference}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        log.error("usage: python -m deepcovidxr.runtime.export_worker '<request JSON>'")
        return 2
    try:
        result = export(json.loads(args[0]))
    except UsageError as error:
        log.error("%s", error)
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
