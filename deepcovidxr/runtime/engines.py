"""Inference engines for one ensemble member: Keras itself, ONNX Runtime or OpenVINO, at fp32, bf16
or int8, behind one interface (:func:`open_member` -> :class:`Runner`).

A Runner takes what a Keras member takes, float32 NHWC batches already preprocessed
(:func:`deepcovidxr.imaging.preprocess.to_model_input`: gray -> RGB, /255, ImageNet mean/std), of any
batch size (the exported graphs keep a variable batch dimension, so a short last batch is not
padded), and returns one sigmoid score per image.

Exports are built on first use and cached (default: ``<members>/.engine_cache`` when that folder
can be written, else a folder under ``$XDG_CACHE_HOME/deepcovidxr``; :func:`default_cache_folder`) as
``<stem>.<kind>.<precision>.<key digest>.<ext>`` plus a JSON manifest written last. The key holds
the member file's sha256, the engine, the precision, the calibration images' digest (int8) and the
versions of every package that shaped the artifact; the manifest also records each artifact's size
and sha256. An entry is used only when its manifest exists, its key equals the wanted key and its
artifacts hash as recorded, so an interrupted export, a truncated file, a retrained member or an
upgraded converter all lead to a rebuild, never to a stale or partial model being run.

Conversion paths (chosen because they work offline with the pinned TensorFlow/Keras/numpy, and
because each keeps the largest member, Inception-ResNet-V2 at 331 px, below 4 GB; see
benchmarks/bench_export_memory.py): Keras -> ONNX through tf2onnx's large-model mode with Keras'
numpy-2 patch (:func:`to_onnx`); Keras -> OpenVINO IR straight from the traced TensorFlow function
with ``openvino.convert_model`` (weights kept fp32; no ONNX step); int8 through ONNX Runtime static
quantization (QDQ) or, for OpenVINO, NNCF post-training quantization when ``nncf`` is installed.
A member's conversion runs in a fresh process (:data:`ISOLATE_EXPORTS`,
:mod:`deepcovidxr.runtime.export_worker`) so its memory is returned when it ends; :func:`export_missing`
runs up to two at a time within a memory budget, each under a per-entry file lock that several
processes sharing a cache respect.
Nothing falls back silently: a missing runtime or an unsupported precision is a
:class:`UsageError` naming what to install or use instead.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

from deepcovidxr import __version__
from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.runtime import hardware

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("keras", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
CACHE_FOLDER = ".engine_cache"
INPUT_NAME = "input"
OUTPUT_NAME = "score"
MANIFEST_SUFFIX = ".manifest.json"
# Bump when the way artifacts are built changes, so old cache entries stop matching.
# 2: ONNX through tf2onnx's large-model mode; OpenVINO IR straight from TensorFlow (no ONNX step).
CACHE_FORMAT = 2

# pip name and import name of what each step needs; the pinned versions are in requirements.txt.
_CONVERTER_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx")
_RUNTIME = {"onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}
_ALTERNATIVE = {"onnxruntime": "openvino (or keras)", "openvino": "onnxruntime (or keras)"}


class Runner(Protocol):
    """One member on one engine: float32 NHWC preprocessed batch (n, s, s, 3) -> scores: (n,) for
    a one-unit (sigmoid) head, (n, K) for a K-unit (softmax) head (:mod:`deepcovidxr.contract.classes`)."""

    member: Member
    engine: str
    precision: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------- helpers


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, remembered for its path, size and modification time: a stage asks for
    each member's digest twice (the cold-cache check, then opening), and 24 members are 1.6 GB."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with Path(path).open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def tree_sha256(folder: Path) -> str:
    """One digest over a folder (a SavedModel): relative paths and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Digest of an array's dtype, shape and values (the calibration images of an int8 export)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    return {"deepcovidxr": __version__, **{name: package_version(name) for name in names}}


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


def _input_spec(size: int, channels: int = 3):
    import tensorflow as tf

    # Batch left as None: every engine then accepts any batch size, and a short last batch is not padded.
    return [tf.TensorSpec((None, size, size, channels), tf.float32, name=INPUT_NAME)]


def _model_size(model) -> int:
    return int(model.input_shape[1])


