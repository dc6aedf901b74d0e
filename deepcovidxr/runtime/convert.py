"""Keras model -> exported file, one converter per format: ONNX, TFLite, a TensorFlow SavedModel,
and the OpenVINO IR the openvino engine runs. Every export keeps a free batch dimension, takes the
input ``input`` and gives the output ``score``; written atomically (a reader never sees half a file).

Conversion paths (chosen because they work offline with the pinned TensorFlow/Keras/numpy, and
because each keeps the largest member, Inception-ResNet-V2 at 331 px, below 4 GB; see
benchmarks/bench_export_memory.py): Keras -> ONNX through tf2onnx's large-model mode with Keras'
numpy-2 patch (:func:`to_onnx`); Keras -> OpenVINO IR straight from the traced TensorFlow function
with ``openvino.convert_model`` (weights kept fp32; no ONNX step).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.errors import UsageError

INPUT_NAME = "input"
OUTPUT_NAME = "score"
# What to use instead when an engine's runtime is missing.
ALTERNATIVE = {"onnxruntime": "openvino (or keras)", "openvino": "onnxruntime (or keras)"}


def require(module: str, pip_name: str, purpose: str, alternative: str | None = None):
    """Import ``module`` or raise a UsageError saying what to install (and what to use instead)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        instead = f", or use {alternative}" if alternative else ""
        raise UsageError(
            f"{purpose} needs the Python package {pip_name!r}, which is not importable here ({error}): "
            f"pip install {pip_name} (the pinned version is in requirements.txt){instead}"
        ) from error


def model_spec(model):
    """The model's own input shape with a free batch dimension (members: (s, s, 3); the U-Net:
    (256, 256, 1)). Batch left as None: every engine then accepts any batch size, and a short last
    batch is not padded."""
    import tensorflow as tf

    size, channels = int(model.input_shape[1]), int(model.input_shape[-1])
    return [tf.TensorSpec((None, size, size, channels), tf.float32, name=INPUT_NAME)]


def head_scores(output: np.ndarray) -> np.ndarray:
    """A head's output (n, units) -> (n,) for one unit (sigmoid), (n, K) for K units (softmax)."""
    output = np.asarray(output, np.float32)
    return output[:, 0] if output.ndim == 2 and output.shape[1] == 1 else output


def forward_function(model):
    """The member's inference pass as one traced function with a free batch dimension."""
    import tensorflow as tf

    spec = model_spec(model)
    return tf.function(lambda x: model(x, training=False), input_signature=spec, autograph=False), spec


def to_onnx(model, destination: Path) -> Path:
    """Keras member -> ONNX file (input ``input`` (batch, s, s, 3), output ``score`` (batch, units)), atomically.

    tf2onnx in its large-model mode, which skips TensorFlow's grappler pass over a frozen copy of
    every weight (5.7 GB for Inception-ResNet-V2 at 331 px) and keeps the weights out of the graph
    while tf2onnx rewrites it; with :func:`_lean_tf2onnx_nodes` the largest member peaks at ~3.3 GB
    where ``keras.Model.export(format="onnx")`` went past 8.5 GB (benchmarks/bench_export_memory.py)."""
    tf2onnx = require("tf2onnx", "tf2onnx", "ONNX export", "--format tflite or saved_model")
    onnx = require("onnx", "onnx", "ONNX export", "--format tflite or saved_model")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    function, spec = forward_function(model)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=destination.parent) as scratch:
        archive, unpacked = Path(scratch) / "model.zip", Path(scratch) / "model"
        with warnings.catch_warnings(), _normalisation_as_constants(model), _lean_tf2onnx_nodes():
            # tf2onnx's numpy-2 shim (Keras') probes deprecated numpy aliases.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            _patch_tf2onnx_for_numpy2()
            tf2onnx.convert.from_function(function, spec, large_model=True, output_path=str(archive))
        del function
        gc.collect()
        with zipfile.ZipFile(archive) as bundle:  # the graph plus one file per weight tensor
            bundle.extractall(unpacked)
        proto = onnx.load(str(unpacked / "__MODEL_PROTO.onnx"))  # pulls the weights back in
    _name_onnx_io(proto)
    with atomic_path(destination) as tmp:
        onnx.save(proto, str(tmp))
    return destination


def _patch_tf2onnx_for_numpy2() -> None:
    """Keras' own fix for tf2onnx 1.17 under numpy 2 (what ``Model.export(format="onnx")`` applies)."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # a Keras without it: a tf2onnx that needs no patch
        return
    patch_tf2onnx()


@contextlib.contextmanager
def _lean_tf2onnx_nodes() -> Iterator[None]:
    """tf2onnx rewrites each node's NodeProto after every optimiser pass (24 passes) by clearing its
    attributes and copying them in again. Under protobuf's upb backend a cleared message keeps its
    memory in its arena, so every pass added one more copy of every weight (+210 MB a pass for
    Inception-ResNet-V2). Giving each node a fresh NodeProto instead lets the old one, and its
    arena, be freed; the node's contents are the same."""
    from onnx import NodeProto
    from tf2onnx import graph

    original = graph.Node.update_proto

    def update_proto(node, external_tensor_storage=None):
        fresh = NodeProto()
        for descriptor, value in node.op.ListFields():
            if descriptor.name == "attribute":
                continue  # written by the original from the node's attributes
            if hasattr(value, "extend"):
                getattr(fresh, descriptor.name).extend(value)
            elif descriptor.message_type is not None:
                getattr(fresh, descriptor.name).CopyFrom(value)
            else:
                setattr(fresh, descriptor.name, value)
        node._op = fresh
        original(node, external_tensor_storage)

    graph.Node.update_proto = update_proto
    try:
        yield
    finally:
        graph.Node.update_proto = original


