"""The files shipped inside the package: our lung U-Net and the authors' published ensemble weights.

They are package data under ``deepcovidxr/assets/`` (``pyproject.toml`` ships them in the wheel),
located with :mod:`importlib.resources`, so an installed package finds them without a checkout.
In a checkout, ``unet/`` and ``ensemble_weights.{pickle,json}`` at the repository root are
symlinks to these files, so the original's commands (``-e ensemble_weights.pickle``) still work.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ASSETS = "assets"
UNET_WEIGHTS = ("unet", "lung_unet.weights.h5")  # its lung_unet.json sidecar sits beside it
ENSEMBLE_PICKLE = ("ensemble_weights.pickle",)  # its ensemble_weights.json sits beside it


def asset(*parts: str) -> Path:
    """The shipped file ``assets/<parts>`` as a real path (Keras and h5py need one).

    A package imported from a zip has no such path; pip always installs unpacked, so that is an
    unsupported install rather than a user error.
    """
    resource = resources.files("deepcovidxr").joinpath(ASSETS)
    for part in parts:
        resource = resource.joinpath(part)
    if not isinstance(resource, Path):
        raise RuntimeError(f"deepcovidxr is not installed as files ({resource!r}); reinstall it with pip")
    return resource


def unet_weights() -> Path:
    """Our shipped lung U-Net, ``lung_unet.weights.h5`` (the JSON metadata beside it)."""
    return asset(*UNET_WEIGHTS)


def ensemble_weights() -> Path:
    """The authors' published 24 weights, ``ensemble_weights.pickle`` (the JSON beside it)."""
    return asset(*ENSEMBLE_PICKLE)