def _model_spec(model):
    """The model's own input shape with a free batch dimension (members: (s, s, 3); the U-Net: (256, 256, 1))."""
    return _input_spec(_model_size(model), int(model.input_shape[-1]))


def head_scores(output: np.ndarray) -> np.ndarray:
    """A head's output (n, units) -> (n,) for one unit (sigmoid), (n, K) for K units (softmax)."""
    output = np.asarray(output, np.float32)
    return output[:, 0] if output.ndim == 2 and output.shape[1] == 1 else output


# ------------------------------------------------------------------------------------- converters


def _forward_function(model):
    """The member's inference pass as one traced function with a free batch dimension."""
    import tensorflow as tf

    spec = _model_spec(model)
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
    function, spec = _forward_function(model)
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
        model.export(str(tmp), format="litert", input_signature=_model_spec(model), verbose=False)
    return destination


def to_saved_model(model, destination: Path) -> Path:
    """Keras member -> TensorFlow SavedModel folder (endpoint ``serve``), written beside and renamed into place."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent))
    try:
        model.export(str(scratch), format="tf_saved_model", input_signature=_model_spec(model), verbose=False)
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
    ov = require("openvino", "openvino", "engine 'openvino'", _ALTERNATIVE["openvino"])
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    function, _ = _forward_function(model)
    with _normalisation_as_constants(model):
        converted = ov.convert_model(function.get_concrete_function(), share_weights=False)
    del function
    _write_ir(ov, converted, destination)
    return destination


def _write_ir(ov, model, destination: Path) -> None:
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


# Exports of member files run in a fresh Python process each (``python -m deepcovidxr.runtime.export_worker``):
# a converter's peak and whatever TensorFlow keeps afterwards go back to the OS when it exits, so
# opening 24 members on a cold cache costs one export's memory, not their sum, and a process that
# runs ONNX Runtime or OpenVINO never imports TensorFlow. False: convert in this process (tests that
# spy on the converters).
ISOLATE_EXPORTS = True
WORKER_MODULE = "deepcovidxr.runtime.export_worker"


def run_export_worker(request: dict) -> dict:
    """Run one export request in a fresh process (:mod:`deepcovidxr.runtime.export_worker`) and return
    its result (the last stdout line, JSON). The package is found where this one was imported from."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    completed = subprocess.run(
        [sys.executable, "-m", WORKER_MODULE, json.dumps(request)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        if completed.returncode == 2:  # the worker's UsageError: one line a user can act on
            raise UsageError(tail.splitlines()[-1] if tail else f"export of {request.get('path')} refused")
        raise RuntimeError(
            f"export of {request.get('path')} to {request.get('format')} failed (exit {completed.returncode}):\n{tail}"
        )
    log.debug("export worker stderr:\n%s", completed.stderr)
    return json.loads(lines[-1])


def member_request(member: Member, member_path: Path, fmt: str, destination: Path, parity: bool = False) -> dict:
    """What :mod:`deepcovidxr.runtime.export_worker` needs to export one member file."""
    return {
        "format": fmt,
        "path": str(member_path),
        "member": [member.backbone, member.size, member.crop.value],
        "destination": str(destination),
        "parity": parity,
    }


# ------------------------------------------------------------------------------------------ cache


@dataclass(frozen=True)
class CacheEntry:
    """One cached artifact set: ``files`` (suffix -> path) plus the manifest that vouches for them."""

    folder: Path
    stem: str
    kind: str
    precision: str
    key: dict = field(hash=False)
    suffixes: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def prefix(self) -> str:
        return f"{self.stem}.{self.kind}.{self.precision}."

    @property
    def base(self) -> str:
        return f"{self.prefix}{self.digest}"

    @property
    def files(self) -> dict[str, Path]:
        return {suffix: self.folder / f"{self.base}{suffix}" for suffix in self.suffixes}

    @property
    def path(self) -> Path:
        return self.files[self.suffixes[0]]

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.base}{MANIFEST_SUFFIX}"

    def valid(self) -> bool:
        """The manifest exists, holds this key, and every artifact has its recorded size and sha256."""
        try:
            recorded = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if recorded.get("key") != self.key:
            log.warning("%s: cache key differs from the wanted one; rebuilding", self.manifest)
            return False
        artifacts = recorded.get("artifacts", {})
        for suffix, path in self.files.items():
            expected = artifacts.get(suffix)
            if not expected or not path.is_file() or path.stat().st_size != expected.get("bytes"):
                log.warning("%s: missing or truncated; rebuilding", path)
                return False
            if file_sha256(path) != expected.get("sha256"):
                log.warning("%s: contents differ from its manifest; rebuilding", path)
                return False
        return True

    def commit(self, seconds: float, info: dict | None = None) -> None:
        """Record the finished artifacts (written LAST: without it the entry does not exist) and
        remove older entries for the same member, kind and precision."""
        artifacts = {
            suffix: {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for suffix, path in self.files.items()
        }
        write_json(
            self.manifest,
            {"key": self.key, "artifacts": artifacts, "build_seconds": round(seconds, 3), **(info or {})},
        )
        for stale in self.folder.glob(f"{self.prefix}*"):
            if not stale.name.startswith(self.base) and stale.is_file():
                stale.unlink(missing_ok=True)


def user_cache_dir() -> Path:
    """The user's cache folder: ``$DEEPCOVIDXR_CACHE``, else ``$XDG_CACHE_HOME/deepcovidxr``
    (``~/.cache/deepcovidxr``)."""
    if os.environ.get("DEEPCOVIDXR_CACHE"):
        return Path(os.environ["DEEPCOVIDXR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepcovidxr"


def _writable(folder: Path) -> bool:
    """Whether this process can create files in ``folder`` (made if missing). Tried, not asked:
    ``os.access`` answers yes to root on a read-only mount's mode bits and says nothing of quotas."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


_ANNOUNCED: set[Path] = set()


def default_cache_folder(members_folder: Path) -> Path:
    """Where exports of the models in ``members_folder`` are cached when no folder is given:
    ``<members>/.engine_cache`` when that can be written, else (a read-only folder on a shared
    server) a folder of its own under :func:`user_cache_dir`, keyed by the members folder's path.
    Logged once per folder."""
    members_folder = Path(members_folder).resolve()
    folder = members_folder / CACHE_FOLDER
    reason = "beside the members"
    if not _writable(folder):
        digest = hashlib.sha256(str(members_folder).encode()).hexdigest()[:16]
        folder = user_cache_dir() / "engine_cache" / f"{members_folder.name}-{digest}"
        reason = f"{members_folder} is not writable"
    if folder not in _ANNOUNCED:
        _ANNOUNCED.add(folder)
        log.info("engine cache: %s (%s)", folder, reason)
    return folder


def _cache_folder(member_path: Path, cache_dir: Path | None) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_folder(Path(member_path).parent)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the engine cache {folder} ({error}); pass another cache_dir") from error
    if not os.access(folder, os.W_OK):
        raise UsageError(f"the engine cache {folder} is not writable; pass another cache_dir")
    return folder


# One in-process conversion at a time (re-entrant: an int8 build opens its fp32 entry): two
# converters in one process would add up their peak memory. Exports in worker processes are
# scheduled by export_missing instead, within EXPORT_MEMORY_BUDGET.
_BUILD_LOCK = threading.RLock()


@contextlib.contextmanager
def _entry_lock(entry: CacheEntry) -> Iterator[None]:
    """An exclusive lock on one member/kind/precision of a cache folder, across processes
    (``flock`` on a hidden lock file, released by the kernel if the process dies). Its name does not
    start with the entry prefix, so a commit's clean-up of stale entries never removes it."""
    path = entry.folder / f".{entry.prefix}lock"
    with path.open("a+b") as handle:
        if fcntl is None:  # no flock (Windows): one process per cache folder
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is exporting it; waiting", entry.path.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(entry: CacheEntry, build: Callable[[CacheEntry], dict | None], stats: dict) -> CacheEntry:
    """Use ``entry`` if it is valid, else build it (``build`` writes ``entry.files``) and commit it.

    The build holds the entry's lock and checks again once it has it: of several processes (say
    ``predict.py --shard k/N`` jobs) wanting one export, one builds and the others then use its
    entry, and none removes files another is writing. ``stats["probe"]``: only say whether a build
    is due (``stats["missing"]``), build nothing."""
    if entry.valid():
        log.debug("engine cache hit: %s", entry.path)
        return entry
    if stats.get("probe"):
        stats["missing"] = True
        return entry
    with _entry_lock(entry):
        if entry.valid():  # built by another process while this one waited
            log.info("%s: built by another process; using it", entry.path.name)
            return entry
        for path in [*entry.files.values(), entry.manifest]:
            path.unlink(missing_ok=True)  # a partial or mismatched entry is never half-reused
        log.info("one-time export: %s (cached in %s for later runs)", entry.path.name, entry.folder)
        start = time.perf_counter()
        info = build(entry)
        seconds = time.perf_counter() - start
        entry.commit(seconds, info)
    stats["built"] = [*stats.get("built", []), entry.path.name]
    stats["build_seconds"] = stats.get("build_seconds", 0.0) + seconds
    log.info("built %s in %.1f s", entry.path.name, seconds)
    return entry


# --------------------------------------------------------------------------------------- runners


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
            lambda x: model(x, training=False), input_signature=_model_spec(model), autograph=False
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = self._batch(batch)
        if not len(batch):
            return self._empty()
        return self._finish(self._forward(batch))


class OnnxRuntimeRunner(_Checked):
    def __init__(
        self, member: Member | None, path: Path, precision: str, stats: dict, threads: int | None, name: str = "model"
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "engine 'onnxruntime'", _ALTERNATIVE["onnxruntime"])
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
            member, _member_name(member, name), "onnxruntime", precision, stats, inputs.shape[1:], outputs.shape[1:]
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
            ov = ov or require("openvino", "openvino", "engine 'openvino'", _ALTERNATIVE["openvino"])
            _CORE = ov.Core()
        return _CORE


class OpenVinoRunner(_Checked):
    def __init__(
        self,
        member: Member | None,
        path: Path,
        precision: str,
        stats: dict,
        threads: int | None,
        name: str = "model",
        blob_cache: Path | None = None,
    ) -> None:
        ov = require("openvino", "openvino", "engine 'openvino'", _ALTERNATIVE["openvino"])
        self.path = path
        core = openvino_core(ov)
        config: dict[str, Any] = {}
        if precision == "bf16":
            _check_bf16(core)
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
        self._setup(member, _member_name(member, name), "openvino", precision, stats, dims[0][1:], dims[1][1:])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = self._batch(batch)
        if not len(batch):
            return self._empty()
        self.request.infer({0: batch})
        # Copied: the request's output buffer is reused by the next infer().
        return self._finish(np.array(self.request.get_output_tensor(0).data, np.float32))


def cpu_supports_bf16(core=None) -> bool:
    """bf16 kernels need avx512_bf16 or AMX; OpenVINO's CPU plugin says so in its capabilities."""
    if core is not None:
        try:
            return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except RuntimeError:
            pass
    return hardware.cpu_supports_bf16()


def _check_bf16(core) -> None:
    if not cpu_supports_bf16(core):
        raise UsageError(
            "bf16 inference needs a CPU with avx512_bf16 or AMX (not found on this one); use precision fp32, "
            "or int8 with calibration images"
        )


# --------------------------------------------------------------------------------------- building


def _load_keras(member: Member, member_path: Path):
    from deepcovidxr.networks.members import load_member

    return load_member(member_path, member)


_DEFAULT_LOADER = _load_keras


@dataclass(frozen=True)
class _Source:
    """What an export is made from: a Keras model file, its digest and how to load it. ``member``:
    the ensemble member the file holds (its exports run in a worker process, which loads it by
    itself), None for another model (the lung U-Net: ``load`` here)."""

    stem: str
    path: Path
    sha256: str
    load: Callable[[], Any] = field(compare=False)
    extra: dict = field(default_factory=dict, compare=False)
    member: Member | None = field(default=None, compare=False)

    def export(self, fmt: str, destination: Path) -> None:
        """Write ``destination`` in ``fmt``: a member in a fresh process (:data:`ISOLATE_EXPORTS`),
        anything else here."""
        # A worker loads the file with models.load_member; a loader replaced in this process (a
        # test's stand-in model) exists only here, so its exports are made here.
        if self.isolated:
            run_export_worker(member_request(self.member, self.path, fmt, destination))
        else:
            with _BUILD_LOCK:  # two converters in one process would add up their peaks
                convert(self.load(), fmt, destination)

    @property
    def isolated(self) -> bool:
        return ISOLATE_EXPORTS and self.member is not None and _load_keras is _DEFAULT_LOADER


class Calibration:
    """int8 calibration images given lazily: ``digest`` (part of the cache key) is cheap, and the
    preprocessed images of a member (``images(member)``, float32 (n, s, s, 3)) are made only when
    a quantised model has to be built, so a warm cache never prepares them.

    ``make(member)`` returns the images for one member; ``digest`` must change whenever they would
    (e.g. a digest of the calibration files and of the preprocessing that turns them into views)."""

    def __init__(self, digest: str, count: int, make: Callable[[Member], np.ndarray]) -> None:
        self.digest, self.count, self._make = digest, count, make

    def images(self, member: Member) -> np.ndarray:
        return _check_calibration(member, self._make(member))


def _calibration_key(calibration: np.ndarray | Calibration) -> dict:
    if isinstance(calibration, Calibration):
        return {"calibration_sha256": calibration.digest, "calibration_images": calibration.count}
    return {"calibration_sha256": array_sha256(calibration), "calibration_images": len(calibration)}


def _calibration_images(member: Member, calibration: np.ndarray | Calibration) -> np.ndarray:
    return calibration.images(member) if isinstance(calibration, Calibration) else calibration


def _base_key(source: _Source, kind: str, precision: str, packages: tuple[str, ...]) -> dict:
    return {
        "format": CACHE_FORMAT,
        "member_file": Path(source.path).name,
        "member_sha256": source.sha256,
        "kind": kind,
        "precision": precision,
        "versions": _versions(packages),
        **source.extra,
    }


def _onnx_fp32(source: _Source, folder: Path, stats: dict) -> CacheEntry:
    entry = CacheEntry(
        folder, source.stem, "onnx", "fp32", _base_key(source, "onnx", "fp32", _CONVERTER_PACKAGES), (".onnx",)
    )

    def build(entry: CacheEntry) -> dict:
        require("tensorflow", "tensorflow", "ONNX export")
        source.export("onnx", entry.path)
        return {"converter": "tf2onnx.convert.from_function (large-model mode, fresh node protos)"}

    return _cached(entry, build, stats)


def _calibration_batches(calibration: np.ndarray, batch: int = 8):
    for start in range(0, len(calibration), batch):
        yield calibration[start : start + batch]


def _onnx_int8(
    member: Member, source: _Source, folder: Path, calibration: np.ndarray | Calibration, stats: dict
) -> CacheEntry:
    key = _base_key(source, "onnxruntime", "int8", (*_CONVERTER_PACKAGES, "onnxruntime"))
    key.update(_calibration_key(calibration))
    entry = CacheEntry(folder, source.stem, "onnxruntime", "int8", key, (".onnx",))

    def build(entry: CacheEntry) -> dict:
        require("onnxruntime", "onnxruntime", "int8 quantisation", "engine openvino with nncf")
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )

        fp32 = _onnx_fp32(source, folder, stats)  # needed only to build: a valid int8 entry is used alone
        images = _calibration_images(member, calibration)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = _calibration_batches(images)

            def get_next(self) -> dict | None:
                batch = next(self.batches, None)
                return None if batch is None else {INPUT_NAME: batch}

        with tempfile.TemporaryDirectory(prefix=".int8-", dir=folder) as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            # Shape inference + graph optimisation first, as ONNX Runtime's quantisation guide asks.
            quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
            with atomic_path(entry.path) as tmp:
                quantize_static(
                    str(prepared),
                    str(tmp),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                )
        return {"quantizer": "onnxruntime.quantization.quantize_static (QDQ, per-channel, s8s8, MinMax)"}

    return _cached(entry, build, stats)


def _openvino_ir(source: _Source, folder: Path, stats: dict) -> CacheEntry:
    key = _base_key(source, "openvino", "fp32", ("tensorflow", "keras", "openvino"))
    entry = CacheEntry(folder, source.stem, "openvino", "fp32", key, (".xml", ".bin"))

    def build(entry: CacheEntry) -> dict:
        require("tensorflow", "tensorflow", "OpenVINO export")
        source.export("openvino", entry.files[".xml"])
        return {"converter": "openvino.convert_model(traced tf.function), weights kept fp32"}

    return _cached(entry, build, stats)


def _openvino_int8(
    member: Member, source: _Source, folder: Path, calibration: np.ndarray | Calibration, stats: dict
) -> CacheEntry:
    try:
        import nncf  # noqa: F401
    except ImportError:
        # Without NNCF, OpenVINO runs ONNX Runtime's statically quantised ONNX (QDQ is read natively).
        log.info("nncf not installed: OpenVINO int8 runs ONNX Runtime's quantised ONNX model")
        return _onnx_int8(member, source, folder, calibration, stats)
    key = _base_key(source, "openvino", "int8", ("tensorflow", "keras", "openvino", "nncf"))
    key.update(_calibration_key(calibration))
    entry = CacheEntry(folder, source.stem, "openvino", "int8", key, (".xml", ".bin"))

    def build(entry: CacheEntry) -> dict:
        import nncf
        import openvino as ov

        ir = _openvino_ir(source, folder, stats)
        images = _calibration_images(member, calibration)
        # One image per calibration item: NNCF's subset_size counts items.
        dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
        quantized = nncf.quantize(ov.Core().read_model(str(ir.path)), dataset, subset_size=len(images))
        _write_ir(ov, quantized, entry.files[".xml"])
        return {"quantizer": "nncf.quantize (default preset, fast bias correction)"}

    return _cached(entry, build, stats)


def _stem(member: Member) -> str:
    return Path(member.legacy_filename).stem


def _check_calibration(member: Member, calibration: np.ndarray | None) -> np.ndarray:
    if calibration is None:
        raise UsageError(
            "int8 needs calibration images: a few dozen preprocessed images from data that is not being "
            "predicted (e.g. the Validation split), as float32 (n, size, size, 3)"
        )
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    size = member.size
    if calibration.ndim != 4 or calibration.shape[1:] != (size, size, 3) or not len(calibration):
        raise UsageError(
            f"{member.short_name}: calibration images must be float32 (n, {size}, {size}, 3) with n >= 1, "
            f"got {calibration.shape}"
        )
    return calibration


def check_engine(engine: str, precision: str, calibration: object | None = None) -> None:
    """Refuse an engine/precision pair this install or this CPU cannot run, before anything is
    loaded or exported: unknown names, Keras at reduced precision, ONNX Runtime bf16, a runtime that
    is not importable, bf16 on a CPU without it, int8 without calibration images. Each error names
    the alternative; nothing falls back silently."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if engine == "keras":
        if precision != "fp32":
            better = "openvino" if precision == "bf16" else "onnxruntime or openvino (with calibration images)"
            raise UsageError(f"engine keras runs fp32 only here; for {precision} use engine {better}")
        return
    if engine == "onnxruntime" and precision == "bf16":
        raise UsageError(
            "ONNX Runtime's CPU provider has no bf16 convolution kernels; for bf16 use engine openvino "
            "(its CPU plugin runs bf16 on avx512_bf16/AMX CPUs)"
        )
    # Fail on a missing runtime before spending a minute on an export it could not run.
    pip_name, module = _RUNTIME[engine]
    require(module, pip_name, f"engine {engine!r}", _ALTERNATIVE[engine])
    if engine == "openvino" and precision == "bf16":
        _check_bf16(openvino_core())
    if precision == "int8" and calibration is None:
        raise UsageError(
            "int8 needs calibration images: a few dozen preprocessed images from data that is not being "
            "predicted (e.g. the Validation split), as float32 (n, size, size, 3)"
        )


def default_precision(engine: str) -> str:
    """What ``auto`` means: bf16 on OpenVINO when the CPU has native bf16 (avx512_bf16/AMX), else
    fp32 (Keras and ONNX Runtime run members in fp32; int8 is never chosen without calibration images)."""
    if engine == "openvino" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def _blob_cache(folder: Path) -> Path:
    blobs = folder / "openvino_compiled"
    blobs.mkdir(exist_ok=True)
    return blobs


def open_member(
    member: Member,
    member_path: Path,
    engine: str = "keras",
    precision: str = "fp32",
    cache_dir: Path | None = None,
    calibration: np.ndarray | Calibration | None = None,
    threads: int | None = None,
) -> Runner:
    """A :class:`Runner` for ``member`` (weights in ``member_path``) on ``engine`` at ``precision``.

    ``calibration``: preprocessed float32 (n, s, s, 3) images for int8 (or a lazy
    :class:`Calibration`), never the images being predicted (quantisation ranges fitted on the
    test images would leak them into the scores).
    ``cache_dir``: where exports are cached (default ``<member folder>/.engine_cache``).
    ``threads``: intra-op threads for ONNX Runtime / OpenVINO (default: the runtime's choice).
    ``runner.stats`` says what was built on this call (``built``, ``build_seconds``) and how long
    opening took (``open_seconds``).
    """
    check_engine(engine, precision, calibration)
    member_path = Path(member_path)
    if not member_path.is_file():
        raise MissingInputError(f"member weights not found: {member_path}")
    started = time.perf_counter()
    if engine == "keras":
        runner = KerasRunner(member, _load_keras(member, member_path))
        runner.stats["open_seconds"] = time.perf_counter() - started
        return runner
    if precision == "int8" and not isinstance(calibration, Calibration):
        calibration = _check_calibration(member, calibration)
    folder = _cache_folder(member_path, cache_dir)
    runner = _open(_member_source(member, member_path), folder, engine, precision, calibration, threads, member)
    runner.stats["open_seconds"] = time.perf_counter() - started
    return runner


def _member_source(member: Member, member_path: Path) -> _Source:
    member_path = Path(member_path)
    return _Source(
        _stem(member),
        member_path,
        file_sha256(member_path),
        lambda: _load_keras(member, member_path),
        member=member,
    )


def _entry(source: _Source, folder: Path, engine: str, precision: str, calibration, member, stats: dict) -> CacheEntry:
    """The cache entry ``engine`` at ``precision`` runs, built if missing (unless ``stats["probe"]``)."""
    if engine == "onnxruntime":
        if precision == "int8":
            return _onnx_int8(member, source, folder, calibration, stats)
        return _onnx_fp32(source, folder, stats)
    if precision == "int8":
        return _openvino_int8(member, source, folder, calibration, stats)
    return _openvino_ir(source, folder, stats)  # fp32 and bf16 share the fp32 IR (bf16: a compile hint)


def _open(
    source: _Source, folder: Path, engine: str, precision: str, calibration, threads, member, name=None
) -> Runner:
    stats: dict = {}
    entry = _entry(source, folder, engine, precision, calibration, member, stats)
    name = name or _member_name(member, source.path.name)
    if engine == "onnxruntime":
        return OnnxRuntimeRunner(member, entry.path, precision, stats, threads, name)
    return OpenVinoRunner(member, entry.path, precision, stats, threads, name, _blob_cache(folder))


def export_missing(
    members: list[tuple[Member, Path]],
    engine: str,
    precision: str,
    cache_dir: Path | None = None,
    calibration: np.ndarray | Calibration | None = None,
) -> list[str]:
    """Build every export ``engine`` at ``precision`` needs for ``members`` that is not cached yet,
    two worker processes at a time within :data:`EXPORT_MEMORY_BUDGET` (int8: one after another,
    in this process), with a progress bar (a user's first run on a cold cache spends minutes
    here), before any member is opened; returns the names of the members exported. Keras needs no
    export. Call it where a stage knows its members, before scoring."""
    if engine == "keras":
        return []
    if precision == "auto":
        precision = default_precision(engine)
    check_engine(engine, precision, calibration)
    missing = []
    for member, path in members:
        images = calibration
        if precision == "int8" and not isinstance(calibration, Calibration):
            images = _check_calibration(member, calibration)  # as open_member keys it
        probe = {"probe": True}
        source = _member_source(member, path)
        _entry(source, _cache_folder(path, cache_dir), engine, precision, images, member, probe)
        if probe.get("missing"):
            missing.append((member, path, source, images))
    if not missing:
        return []
    from tqdm import tqdm

    log.info("one-time export of %d of %d members to %s (cached for later runs)", len(missing), len(members), engine)
    parallel = precision != "int8" and all(source.isolated for _, _, source, _ in missing)
    with tqdm(total=len(missing), desc=f"one-time {engine} export", unit="member") as bar:

        def build(item: tuple) -> None:
            member, path, source, images = item
            _entry(source, _cache_folder(path, cache_dir), engine, precision, images, member, {})
            with lock:
                bar.update()
                bar.set_postfix_str(f"{member.short_name} done, {len(missing) - bar.n} left")

        lock = threading.Lock()
        bar.set_postfix_str(f"{len(missing)} left")
        if parallel:
            # The caller's own memory counts: the demo, holding its trained members, exports one
            # at a time; predict.py, which has not imported TensorFlow, two.
            budget = EXPORT_MEMORY_BUDGET - _resident_bytes()
            _within_budget([(item, export_memory_estimate(item[1])) for item in missing], build, budget)
        else:  # int8 quantises in this process, one member at a time
            for item in missing:
                build(item)
    return [member.short_name for member, *_ in missing]


# Worker exports at once: the two cores of a workstation (conversion is mostly one thread);
# within the memory budget below, so a cold cache's tree of processes stays under ~5 GB.
EXPORT_WORKERS = 2
EXPORT_MEMORY_BUDGET = 5.0e9  # bytes: the workers' estimated peaks plus this process's own memory


def export_memory_estimate(member_path: Path) -> float:
    """A worker's peak resident memory exporting this member file, in bytes: TensorFlow and the
    converter (~1 GB) plus about six copies of the weights. Measured: Inception-ResNet-V2 331 px
    (a 215 MB file) 2.3-2.8 GB (benchmarks/bench_export_memory.py)."""
    return 1.0e9 + 6 * Path(member_path).stat().st_size


def _resident_bytes() -> float:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def _within_budget(jobs: list[tuple[object, float]], run: Callable[[object], None], budget: float) -> None:
    """Run ``run(job)`` for every job on up to :data:`EXPORT_WORKERS` threads (each drives one
    worker process), starting a job only while the estimates of those running plus its own stay
    within ``budget`` bytes (a job alone always starts). Largest first, so the big
    members never end up paired at the tail; the first error is raised once all have stopped."""
    pending = sorted(jobs, key=lambda job: -job[1])
    condition = threading.Condition()
    running: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with condition:
                while True:
                    if not pending or errors:
                        return
                    fits = [j for j in pending if not running or sum(running) + j[1] <= budget]
                    if fits:
                        job = fits[0]
                        pending.remove(job)
                        running.append(job[1])
                        break
                    condition.wait()
            try:
                run(job[0])
            except BaseException as error:  # handed to the caller after the others stop
                errors.append(error)
            finally:
                with condition:
                    running.remove(job[1])
                    condition.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, EXPORT_WORKERS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def open_model(
    path: Path,
    load: Callable[[], Any],
    engine: str,
    precision: str,
    cache_dir: Path,
    extra_key: dict | None = None,
    threads: int | None = None,
    name: str | None = None,
) -> Runner:
    """Another Keras model file than a member (the lung U-Net) on ``engine`` at fp32 or bf16, exported
    and cached like a member (key: the file's sha256 plus ``extra_key``, e.g. its sidecar's digest).
    ``load()`` builds the Keras model (only when the engine is keras or the cache misses). The runner
    returns the model's raw output."""
    if precision == "int8":
        raise UsageError("open_model runs fp32 or bf16 (int8 needs member calibration)")
    check_engine(engine, precision)
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"model weights not found: {path}")
    started = time.perf_counter()
    name = name or path.name
    if engine == "keras":
        runner: Runner = KerasRunner(None, load(), name)
    else:
        stem = path.name.split(".")[0]
        source = _Source(stem, path, file_sha256(path), load, dict(extra_key or {}))
        runner = _open(source, _cache_folder(path, cache_dir), engine, precision, None, threads, None, name)
    runner.stats["open_seconds"] = time.perf_counter() - started
    return runner


__all__ = [
    "CACHE_FOLDER",
    "ENGINES",
    "PRECISIONS",
    "CacheEntry",
    "Calibration",
    "Runner",
    "check_engine",
    "convert",
    "cpu_supports_bf16",
    "default_cache_folder",
    "default_precision",
    "export_missing",
    "file_sha256",
    "head_scores",
    "open_member",
    "open_model",
    "to_onnx",
    "to_openvino",
    "to_saved_model",
    "to_tflite",
    "user_cache_dir",
]
