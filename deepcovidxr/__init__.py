"""deepcovidxr: a Keras 3 re-implementation of the DeepCOVID-XR chest X-ray ensemble.

Research software, not a medical device: its outputs must not be used for diagnosis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepcovidxr.predictor import Explanation, Predictor

__version__ = "0.1.0"
__all__ = ["DISCLAIMER", "Explanation", "Predictor", "__version__"]
# The Python API, imported on first use: ``import deepcovidxr`` (every stage script's first import)
# stays light, and TensorFlow loads only when a model needs it.
_LAZY = frozenset({"Explanation", "Predictor"})

DISCLAIMER = (
    "deepcovidxr is research software, not a medical device. It is not approved for clinical use; "
    "its outputs must not be used for diagnosis or patient management."
)


def __getattr__(name: str):
    """``deepcovidxr.Predictor`` and ``deepcovidxr.Explanation``, from :mod:`deepcovidxr.predictor`."""
    if name in _LAZY:
        from deepcovidxr import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'deepcovidxr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
