"""The three tuned hyperparameters, their defaults and their files.

Precedence: defaults (the original's lr 1e-3, momentum 0.9, dropout 0.3) < a hyperparameters
file (our JSON, or the original tuner's pickle) < explicit command-line values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from deepcovidxr.contract import safe_pickle
from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.run_paths import HYPERPARAMETERS_JSON, HYPERPARAMETERS_PICKLE
from deepcovidxr.errors import MissingInputError, UsageError

KEYS = ("dropout_rate", "learning_rate", "momentum")


@dataclass(frozen=True)
class Hyperparameters:
    dropout_rate: float = 0.3
    learning_rate: float = 1e-3
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UsageError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if not self.learning_rate > 0.0:
            raise UsageError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.momentum < 1.0:
            raise UsageError(f"momentum must be in [0, 1), got {self.momentum}")

    def with_overrides(self, **values: float | None) -> Hyperparameters:
        return replace(self, **{k: float(v) for k, v in values.items() if v is not None})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def read(path: Path) -> dict[str, float]:
    """The keys of the three found in ``hyperparameters.json`` or the original's
    ``hyperparameters.pickle``; other keys are ignored."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"hyperparameters file not found: {path}")
    values = json.loads(path.read_text(encoding="utf-8")) if path.suffix.lower() == ".json" else safe_pickle.load(path)
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping with keys {', '.join(KEYS)}")
    return {k: float(values[k]) for k in KEYS if k in values}


def load(path: Path | None) -> Hyperparameters:
    """Read a hyperparameters file (see :func:`read`); missing keys keep their defaults."""
    return Hyperparameters() if path is None else Hyperparameters(**read(path))


def save(hyperparameters: Hyperparameters, folder: Path) -> tuple[Path, Path]:
    """Write ``hyperparameters.json`` and the original's ``hyperparameters.pickle`` (a plain dict
    of floats with the keys dropout_rate, learning_rate, momentum)."""
    import pickle

    folder = Path(folder)
    json_path, pickle_path = folder / HYPERPARAMETERS_JSON, folder / HYPERPARAMETERS_PICKLE
    write_json(json_path, hyperparameters.as_dict())
    with atomic_path(pickle_path) as tmp:
        tmp.write_bytes(pickle.dumps(hyperparameters.as_dict(), protocol=4))
    return json_path, pickle_path
