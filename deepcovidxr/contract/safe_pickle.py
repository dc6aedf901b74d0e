"""Read the original's pickles (hyperparameters, ensemble weights) without executing code.

``pickle.load`` on a file from the internet can run arbitrary code. These files only ever hold
dicts, lists, floats and numpy arrays, so the unpickler resolves exactly the globals needed to
rebuild those and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from deepcovidxr.errors import UsageError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "float"),
    ("builtins", "int"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # numpy arrays pickled under Python 2/3 protocol 2 use it for bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numbers, lists, dicts and numpy arrays")


def load(path: Path) -> Any:
    data = Path(path).read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise UsageError(f"{path}: not a safe data-only pickle ({error})") from error
