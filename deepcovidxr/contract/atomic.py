"""Atomic file output: write to a temporary sibling, then rename over the destination.

An interrupted run therefore never leaves a half-written image, CSV or weight file behind, and a
rerun can trust that every file it finds is complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 would hide outputs
    from colleagues on a shared server). Read once: os.umask can only be read by setting it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it into place on success.

    The temporary name keeps the destination's suffix(es) so libraries that pick a format
    from the extension (OpenCV, Keras, matplotlib) behave as for the real name.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.stem}.", suffix=f".part{suffix}", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    mode = _file_mode()
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(destination: Path, data: bytes) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def write_text(destination: Path, text: str) -> None:
    write_bytes(destination, text.encode("utf-8"))


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float as None: Python's json writes NaN/Infinity, which
    strict readers (jq, JSON.parse) reject, and an undefined figure (the precision of a class
    never predicted) is a legitimate result that must survive as null."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(destination: Path, payload: Any) -> None:
    text = json.dumps(_strict(payload), indent=2, sort_keys=False, default=str, allow_nan=False)
    write_text(destination, text + "\n")
