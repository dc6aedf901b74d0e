"""The ensemble weight files: the original's ``ensemble_weights.pickle`` (a float64 numpy array of 24
in canonical order), read through :mod:`deepcovidxr.contract.safe_pickle`, never ``pickle.load``, and
our ``ensemble_weights.json``, which maps member short names to weights (possibly a subset of the
members) and carries the combination rule, the task's fields (:meth:`deepcovidxr.scoring.task.Task.
weights_fields`: a multi-class file names its classes, a binary one stays exactly as before) and the
Validation fit (calibration and operating points).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deepcovidxr.contract import layout, run_paths, safe_pickle
from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.layout import Member, ensemble_members
from deepcovidxr.errors import UsageError
from deepcovidxr.scoring.task import task_for

logger = logging.getLogger(__name__)

MEMBER_NAMES: tuple[str, ...] = tuple(member.short_name for member in ensemble_members())
WEIGHTS_PICKLE = run_paths.ENSEMBLE_WEIGHTS_PICKLE
WEIGHTS_JSON = run_paths.ENSEMBLE_WEIGHTS_JSON
METHODS: tuple[str, ...] = ("weighted", "mean", "vote", "max")  # the combination rules a file may name
SUM_TOLERANCE = 1e-6

# Pickle protocol 3 is what the original's Python 3.7 wrote; protocol 5 would reference
# numpy._core.numeric._frombuffer, which the restricted unpickler (rightly) refuses.
_PICKLE_PROTOCOL = 3


def _canonical_name(name: str) -> str:
    """A member short name; legacy weight-file names (``ResNet50_331_up_crop.h5``) are accepted too,
    and so is any member the layout can name (``res_128_crop``: members trained at other sizes)."""
    if name in MEMBER_NAMES:
        return name
    try:
        return Member.parse(name).short_name
    except ValueError:
        raise UsageError(f"unknown ensemble member {name!r}; members are named like {MEMBER_NAMES[0]}") from None


def _validated(weights: Mapping[str, Any], source: str) -> dict[str, float]:
    """Canonical names, canonical order, finite non-negative floats summing to 1 (else ValueError
    naming ``source``)."""
    if not weights:
        raise UsageError(f"{source}: no ensemble weights")
    result: dict[str, float] = {}
    for raw_name, raw_value in weights.items():
        try:
            name = _canonical_name(str(raw_name))
        except ValueError as error:
            raise UsageError(f"{source}: {error}") from None
        if name in result:
            raise UsageError(f"{source}: member {name} is given twice")
        if isinstance(raw_value, bool) or not isinstance(raw_value, int | float | np.integer | np.floating):
            raise UsageError(f"{source}: weight of {name} is not a number: {raw_value!r}")
        value = float(raw_value)
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{source}: weight of {name} must be finite and non-negative, got {value}")
        result[name] = value
    total = math.fsum(result.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise UsageError(f"{source}: ensemble weights must sum to 1 (within {SUM_TOLERANCE}), they sum to {total!r}")
    return {name: result[name] for name in sorted(result, key=lambda n: layout.member_order(Member.parse(n)))}


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise UsageError(f"duplicate keys {duplicates}")
    return dict(pairs)


def _from_vector(values: list[float], path: Path) -> dict[str, float]:
    """An array or list of weights: the full canonical 24, or a subset whose names are in the sibling
    JSON this module writes alongside (the pickle alone cannot say which members a subset holds)."""
    if len(values) == len(MEMBER_NAMES):
        return _validated(dict(zip(MEMBER_NAMES, values, strict=True)), str(path))
    sibling = path.with_name(WEIGHTS_JSON)
    if sibling.is_file():
        named = load_weights(sibling)
        if len(named) == len(values) and np.allclose(list(named.values()), values, rtol=0, atol=1e-12):
            return named
    raise UsageError(
        f"{path}: holds {len(values)} weights, not {len(MEMBER_NAMES)}; the members of a subset ensemble are "
        f"named only in its {WEIGHTS_JSON}, load that instead"
    )


def _json_weights(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """The weights of a weights JSON: ours (``{"rule": ..., "weights": {...}}``) or a flat
    ``{member: weight}`` mapping (older files, hand-written ones: the weighted rule)."""
    if "weights" not in payload:
        return payload
    if not isinstance(payload["weights"], dict):
        raise UsageError(f"{path}: 'weights' must map member names to weights")
    return payload["weights"]


def _beside(path: Path, key: str) -> tuple[Path | None, Any]:
    """The weights JSON describing ``path`` (itself, or for a pickle the JSON beside it; None when
    there is none) and its ``key`` (None when absent)."""
    path = Path(path)
    source = path if path.suffix.lower() == ".json" else path.with_name(WEIGHTS_JSON)
    if not source.is_file():
        return None, None
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{source}: not a valid weights JSON ({error})") from error
    return source, payload.get(key) if isinstance(payload, dict) else None


def _describes(source: Path, path: Path) -> bool:
    """Whether the JSON ``source`` is about ``path``: it is ``path``, or a pickle beside it holds the
    same weights (else the pickle is not the one its neighbour describes)."""
    return source == Path(path) or load_weights(source) == load_weights(path)


def load_rule(path: Path) -> str:
    """The combination rule stored with the weights: the JSON's ``rule``; for the original's
    pickle, the rule of the JSON written beside it when that JSON holds the same weights, else
    ``weighted`` (the authors' published rule)."""
    source, rule = _beside(path, "rule")
    if source is None or rule is None:
        return "weighted"
    if rule not in METHODS:
        raise UsageError(f"{source}: unknown combination rule {rule!r}; choose one of {', '.join(METHODS)}")
    return rule if _describes(source, path) else "weighted"


def load_classes(path: Path) -> tuple[str, ...] | None:
    """The class names the weights were fitted for: the JSON's ``classes`` (for a pickle, those
    of the JSON written beside it when it holds the same weights), or None when the file says
    nothing about classes (the authors' pickle, the original's flat ``{member: weight}`` JSON, our
    binary files): the caller then takes the members' own classes (their sidecars)."""
    source, recorded = _beside(path, "classes")
    if source is None or recorded is None:
        return None
    if not isinstance(recorded, list) or len(recorded) < 2 or not all(isinstance(c, str) for c in recorded):
        raise UsageError(f"{source}: 'classes' must be a list of at least two class names")
    return tuple(recorded) if _describes(source, path) else None


def load_calibration(path: Path) -> dict[str, Any] | None:
    """The Validation fit stored with the weights (``calibration`` in the JSON; for a pickle, that of
    the JSON beside it when it holds the same weights), or None: the authors' files and weights
    written before calibration existed have none."""
    source, stored = _beside(path, "calibration")
    if source is None or stored is None or not _describes(source, path):
        return None
    if not isinstance(stored, dict) or "calibration" not in stored or "operating_points" not in stored:
        raise UsageError(
            f"{source}: 'calibration' must hold 'calibration' and 'operating_points' (as ensemble.py writes it)"
        )
    return stored


def load_weights(path: Path) -> dict[str, float]:
    """Read ensemble weights as ``{member short name: weight}`` in canonical order.

    ``*.json``: an object mapping member names to weights (possibly a subset of the 24). Anything else is
    read as the original's pickle (float64 array or plain list of 24 in canonical order, or a dict) with
    the restricted unpickler, so a pickle carrying code is refused. Weights must be finite,
    non-negative and sum to 1 within 1e-6; every failure is a ValueError naming the file.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            payload = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicate_keys)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"{path}: not a valid weights JSON ({error})") from error
        if not isinstance(payload, dict):
            raise UsageError(f"{path}: expected a JSON object {{member name: weight}}, got {type(payload).__name__}")
        return _validated(_json_weights(payload, path), str(path))
    payload = safe_pickle.load(path)  # ValueError naming the file for anything but plain data
    if isinstance(payload, Mapping):
        return _validated(payload, str(path))
    if isinstance(payload, np.ndarray):
        if payload.ndim != 1 or not np.issubdtype(payload.dtype, np.number):
            raise UsageError(f"{path}: expected a 1-D numeric array of weights, got {payload.dtype} {payload.shape}")
        return _from_vector(payload.astype(np.float64).tolist(), path)
    if isinstance(payload, list | tuple):
        for value in payload:
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise UsageError(f"{path}: expected a list of numbers, found {value!r}")
        return _from_vector([float(v) for v in payload], path)
    raise UsageError(f"{path}: expected an array, list or dict of weights, got {type(payload).__name__}")


def weight_vector(weights: Mapping[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
    """Canonically ordered member names and the float64 weight array for :func:`combine`."""
    valid = _validated(weights, "weights")
    return tuple(valid), np.array(list(valid.values()), dtype=np.float64)


def save_weights(
    weights: Mapping[str, float],
    folder: Path,
    rule: str = "weighted",
    classes: tuple[str, ...] | None = None,
    calibration: Mapping[str, Any] | None = None,
    with_pickle: bool = True,
) -> tuple[Path | None, Path]:
    """Write ``ensemble_weights.pickle`` and ``ensemble_weights.json`` into ``folder``, atomically
    (``with_pickle`` False: the JSON alone, for a record no original script reads).

    The pickle is what the original reads: a float64 array in canonical order, over the members present
    only (no zeros are invented for absent members, so for a subset it is not a drop-in 24-member file and
    the JSON, which names the members, is the source of truth). Invalid weights raise ValueError before
    anything is written. ``classes``: the task's fields (:meth:`deepcovidxr.scoring.task.Task.weights_fields`)
    follow the rule: a multi-class JSON names its classes, a binary one is written exactly as before. ``calibration``
    (:meth:`deepcovidxr.scoring.calibration.ValidationFit.to_dict`: the score -> probability map and the
    operating points, fitted on Validation) travels in the same JSON, after the weights.
    """
    folder = Path(folder)
    names, vector = weight_vector(weights)
    pickle_path, json_path = folder / WEIGHTS_PICKLE, folder / WEIGHTS_JSON
    if rule not in METHODS:
        raise UsageError(f"unknown combination rule {rule!r}; choose one of {', '.join(METHODS)}")
    # The rule travels with the weights: every later stage applies it (mean/vote/max ignore the
    # values but keep the members).
    payload: dict[str, Any] = {"rule": rule}
    if classes is not None:
        payload |= task_for(classes).weights_fields()
    payload["weights"] = dict(zip(names, vector.tolist(), strict=True))
    if calibration is not None:
        payload["calibration"] = dict(calibration)
    if not with_pickle:
        write_json(json_path, payload)
        return None, json_path
    with atomic_path(pickle_path) as tmp:
        tmp.write_bytes(pickle.dumps(vector, protocol=_PICKLE_PROTOCOL))
    write_json(json_path, payload)
    if set(names) != set(MEMBER_NAMES):
        logger.warning(
            "%d of %d members weighted: %s names them, the pickle alone does not",
            len(names),
            len(MEMBER_NAMES),
            json_path,
        )
    logger.info("wrote %s and %s", pickle_path, json_path)
    return pickle_path, json_path
