"""One U-Net instance, batched: gray images in, square lung boxes out.

Decoding and box geometry are numpy/OpenCV work that threads can share; the U-Net runs on the
caller's thread in fixed-size batches. On Keras the last batch is padded so the graph is traced
once; on ONNX Runtime / OpenVINO (``engine=``) the U-Net is exported once, cached like the members
(:func:`deepcovidxr.runtime.load.open_model`), takes any batch size, and TensorFlow is not imported
at all on a warm cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr.contract import shipped
from deepcovidxr.imaging.geometry import Box, resize_gray, scale_box, square_box
from deepcovidxr.lungs import segment
from deepcovidxr.lungs.segment import CropStatus, LungBox
from deepcovidxr.runtime.precision import Policy, for_unet

log = logging.getLogger(__name__)

# Package data, not a path from the repository root: an installed wheel has no checkout around it.
DEFAULT_UNET = shipped.unet_weights()


def default_cache_dir() -> Path:
    """Where an exported U-Net is cached when no cache folder is given: ``$DEEPCOVIDXR_CACHE``, else
    ``$XDG_CACHE_HOME/deepcovidxr`` (``~/.cache/deepcovidxr``); the package data may be read-only."""
    from deepcovidxr.runtime.cache import user_cache_dir

    return user_cache_dir()


def default_unet_path() -> Path:
    """``$DEEPCOVIDXR_UNET`` if set, else our shipped weights (package data, ``deepcovidxr/assets/unet``)."""
    return Path(os.environ.get("DEEPCOVIDXR_UNET", DEFAULT_UNET))


@dataclass(frozen=True)
class CropResult:
    square: Box  # the square lung box in original pixels (the crop written downstream)
    tight: Box  # the padded lung box before squaring (the original's "crop" output)
    lung: LungBox
    probability256: np.ndarray

    @property
    def status(self) -> CropStatus:
        return self.lung.status

    def full_resolution_mask(self, width: int, height: int) -> np.ndarray:
        return segment.full_resolution_mask(self.probability256, self.lung, width, height)


def locate(gray: np.ndarray, probability256: np.ndarray) -> CropResult:
    """Box rules for one image, given its U-Net probability map (thread-safe, no model)."""
    height, width = gray.shape
    lung = segment.lung_box(probability256, resize_gray(gray, segment.UNET_SIZE, segment.UNET_SIZE))
    if lung.status is CropStatus.FALLBACK:
        whole = Box(0, 0, width, height)
        return CropResult(whole, whole, lung, probability256)
    tight = scale_box(lung.box256, segment.UNET_SIZE, width, height)
    return CropResult(square_box(tight, width, height), tight, lung, probability256)


def export_friendly(model):
    """The same U-Net with each ``UpSampling2D`` (Keras exports it as reshape/tile through 5-D
    transposes, which ONNX Runtime and OpenVINO run 2-4x slower than the convolutions around it)
    replaced by a nearest ``Resizing`` to twice the size, which exports as one ONNX ``Resize``.
    The same function: an integer 2x nearest resize repeats each pixel, as UpSampling2D does."""
    import keras

    def clone(layer):
        if isinstance(layer, keras.layers.UpSampling2D) and tuple(layer.size) == (2, 2):
            height, width = layer.input.shape[1:3]
            return keras.layers.Resizing(
                2 * height, 2 * width, interpolation="nearest", name=layer.name, dtype=layer.dtype_policy
            )
        return layer.__class__.from_config(layer.get_config())

    friendly = keras.models.clone_model(model, clone_function=clone)
    friendly.set_weights(model.get_weights())
    return friendly


class LungCropper:
    """Holds one U-Net; ``probabilities`` runs it, ``crop`` does the whole job for a batch."""

    def __init__(
        self,
        unet_path: Path | None = None,
        batch_size: int = 16,
        precision: Policy | str = "auto",
        fold: bool = True,
        engine: str = "keras",
        cache_dir: Path | None = None,
    ) -> None:
        """``precision``: the U-Net's ``--precision`` (auto | fp32 | bf16, resolved for ``engine``)
        or a resolved Policy, e.g. the members' (the U-Net then follows it: :meth:`Policy.unet`)."""
        self.path = Path(unet_path) if unet_path else default_unet_path()
        self.batch_size = batch_size
        self.runner = None
        policy = for_unet(precision, engine)
        if engine != "keras":
            self._open_engine(engine, policy, fold, cache_dir)
            return
        from deepcovidxr.lungs.unet import load_unet

        self.model, self.meta = load_unet(self.path, policy.unet_dtype, fold=fold)
        log.info(
            "lung U-Net: %s (%s architecture, %s)",
            self.path,
            self.meta.get("architecture"),
            self.meta.get("inference_dtype"),
        )

    def _open_engine(self, engine: str, policy: Policy, fold: bool, cache_dir: Path | None) -> None:
        import json

        from deepcovidxr.runtime.digest import file_sha256
        from deepcovidxr.runtime.load import open_model

        sidecar = self.path.with_name(self.path.name.removesuffix(".weights.h5") + ".json")
        meta = {"architecture": "light"} if self.path.name.endswith(".weights.h5") else {"architecture": "imlab"}
        if self.path.name.endswith(".weights.h5") and sidecar.is_file():
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        path, folded = self.path, fold

        def load():
            from deepcovidxr.lungs.unet import load_unet

            return export_friendly(load_unet(path, "float32", fold=folded)[0])

        extra = {
            "model": "lung U-Net",
            "sidecar_sha256": file_sha256(sidecar) if sidecar.is_file() else None,
            "fold_batch_norm": fold,
            "keras_dtype": "float32",
            "upsampling": "resize-nearest",
        }
        folder = Path(cache_dir) if cache_dir is not None else Path(default_cache_dir())
        self.runner = open_model(self.path, load, engine, policy, folder, extra, name="lung U-Net")
        self.model = None
        self.meta = {**meta, "engine": engine, "inference_dtype": policy.engine_precision, "batch_norm_folded": fold}

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(n, 256, 256, 1) U-Net inputs -> (n, 256, 256) float32 probabilities."""
        results = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            count = len(batch)
            if self.runner is not None:  # any batch size: a short last batch is not padded
                results.append(self.runner.predict(np.asarray(batch, np.float32))[..., 0])
                continue
            if count < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - count, *batch.shape[1:]), batch.dtype)])
            output = self.model.predict_on_batch(batch)
            results.append(np.asarray(output, dtype=np.float32)[:count, ..., 0])
        if not results:
            return np.zeros((0, segment.UNET_SIZE, segment.UNET_SIZE), np.float32)
        return np.concatenate(results)

    def crop(self, grays: list[np.ndarray]) -> list[CropResult]:
        inputs = np.stack([segment.unet_input(g) for g in grays]) if grays else np.zeros((0, 256, 256, 1), np.float32)
        return [locate(g, p) for g, p in zip(grays, self.probabilities(inputs), strict=True)]
