"""The runners: one model on one engine (Keras, ONNX Runtime, OpenVINO) behind one interface,
:class:`Runner`. A runner takes what a Keras member takes, float32 NHWC batches already
preprocessed (:func:`deepcovidxr.imaging.preprocess.to_model_input`), of any batch size (the
exported graphs keep a variable batch dimension, so a short last batch is not padded), and returns
one score per image and unit. Opening one (export, cache, precision checks): :mod:`deepcovidxr.runtime.load`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import hardware
from deepcovidxr.runtime.convert import ALTERNATIVE, head_scores, model_spec, require
from deepcovidxr.runtime.precision import Policy


class Runner(Protocol):
    """One member on one engine: float32 NHWC preprocessed batch (n, s, s, 3) -> scores: (n,) for
    a one-unit (sigmoid) head, (n, K) for a K-unit (softmax) head (:mod:`deepcovidxr.contract.classes`)."""

    member: Member
    engine: str
    precision: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class _Checked:
    """Input checks shared by the runners: a clear error beats a runtime's shape complaint.

    ``member`` is the ensemble member the runner scores (its output goes through :func:`head_scores`);
    None for another model (the lung U-Net), whose output is returned as it is."""

    member: Member | None
    name: str
    engine: str
    precision: str
    stats: dict
    shape: tuple[int, ...]  # one input image: (s, s, 3) for a member
    output_tail: tuple[int, ...]  # one output row: (units,) for a member

    def _setup(
        self, member: Member | None, name: str, engine: str, precision: str, stats: dict, shape, tail, head=None
    ) -> None:
        self.member, self.name, self.engine, self.precision, self.stats = member, name, engine, precision, stats
        self.head = member is not None if head is None else head
        self.shape = tuple(int(d) if isinstance(d, int) else -1 for d in shape)
        self.output_tail = tuple(int(d) if isinstance(d, int) else -1 for d in tail)

    def _batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 1 + len(self.shape) or tuple(batch.shape[1:]) != self.shape:
            wanted = ", ".join(str(d) for d in self.shape)
            raise UsageError(f"{self.name}: expected a float32 batch (n, {wanted}), got shape {batch.shape}")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _empty(self) -> np.ndarray:
        return self._finish(np.zeros((0, *(max(d, 1) for d in self.output_tail)), np.float32))

    def _finish(self, output) -> np.ndarray:
        return head_scores(output) if self.head else np.asarray(output, np.float32)

    @property
    def units(self) -> int:
        """Units of a member's head: 1 (sigmoid, scores (n,)) or K (softmax, scores (n, K))."""
        return self.output_tail[0] if self.output_tail else 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.engine}/{self.precision}>"


def _member_name(member: Member | None, fallback: str) -> str:
    return member.short_name if member is not None else fallback


class KerasRunner(_Checked):
    """``head``: the output is a member's head ((n,) for one unit, (n, K) for K); default: when ``member`` is given."""

    def __init__(self, member: Member | None, model, name: str = "model", head: bool | None = None) -> None:
        import tensorflow as tf

        shape, tail = model.input_shape[1:], model.output_shape[1:]
        self._setup(member, _member_name(member, name), "keras", "fp32", {}, shape, tail, head)
        self.model = model
        # One trace for every batch size (the signature's batch is None): a short last batch is not padded.
        self._forward = tf.function(
            lambda x: model(x, training=False), input_signature=model_spec(model), autograph=False
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = self._batch(batch)
        if not len(batch):
            return self._empty()
        return self._finish(self._forward(batch))


class OnnxRuntimeRunner(_Checked):
    def __init__(
        self, member: Member | None, path: Path, policy: Policy, stats: dict, threads: int | None, name: str = "model"
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "engine 'onnxruntime'", ALTERNATIVE["onnxruntime"])
        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        stats["session_seconds"] = time.perf_counter() - start
        inputs, outputs = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._input, self._output = inputs.name, outputs.name
        self._setup(
            member,
            _member_name(member, name),
            "onnxruntime",
            policy.engine_precision,
            stats,
            inputs.shape[1:],
            outputs.shape[1:],
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = self._batch(batch)
        if not len(batch):
            return self._empty()
        return self._finish(self.session.run([self._output], {self._input: batch})[0])


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def openvino_core(ov=None):
    """One OpenVINO Core per process (the Core is thread-safe: members compile in parallel threads)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            ov = ov or require("openvino", "openvino", "engine 'openvino'", ALTERNATIVE["openvino"])
            _CORE = ov.Core()
        return _CORE


class OpenVinoRunner(_Checked):
    def __init__(
        self,
        member: Member | None,
        path: Path,
        policy: Policy,
        stats: dict,
        threads: int | None,
        name: str = "model",
        blob_cache: Path | None = None,
    ) -> None:
        ov = require("openvino", "openvino", "engine 'openvino'", ALTERNATIVE["openvino"])
        self.path = path
        core = openvino_core(ov)
        config: dict[str, Any] = {}
        if policy.engine_precision == "bf16":
            check_bf16(core)
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        else:
            # The CPU plugin picks bf16 by itself on bf16-capable CPUs: fp32 means fp32, and int8 means
            # int8 where quantised with fp32 around it (as in ONNX Runtime), so its error is int8's alone.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if blob_cache is not None:
            # OpenVINO's own compiled-model cache (keyed by the model, the device, this config and the
            # OpenVINO version, checked by OpenVINO): a warm start imports the compiled graph instead of
            # compiling it again.
            config["CACHE_DIR"] = str(blob_cache)
        start = time.perf_counter()
        self.compiled = core.compile_model(str(path), "CPU", config)
        stats["compile_seconds"] = time.perf_counter() - start
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        stats["inference_precision"] = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        inputs, outputs = self.compiled.input(0).get_partial_shape(), self.compiled.output(0).get_partial_shape()
        dims = [[d.get_length() if d.is_static else None for d in shape] for shape in (inputs, outputs)]
        precision = policy.engine_precision
        self._setup(member, _member_name(member, name), "openvino", precision, stats, dims[0][1:], dims[1][1:])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = self._batch(batch)
        if not len(batch):
            return self._empty()
        self.request.infer({0: batch})
        # Copied: the request's output buffer is reused by the next infer().
        return self._finish(np.array(self.request.get_output_tensor(0).data, np.float32))


def check_bf16(core=None) -> None:
    """Refuse bf16 on a CPU without native bf16 kernels (OpenVINO's CPU plugin would emulate it)."""
    if not hardware.cpu_supports_bf16(core):
        raise UsageError(
            "bf16 inference needs a CPU with avx512_bf16 or AMX (not found on this one); use precision fp32, "
            "or int8 with calibration images"
        )


__all__ = ["KerasRunner", "OnnxRuntimeRunner", "OpenVinoRunner", "Runner", "check_bf16", "openvino_core"]
