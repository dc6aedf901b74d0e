"""Opening a model on an engine: one ensemble member (:func:`open_member`) or the lung U-Net
(:func:`open_model`) on Keras, ONNX Runtime or OpenVINO, at the precision of a resolved
:class:`~deepcovidxr.runtime.precision.Policy`, with its export built on first use and cached
(:mod:`deepcovidxr.runtime.cache`); :func:`export_missing` fills a cold cache up front.

Nothing falls back silently: a missing runtime or a precision the engine or this CPU cannot run
is a :class:`UsageError` naming what to install or use instead (:func:`check_engine`), before
anything is loaded or exported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.runtime import exports, precision
from deepcovidxr.runtime.cache import CacheEntry, cache_folder
from deepcovidxr.runtime.convert import ALTERNATIVE, require
from deepcovidxr.runtime.digest import file_sha256
from deepcovidxr.runtime.int8 import NEEDS_CALIBRATION, Calibration, member_calibration, onnx_int8, openvino_int8
from deepcovidxr.runtime.precision import Policy
from deepcovidxr.runtime.runners import (
    KerasRunner,
    OnnxRuntimeRunner,
    OpenVinoRunner,
    Runner,
    check_bf16,
    openvino_core,
)

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("keras", "onnxruntime", "openvino")
# pip name and import name of each engine's runtime; the pinned versions are in requirements.txt.
_RUNTIME = {"onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}


def check_engine(engine: str, policy: Policy | str, calibration: object | None = None) -> Policy:
    """Refuse an engine/precision pair this install or this CPU cannot run, before anything is
    loaded or exported: unknown names, Keras at reduced precision, ONNX Runtime bf16, a runtime that
    is not importable, bf16 on a CPU without it, int8 without calibration images. Each error names
    the alternative; nothing falls back silently. ``policy``: a resolved Policy (the members', or
    the U-Net's) or a ``--precision`` value, resolved here for the members; returned resolved."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not isinstance(policy, Policy):
        policy = precision.for_engine(policy, engine)
    wanted = policy.engine_precision
    if engine == "keras":
        if wanted != "fp32":
            better = "openvino" if wanted == "bf16" else "onnxruntime or openvino (with calibration images)"
            raise UsageError(f"engine keras runs fp32 only here; for {wanted} use engine {better}")
        return policy
    if engine == "onnxruntime" and wanted == "bf16":
        raise UsageError(
            "ONNX Runtime's CPU provider has no bf16 convolution kernels; for bf16 use engine openvino "
            "(its CPU plugin runs bf16 on avx512_bf16/AMX CPUs)"
        )
    # Fail on a missing runtime before spending a minute on an export it could not run.
    pip_name, module = _RUNTIME[engine]
    require(module, pip_name, f"engine {engine!r}", ALTERNATIVE[engine])
    if engine == "openvino" and wanted == "bf16":
        check_bf16(openvino_core())
    if wanted == "int8" and calibration is None:
        raise UsageError(NEEDS_CALIBRATION)
    return policy


def _blob_cache(folder: Path) -> Path:
    blobs = folder / "openvino_compiled"
    blobs.mkdir(exist_ok=True)
    return blobs


def open_member(
    member: Member,
    member_path: Path,
    engine: str = "keras",
    policy: Policy | str = "fp32",
    cache_dir: Path | None = None,
    calibration: np.ndarray | Calibration | None = None,
    threads: int | None = None,
) -> Runner:
    """A :class:`Runner` for ``member`` (weights in ``member_path``) on ``engine`` at ``policy``
    (a resolved Policy, or a ``--precision`` value resolved here).

    ``calibration``: preprocessed float32 (n, s, s, 3) images for int8 (or a lazy
    :class:`Calibration`), never the images being predicted (quantisation ranges fitted on the
    test images would leak them into the scores).
    ``cache_dir``: where exports are cached (default ``<member folder>/.engine_cache``).
    ``threads``: intra-op threads for ONNX Runtime / OpenVINO (default: the runtime's choice).
    ``runner.stats`` says what was built on this call (``built``, ``build_seconds``) and how long
    opening took (``open_seconds``).
    """
    policy = check_engine(engine, policy, calibration)
    member_path = Path(member_path)
    if not member_path.is_file():
        raise MissingInputError(f"member weights not found: {member_path}")
    started = time.perf_counter()
    if engine == "keras":
        runner: Runner = KerasRunner(member, exports.load_keras(member, member_path))
    else:
        if policy.engine_precision == "int8":
            calibration = member_calibration(member, calibration)
        folder = cache_folder(member_path, cache_dir)
        source = exports.member_source(member, member_path)
        runner = _open(source, folder, policy, calibration, threads, member)
    runner.stats["open_seconds"] = time.perf_counter() - started
    return runner


def _entry(source: exports.Source, folder: Path, policy: Policy, calibration, member, stats: dict) -> CacheEntry:
    """The cache entry ``policy`` runs on its engine, built if missing (unless ``stats["probe"]``).
    The artifact is the policy's ``cache_key``: fp32 and bf16 share the fp32 export (bf16 is a
    compile hint), int8 has its own."""
    int8 = policy.cache_key == "int8"
    if policy.engine == "onnxruntime":
        if int8:
            return onnx_int8(member, source, folder, calibration, stats)
        return exports.onnx_fp32(source, folder, stats)
    if int8:
        return openvino_int8(member, source, folder, calibration, stats)
    return exports.openvino_ir(source, folder, stats)


def _open(source: exports.Source, folder: Path, policy: Policy, calibration, threads, member, name=None) -> Runner:
    stats: dict = {}
    entry = _entry(source, folder, policy, calibration, member, stats)
    name = name or (member.short_name if member is not None else source.path.name)
    if policy.engine == "onnxruntime":
        return OnnxRuntimeRunner(member, entry.path, policy, stats, threads, name)
    return OpenVinoRunner(member, entry.path, policy, stats, threads, name, _blob_cache(folder))


def export_missing(
    members: list[tuple[Member, Path]],
    engine: str,
    policy: Policy | str,
    cache_dir: Path | None = None,
    calibration: np.ndarray | Calibration | None = None,
) -> list[str]:
    """Build every export ``engine`` at ``policy`` needs for ``members`` that is not cached yet,
    two worker processes at a time within :data:`~deepcovidxr.runtime.exports.EXPORT_MEMORY_BUDGET`
    (int8: one after another, in this process), with a progress bar (a user's first run on a cold
    cache spends minutes here), before any member is opened; returns the names of the members
    exported. Keras needs no export. Call it where a stage knows its members, before scoring."""
    if engine == "keras":
        return []
    policy = check_engine(engine, policy, calibration)
    int8 = policy.engine_precision == "int8"
    missing = []
    for member, path in members:
        images = member_calibration(member, calibration) if int8 else calibration  # as open_member keys it
        probe = {"probe": True}
        source = exports.member_source(member, path)
        _entry(source, cache_folder(path, cache_dir), policy, images, member, probe)
        if probe.get("missing"):
            missing.append((member, path, source, images))
    if not missing:
        return []
    from tqdm import tqdm

    log.info("one-time export of %d of %d members to %s (cached for later runs)", len(missing), len(members), engine)
    parallel = not int8 and all(source.isolated for _, _, source, _ in missing)
    with tqdm(total=len(missing), desc=f"one-time {engine} export", unit="member") as bar:

        def build(item: tuple) -> None:
            member, path, source, images = item
            _entry(source, cache_folder(path, cache_dir), policy, images, member, {})
            with lock:
                bar.update()
                bar.set_postfix_str(f"{member.short_name} done, {len(missing) - bar.n} left")

        lock = threading.Lock()
        bar.set_postfix_str(f"{len(missing)} left")
        if parallel:
            # The caller's own memory counts: the demo, holding its trained members, exports one
            # at a time; predict.py, which has not imported TensorFlow, two.
            budget = exports.EXPORT_MEMORY_BUDGET - exports.resident_bytes()
            exports.within_budget([(item, exports.export_memory_estimate(item[1])) for item in missing], build, budget)
        else:  # int8 quantises in this process, one member at a time
            for item in missing:
                build(item)
    return [member.short_name for member, *_ in missing]


def open_model(
    path: Path,
    load: Callable[[], Any],
    engine: str,
    policy: Policy | str,
    cache_dir: Path,
    extra_key: dict | None = None,
    threads: int | None = None,
    name: str | None = None,
) -> Runner:
    """Another Keras model file than a member (the lung U-Net) on ``engine`` at the U-Net's
    precision of ``policy`` (fp32 or bf16), exported and cached like a member (key: the file's
    sha256 plus ``extra_key``, e.g. its sidecar's digest). ``load()`` builds the Keras model (only
    when the engine is keras or the cache misses). The runner returns the model's raw output."""
    policy = check_engine(engine, precision.for_unet(policy, engine))
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"model weights not found: {path}")
    started = time.perf_counter()
    name = name or path.name
    if engine == "keras":
        runner: Runner = KerasRunner(None, load(), name)
    else:
        stem = path.name.split(".")[0]
        source = exports.Source(stem, path, file_sha256(path), load, dict(extra_key or {}))
        runner = _open(source, cache_folder(path, cache_dir), policy, None, threads, None, name)
    runner.stats["open_seconds"] = time.perf_counter() - started
    return runner


__all__ = ["ENGINES", "check_engine", "export_missing", "open_member", "open_model"]
