"""The Python API: the ensemble as an object, for a notebook or a service::

    from deepcovidxr import Predictor

    p = Predictor("members/", weights="ensemble_weights.json", engine="openvino", precision="bf16")
    df = p.predict(["a.png", "b.dcm", gray_array])   # predictions.csv's columns, a row per image
    maps = p.explain(["a.png"])                      # Grad-CAM per image, at the image's size

Scores are predict.py's to the last bit: both run through :mod:`deepcovidxr.inference.prediction`
(the lung crop and views in memory, the members model-major on the chosen engine, the
combination, calibration and uncertainty), with the same per-image TTA seed when the names match.
Grad-CAM runs through :mod:`deepcovidxr.explain.ensemble_cam`, as visSample.py. Nothing heavy is
imported with this module: the engine, and TensorFlow when the members run on Keras or are
explained, load when they are first needed.

Research software, not a medical device: its outputs must not be used for diagnosis.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr.config.options import DEFAULT_ENGINE, ENGINES, default_workers
from deepcovidxr.contract import layout
from deepcovidxr.errors import UsageError
from deepcovidxr.explain.display import display_image
from deepcovidxr.explain.ensemble_cam import CamSums, cam_keys, ensemble_cams, explained
from deepcovidxr.explain.gradcam import PREDICTED, resolve_target
from deepcovidxr.imaging.reader import iter_input_files, wide_to_uint8
from deepcovidxr.inference.prediction import Prediction, PredictOptions
from deepcovidxr.inference.streaming import ViewStore
from deepcovidxr.scoring.task import task_for

# What predict() and explain() take: a file (PNG, JPEG, BMP, TIFF, DICOM), a folder (searched
# recursively, as predict.py's -i) or an image array (see :func:`as_gray`).
ImageInput = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class Explanation:
    """One image's Grad-CAM. ``heatmap``: the ensemble's fused map of ``target`` at the image's
    size (height, width), float32 in [0, 1] (None when the image could not be read: ``error``
    says why). ``predicted`` and ``score``: the ensemble's call and its score (binary: P(Positive),
    called ``positive`` at 0.5; multi-class: the called class's probability). ``figure``: the
    figure visSample.py writes (input, heatmap, overlay), when ``explain(..., figures=folder)``."""

    name: str
    heatmap: np.ndarray | None
    target: str = ""
    predicted: str = ""
    score: float = float("nan")
    figure: Path | None = None
    error: str = ""


def as_gray(image: np.ndarray) -> np.ndarray:
    """An image array as the members' input starts: 2-D (height, width) gray, dark lungs as on a
    radiograph. uint8 is taken as it is (as a file is read: ``read_gray(path)`` of an 8-bit file
    gives this array); uint16 by the 16-bit file rule of :func:`deepcovidxr.imaging.reader.read_gray`;
    float in [0, 1] is scaled by 255 and rounded (what an 8-bit PNG written from it holds). Anything
    else (colour, other ranges, NaN) is a UsageError: say how to map it yourself."""
    array = np.asarray(image)
    if array.ndim != 2:
        raise UsageError(f"an image array must be 2-D gray (height, width), not of shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return wide_to_uint8(array.astype(np.uint32))[0]
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise UsageError("a float image array must hold values in [0, 1] (scale it, or pass uint8 0..255)")
        return np.round(array.astype(np.float64) * 255).astype(np.uint8)
    raise UsageError(f"an image array must be uint8, uint16 or float in [0, 1], not {array.dtype}")


def image_inputs(
    images: ImageInput | Sequence[ImageInput], names: Sequence[str] | None = None
) -> tuple[list[Path | np.ndarray], list[str]]:
    """The sources to crop and their names (the ``Filenames`` column, and each image's TTA seed).
    A file is named by its file name (as ``predict.py -i file``), a folder's files by their path
    relative to it (as ``predict.py -i folder``), the n-th input when an array ``array_<n>``;
    ``names`` replaces them all (one per image, after folders are listed)."""
    if isinstance(images, str | os.PathLike | np.ndarray):
        images = [images]
    sources: list[Path | np.ndarray] = []
    labels: list[str] = []
    for position, image in enumerate(images):
        if isinstance(image, np.ndarray):
            sources.append(as_gray(image))
            labels.append(f"array_{position}")
            continue
        path = Path(image)
        if path.is_dir():
            files = list(iter_input_files(path))
            sources += files
            labels += [f.relative_to(path).as_posix() for f in files]
        else:  # a missing or unreadable file gets an error row, as a broken file in a folder does
            sources.append(path)
            labels.append(path.name)
    if names is not None:
        if len(names) != len(sources):
            raise UsageError(f"{len(names)} names for {len(sources)} images")
        labels = [str(name) for name in names]
    return sources, labels


class Predictor:
    """The ensemble of the member files in ``members`` (``<Prefix>_<size>_up_<crop>.h5``) with the
    weights (and rule, calibration, operating points) of ``weights`` (an ``ensemble_weights.json``;
    default the authors' published weights). The options are predict.py's flags: ``subset``
    (``--members``), ``unet``, ``engine`` (openvino, onnxruntime, keras), ``precision`` (auto,
    fp32, bf16, int8 with ``calibration``: a folder of other X-rays), ``engine_cache``, ``tta``,
    ``threshold`` (a number or youden / sens90 / sens95), ``score_flagged``, ``batch_size``,
    ``seed``, ``workers``. Options are checked here (a member file missing, an unknown operating
    point, an engine not installed are a :class:`deepcovidxr.errors.UsageError` or
    ``MissingInputError``); models are opened per call, one member at a time, as predict.py does
    (exports are cached on disk, so later calls start warm)."""

    def __init__(
        self,
        members: str | os.PathLike,
        weights: str | os.PathLike | None = None,
        *,
        subset: Sequence[str] = (),
        unet: str | os.PathLike | None = None,
        engine: str = DEFAULT_ENGINE,
        precision: str = "auto",
        calibration: str | os.PathLike | None = None,
        engine_cache: str | os.PathLike | None = None,
        tta: int = 0,
        threshold: str | float = "0.5",
        score_flagged: bool = False,
        batch_size: int = 16,
        seed: int = 0,
        workers: int | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise UsageError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        if batch_size < 1 or tta < 0:
            raise UsageError("batch_size must be at least 1 and tta at least 0")

        def path(value):
            return None if value is None else Path(value)

        self.options = PredictOptions(
            weights=Path(members),
            ensemble_weights=path(weights),
            members=tuple(subset),
            unet=path(unet),
            batch_size=batch_size,
            engine=engine,
            precision=precision,
            calibration=path(calibration),
            engine_cache=path(engine_cache),
            tta=tta,
            threshold=threshold,
            score_flagged=score_flagged,
            seed=seed,
            workers=default_workers() if workers is None else workers,
        )
        self._prediction = Prediction(self.options)

    @property
    def members(self) -> list[str]:
        """The members run, in the ensemble's order (their ``predictions.csv`` columns)."""
        return self._prediction.chosen.names

    @property
    def classes(self) -> tuple[str, ...]:
        return self._prediction.classes

    @property
    def columns(self) -> list[str]:
        """The columns of :meth:`predict`'s DataFrame: predictions.csv's, in its order."""
        return list(self._prediction.header)

    def predict(self, images: ImageInput | Sequence[ImageInput], names: Sequence[str] | None = None):
        """Score images (files, folders, arrays, or a mixture; see :func:`image_inputs` for their
        names and :func:`as_gray` for arrays): a pandas DataFrame with predictions.csv's columns in
        its order, one row per image in input order. Numbers are at full precision (predict.py's CSV
        rounds the same values to six decimals), blank numbers NaN, ``Binary pred`` nullable Int64;
        an image that cannot be read, or that the input check flags (unless ``score_flagged``), keeps
        its row with the reason in ``error`` and no scores."""
        prediction = self._prediction
        sources, labels = image_inputs(images, names)
        with tempfile.TemporaryDirectory(prefix="deepcovidxr-") as scratch:
            store = ViewStore(Path(scratch), len(sources), prediction.views)
            try:
                loader = prediction.loader()
                crop, _ = prediction.crop(sources, labels, store, loader)
                scores, variance, _ = prediction.score(store, crop, labels, loader)
            finally:
                store.close()
        return prediction.table(labels, crop, scores, variance).frame()

    def explain(
        self,
        images: ImageInput | Sequence[ImageInput],
        names: Sequence[str] | None = None,
        *,
        target: str = PREDICTED,
        figures: str | os.PathLike | None = None,
    ) -> list[Explanation]:
        """The ensemble's Grad-CAM of each image (one :class:`Explanation` per image, in input
        order), as visSample.py makes it: ``target`` ``predicted`` (each image's call), ``positive``
        / ``negative``, or a class of a multi-class ensemble. The members run on Keras here (Grad-CAM
        needs their gradients) whatever the engine; the crop is the predictor's. Images the input
        check flags are explained too. ``figures``: a folder to write visSample.py's figure of each
        image into (``gradCAM_img/<name>_gradCAM.png``)."""
        prediction = self._prediction
        chosen, classes = prediction.chosen, tuple(prediction.classes)
        wanted = resolve_target(target, classes)
        sources, labels = image_inputs(images, names)
        displays: dict[int, np.ndarray] = {}
        with tempfile.TemporaryDirectory(prefix="deepcovidxr-") as scratch:
            store = ViewStore(Path(scratch), len(sources), prediction.views)
            sums = CamSums(store.folder / "maps", len(sources), cam_keys(classes))
            try:

                def keep(index: int, gray: np.ndarray, crop) -> None:
                    sums.place(index, gray.shape, crop.square)
                    if figures is not None:
                        displays[index] = display_image(gray)

                crop, _ = prediction.crop(sources, labels, store, score_flagged=True, keep=keep)
                scores = ensemble_cams(chosen, store, crop.scored, sums, self.options.batch_size)
                ready = crop.scored
                combined = dict(zip(ready, chosen.combine(scores[ready]) if ready else [], strict=True))
                return [
                    self._explanation(sums, i, labels[i], combined, crop.status, wanted, displays.get(i), figures)
                    for i in range(len(sources))
                ]
            finally:
                store.close()

    def _explanation(self, sums: CamSums, i: int, name: str, combined: dict, status: dict, wanted, display, figures):
        if i not in combined:
            return Explanation(name, None, error=status.get(i, ("error", "not processed"))[1] or "not explained")
        classes = tuple(self._prediction.classes)
        predicted, target, score = explained(combined[i], classes, wanted)
        heatmap = sums.fused(i, target, tuple(int(v) for v in sums.shapes[i]))
        figure = None
        if display is not None:
            from deepcovidxr.reports import plots

            figure = Path(figures) / layout.gradcam_names(Path(name))[0]
            title = task_for(classes).pick(binary=name, multiclass=f"{name} ({predicted})")
            plots.plot_gradcam(figure, display, sums.fused(i, target, display.shape), title, score, target)
        return Explanation(name, heatmap, target, predicted, score, figure)
