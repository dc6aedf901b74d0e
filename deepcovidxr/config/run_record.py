"""``run_config.json``, written by every run into its output folder: the resolved options under
the stage's stem (the shape ``--config`` reads back, so a run can be repeated) and its provenance:
versions, commit, command line and a fingerprint of the input.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from deepcovidxr.config.schema import StageConfig

RUN_CONFIG = "run_config.json"
# Distributions whose versions make a run reproducible (read from metadata: nothing is imported).
VERSIONED = (
    "deepcovidxr",
    "tensorflow",
    "keras",
    "keras-tuner",
    "numpy",
    "scikit-learn",
    "opencv-python-headless",
    "pillow",
    "pydicom",
)


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when files differ), or None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def fingerprint(path: Path | None) -> dict[str, Any] | None:
    """File count and a digest of (relative name, size) of every non-hidden file under ``path``:
    cheap (no file is read) and enough to tell two input folders apart."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path)
    digest = hashlib.sha256()
    count = 0
    entries = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for entry in entries:
        relative = entry.name if entry == root else entry.relative_to(root).as_posix()
        if any(part.startswith(".") for part in Path(relative).parts):
            continue
        digest.update(f"{relative}\0{entry.stat().st_size}\n".encode())
        count += 1
    return {"path": str(root), "files": count, "sha256": digest.hexdigest()}


def dump_run(config: StageConfig, stem: str, folder: Path | None = None) -> Path | None:
    """Write ``<output>/run_config.json``: ``{stem: resolved options, "_run": provenance}``, the
    shape ``--config`` reads back."""
    from deepcovidxr.contract.atomic import write_json

    folder = folder or (getattr(config, config.OUTPUT_FIELD) if config.OUTPUT_FIELD else None)
    if folder is None:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = getattr(config, config.INPUT_FIELD) if config.INPUT_FIELD else None
    record = {
        stem: config.options(),
        "_run": {
            "stage": stem,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": sys.argv,
            "cwd": str(Path.cwd()),
            "versions": versions(),
            "commit": commit(),
            "input": fingerprint(source),
        },
    }
    path = folder / RUN_CONFIG
    write_json(path, record)
    return path