@contextlib.contextmanager
def _normalisation_as_constants(model) -> Iterator[None]:
    """Keras' Normalization layer (EfficientNet's built-in one, the identity in our members) keeps
    its mean and variance as eager tensors, which a traced function captures as inputs; tf2onnx
    freezes variables only, so they would become extra ONNX graph inputs. As numpy arrays they are
    traced in as constants (same values); the tensors are put back afterwards."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    saved = [(layer.mean, layer.variance) for layer in layers]
    try:
        for layer in layers:
            if layer.mean is not None:
                layer.mean, layer.variance = np.asarray(layer.mean), np.asarray(layer.variance)
        yield
    finally:
        for layer, (mean, variance) in zip(layers, saved, strict=True):
            layer.mean, layer.variance = mean, variance


def _name_onnx_io(proto) -> None:
    """Give the graph output the contract's name (tf2onnx calls it ``Identity:0``) and the batch
    dimension the name ``batch`` (tf2onnx's ``unk__N`` says nothing)."""
    graph = proto.graph
    if [value.name for value in graph.input] != [INPUT_NAME] or len(graph.output) != 1:
        raise RuntimeError(
            f"ONNX export: expected one input {INPUT_NAME!r} and one output, got inputs "
            f"{[v.name for v in graph.input]} and {len(graph.output)} outputs"
        )
    old = graph.output[0].name
    if old != OUTPUT_NAME:
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
            node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
        graph.output[0].name = OUTPUT_NAME
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"


def to_tflite(model, destination: Path) -> Path:
    """Keras member -> TFLite flatbuffer (Keras' LiteRT exporter, variable batch), atomically."""
    destination = Path(destination)
    with atomic_path(destination) as tmp:
        model.export(str(tmp), format="litert", input_signature=model_spec(model), verbose=False)
    return destination


def to_saved_model(model, destination: Path) -> Path:
    """Keras member -> TensorFlow SavedModel folder (endpoint ``serve``), written beside and renamed into place."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent))
    try:
        model.export(str(scratch), format="tf_saved_model", input_signature=model_spec(model), verbose=False)
        replace_folder(scratch, destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return destination


def replace_folder(source: Path, destination: Path) -> None:
    """Put a finished folder in place: a rename, after moving any old one aside (os.replace cannot
    overwrite a non-empty folder)."""
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
    os.replace(source, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def to_openvino(model, destination: Path) -> Path:
    """Keras member -> OpenVINO IR (``destination`` .xml + .bin beside it, weights fp32), converted
    from the traced TensorFlow function by ``openvino.convert_model``: no ONNX step (Inception-ResNet-V2
    at 331 px: 12 s and ~2.8 GB, against 99 s and 8.5+ GB through tf2onnx)."""
    ov = require("openvino", "openvino", "engine 'openvino'", ALTERNATIVE["openvino"])
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    function, _ = forward_function(model)
    with _normalisation_as_constants(model):
        converted = ov.convert_model(function.get_concrete_function(), share_weights=False)
    del function
    write_ir(ov, converted, destination)
    return destination


def write_ir(ov, model, destination: Path) -> None:
    """Save an OpenVINO model as ``destination`` (.xml) + .bin, each renamed into place."""
    with tempfile.TemporaryDirectory(prefix=".ir-", dir=destination.parent) as scratch:
        xml = Path(scratch) / destination.name
        # compress_to_fp16 defaults to True, which would round the weights: fp32 parity needs fp32.
        ov.save_model(model, str(xml), compress_to_fp16=False)
        # The .bin first: an .xml in place always has its weights beside it.
        os.replace(xml.with_suffix(".bin"), destination.with_suffix(".bin"))
        os.replace(xml, destination)


# format -> (suffix of the exported file, name of its converter in this module): export.py's formats
CONVERTERS: dict[str, tuple[str, str]] = {
    "onnx": (".onnx", "to_onnx"),
    "tflite": (".tflite", "to_tflite"),
    "saved_model": ("", "to_saved_model"),
}
# ... plus the OpenVINO IR the openvino engine runs.
EXPORT_FORMATS = {**CONVERTERS, "openvino": (".xml", "to_openvino")}


def convert(model, fmt: str, destination: Path) -> Path:
    """Export a Keras member in ``fmt`` (onnx, tflite, saved_model, or openvino for the engine). The
    converter is looked up by name at call time, so a test can spy on it."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(CONVERTERS)}")
    return globals()[EXPORT_FORMATS[fmt][1]](model, destination)


__all__ = [
    "CONVERTERS",
    "EXPORT_FORMATS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "convert",
    "head_scores",
    "model_spec",
    "require",
    "to_onnx",
    "to_openvino",
    "to_saved_model",
    "to_tflite",
]
