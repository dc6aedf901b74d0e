"""Digests and versions that key the engine cache and the training records: a file's sha256
(remembered by path, size and modification time), a folder's, an array's, and the installed
versions of the packages that shape an artifact."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np

from deepcovidxr import __version__

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


def versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """This package's version and each named distribution's (None where it is not installed)."""
    return {"deepcovidxr": __version__, **{name: package_version(name) for name in names}}


__all__ = ["array_sha256", "file_sha256", "package_version", "tree_sha256", "versions"]
