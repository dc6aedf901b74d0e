"""Building the exports an engine runs: a member's conversion in a worker process of its own, the
fp32 artifacts (ONNX for ONNX Runtime, the OpenVINO IR) as cache entries, and the scheduling of a
cold cache's exports within a memory budget.

A member's conversion runs in a fresh process (:data:`ISOLATE_EXPORTS`,
:mod:`deepcovidxr.runtime.export_worker`) so its memory is returned when it ends; up to
:data:`EXPORT_WORKERS` run at a time within :data:`EXPORT_MEMORY_BUDGET` (:func:`within_budget`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import convert
from deepcovidxr.runtime.cache import BUILD_LOCK, CACHE_FORMAT, CacheEntry, cached
from deepcovidxr.runtime.digest import file_sha256, versions

log = logging.getLogger(__name__)

# pip names of what an ONNX export needs; the pinned versions are in requirements.txt.
CONVERTER_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx")


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


def load_keras(member: Member, member_path: Path):
    from deepcovidxr.networks.members import load_member

    return load_member(member_path, member)


_DEFAULT_LOADER = load_keras


@dataclass(frozen=True)
class Source:
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
            with BUILD_LOCK:  # two converters in one process would add up their peaks
                convert.convert(self.load(), fmt, destination)

    @property
    def isolated(self) -> bool:
        return ISOLATE_EXPORTS and self.member is not None and load_keras is _DEFAULT_LOADER


def member_source(member: Member, member_path: Path) -> Source:
    """A member file as an export source (loaded by :func:`load_keras`, looked up when it loads)."""
    member_path = Path(member_path)
    return Source(
        Path(member.legacy_filename).stem,
        member_path,
        file_sha256(member_path),
        lambda: load_keras(member, member_path),
        member=member,
    )


def base_key(source: Source, kind: str, precision: str, packages: tuple[str, ...]) -> dict:
    return {
        "format": CACHE_FORMAT,
        "member_file": Path(source.path).name,
        "member_sha256": source.sha256,
        "kind": kind,
        "precision": precision,
        "versions": versions(packages),
        **source.extra,
    }


def onnx_fp32(source: Source, folder: Path, stats: dict) -> CacheEntry:
    entry = CacheEntry(
        folder, source.stem, "onnx", "fp32", base_key(source, "onnx", "fp32", CONVERTER_PACKAGES), (".onnx",)
    )

    def build(entry: CacheEntry) -> dict:
        convert.require("tensorflow", "tensorflow", "ONNX export")
        source.export("onnx", entry.path)
        return {"converter": "tf2onnx.convert.from_function (large-model mode, fresh node protos)"}

    return cached(entry, build, stats)


def openvino_ir(source: Source, folder: Path, stats: dict) -> CacheEntry:
    key = base_key(source, "openvino", "fp32", ("tensorflow", "keras", "openvino"))
    entry = CacheEntry(folder, source.stem, "openvino", "fp32", key, (".xml", ".bin"))

    def build(entry: CacheEntry) -> dict:
        convert.require("tensorflow", "tensorflow", "OpenVINO export")
        source.export("openvino", entry.files[".xml"])
        return {"converter": "openvino.convert_model(traced tf.function), weights kept fp32"}

    return cached(entry, build, stats)


# Worker exports at once: the two cores of a workstation (conversion is mostly one thread);
# within the memory budget below, so a cold cache's tree of processes stays under ~5 GB.
EXPORT_WORKERS = 2
EXPORT_MEMORY_BUDGET = 5.0e9  # bytes: the workers' estimated peaks plus this process's own memory


def export_memory_estimate(member_path: Path) -> float:
    """A worker's peak resident memory exporting this member file, in bytes: TensorFlow and the
    converter (~1 GB) plus about six copies of the weights. Measured: Inception-ResNet-V2 331 px
    (a 215 MB file) 2.3-2.8 GB (benchmarks/bench_export_memory.py)."""
    return 1.0e9 + 6 * Path(member_path).stat().st_size


def resident_bytes() -> float:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def within_budget(jobs: list[tuple[object, float]], run: Callable[[object], None], budget: float) -> None:
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


__all__ = [
    "EXPORT_MEMORY_BUDGET",
    "EXPORT_WORKERS",
    "ISOLATE_EXPORTS",
    "WORKER_MODULE",
    "Source",
    "base_key",
    "export_memory_estimate",
    "load_keras",
    "member_request",
    "member_source",
    "onnx_fp32",
    "openvino_ir",
    "resident_bytes",
    "run_export_worker",
    "within_budget",
]
