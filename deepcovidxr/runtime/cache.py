"""The engine cache: exported models kept between runs, each entry trusted only when its manifest
vouches for it.

Exports are cached (default: ``<members>/.engine_cache`` when that folder can be written, else a
folder under ``$XDG_CACHE_HOME/deepcovidxr``; :func:`default_cache_folder`) as
``<stem>.<kind>.<precision>.<key digest>.<ext>`` plus a JSON manifest written last. The key holds
the model file's sha256, the engine, the precision of the artifact, the calibration images' digest
(int8) and the versions of every package that shaped it; the manifest also records each
artifact's size and sha256. An entry is used only when its manifest exists, its key equals the
wanted key and its artifacts hash as recorded, so an interrupted export, a truncated file, a
retrained member or an upgraded converter all lead to a rebuild, never to a stale or partial
model being run. Each entry is built under a file lock that several processes sharing a cache
respect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

from deepcovidxr.contract.atomic import write_json
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime.digest import file_sha256

log = logging.getLogger(__name__)

CACHE_FOLDER = ".engine_cache"
MANIFEST_SUFFIX = ".manifest.json"
# Bump when the way artifacts are built changes, so old cache entries stop matching.
# 2: ONNX through tf2onnx's large-model mode; OpenVINO IR straight from TensorFlow (no ONNX step).
CACHE_FORMAT = 2


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


def cache_folder(member_path: Path, cache_dir: Path | None) -> Path:
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
BUILD_LOCK = threading.RLock()


@contextlib.contextmanager
def entry_lock(entry: CacheEntry) -> Iterator[None]:
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


def cached(entry: CacheEntry, build: Callable[[CacheEntry], dict | None], stats: dict) -> CacheEntry:
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
    with entry_lock(entry):
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


__all__ = [
    "BUILD_LOCK",
    "CACHE_FOLDER",
    "CACHE_FORMAT",
    "MANIFEST_SUFFIX",
    "CacheEntry",
    "cache_folder",
    "cached",
    "default_cache_folder",
    "entry_lock",
    "user_cache_dir",
]
