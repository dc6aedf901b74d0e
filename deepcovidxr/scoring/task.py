"""The task: everything that differs between the binary task and a multi-class one, in one place.

Negative/Positive (:data:`deepcovidxr.contract.classes.BINARY`) is the original's binary task: a
sigmoid head with one unit, P(Positive); one score per image per member, ``(images, members)``
stacked; a call at a threshold (0.5, or an operating point fitted on Validation); Platt /
temperature / isotonic / identity calibration (:mod:`deepcovidxr.scoring.calibration`); the
original's columns and files. Three or more classes: a softmax head with one unit per class; a
probability row per image, ``(images, members, classes)`` stacked; the argmax call; one temperature
over the rows (:mod:`deepcovidxr.scoring.multiclass_calibration`); ``p_<class>`` columns.

Every stage and library module asks :func:`task_for` for the task of its classes and uses the
:class:`Task` interface: the head, the loss and its targets, the member scores' shape, the call,
metrics, calibration, operating points, predictions.csv's columns and what the weights JSON records.
Nothing outside this module asks *which* task it is (``tests/scoring/test_task.py`` greps the
package for it). Where a higher layer keeps two implementations (the figures, Grad-CAM's one
gradient for both binary maps), it chooses with :meth:`Task.pick`, which names both at the call.

Numpy only (scikit-learn through the metrics); no TensorFlow: the Keras metrics are named, not built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from deepcovidxr.contract.classes import BINARY, probability_column
from deepcovidxr.errors import UsageError
from deepcovidxr.scoring import calibration, metrics, multiclass_calibration, operating_points, uncertainty

THRESHOLD = 0.5  # the original's cut of the binary score
POSITIVE, NEGATIVE = "COVID-19 Positive", "COVID-19 Negative"  # the original's call, in its words

T = TypeVar("T")


class Fit(Protocol):
    """A calibration fitted on Validation and stored with the ensemble weights: the binary
    :class:`~deepcovidxr.scoring.calibration.ValidationFit` or the multi-class
    :class:`~deepcovidxr.scoring.multiclass_calibration.MulticlassFit`."""

    validation: dict[str, float]

    @property
    def operating_points(self) -> dict[str, float]: ...  # thresholds on the raw score; none for the argmax

    def probability(self, combined: Any) -> np.ndarray: ...  # the ``Probability`` column

    def held_out(self, y_true: Any, combined: Any, n_boot: int = 2000, seed: int = 0) -> dict: ...

    def describe(self) -> str: ...  # one line for the log

    def to_dict(self) -> dict[str, Any]: ...


def decision(score: float, threshold: float = THRESHOLD) -> list:
    """The original's three result columns for one binary ensemble score: the score, the call at
    ``threshold`` (the original's 0.5 unless an operating point is chosen) and its label."""
    positive = score >= threshold
    return [f"{score:.6f}", int(positive), POSITIVE if positive else NEGATIVE]


@dataclass(frozen=True)
class Task(ABC):
    """One task's answers; :func:`task_for` makes the right one for a class list."""

    classes: tuple[str, ...]

    activation: ClassVar[str]  # of the member's head
    loss: ClassVar[str]  # Keras' name of the member's loss
    label_dtype: ClassVar[type]  # of the labels arrays (class indices; binary 0/1 as floats, as always)
    # The authors' published 24-member ensemble and its weights are for this task.
    published_weights: ClassVar[bool]
    # A split may hold only some of the class folders (the original read a positives-only cohort).
    partial_splits: ClassVar[bool]

    # ---- the network

    @property
    @abstractmethod
    def units(self) -> int:
        """Units of the member's head."""

    @property
    @abstractmethod
    def keras_metrics(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """The training metrics as ``(keras.metrics class name, keyword arguments)``."""

    @property
    def targets(self) -> np.ndarray:
        """What the loss takes for each class index (row ``i``: the target of class ``i``), float32:
        tf.data gathers from it."""
        return np.eye(len(self.classes), dtype=np.float32)

    def member_scores(self, outputs: Any) -> np.ndarray:
        """A member's scores from its head's outputs ``(images, units)``."""
        return np.asarray(outputs)

    # ---- scores and the call

    @property
    def score_shape(self) -> tuple[int, ...]:
        """The shape of one image's score from one member (and of the ensemble's)."""
        return (len(self.classes),)

    def class_probabilities(self, combined: Any) -> np.ndarray:
        """Ensemble scores as ``(images, classes)`` probability rows."""
        return np.asarray(combined, np.float64)

    def predicted(self, probabilities: Any, threshold: float = THRESHOLD) -> np.ndarray:
        """The class index of each ``(images, classes)`` probability row (:meth:`class_probabilities`)."""
        return np.argmax(np.asarray(probabilities), axis=1)

    def call(self, combined: Any, threshold: float = THRESHOLD) -> tuple[int, float]:
        """One image's (class index called, the score reported with it)."""
        index = int(self.predicted(self.class_probabilities(np.asarray(combined)[None]), threshold)[0])
        return index, self._reported_score(combined, index)

    @abstractmethod
    def _reported_score(self, combined: Any, index: int) -> float: ...

    @property
    @abstractmethod
    def call_names(self) -> tuple[str, ...]:
        """The name of each class index's call in reports and predictions.csv."""

    @property
    @abstractmethod
    def cam_keys(self) -> tuple[str, ...]:
        """Grad-CAM's map key of each class index (and ``--target``'s choices)."""

    # ---- the ensemble

    def uncertainty(self, scores: Any, weights: Any, tta_variance: Any = None) -> np.ndarray:
        """The ``uncertainty`` column: the spread of the member scores around the ensemble's
        (:mod:`deepcovidxr.scoring.uncertainty`)."""
        return uncertainty.multiclass_uncertainty(scores, weights)

    def auc(self, y_true: Any, scores: Any) -> float:
        """The ROC AUC of one member's (or the ensemble's) scores, NaN where undefined."""
        return metrics.macro_auc_or_nan(y_true, scores, len(self.classes))

    def auc_ci(self, y_true: Any, scores: Any, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
        """The percentile bootstrap 95 % interval of :meth:`auc` (NaNs where undefined)."""
        return metrics.bootstrap_macro_auc_ci(y_true, scores, n_boot=n_boot, seed=seed)

    # ---- calibration and operating points

    @abstractmethod
    def fit_calibration(self, y_true: Any, combined: Any, method: str) -> Fit | None:
        """The Validation fit ensemble.py stores with the weights (None: nothing to store)."""

    @abstractmethod
    def owns(self, payload: dict[str, Any]) -> bool:
        """Whether a stored fit (the weights JSON's ``calibration``) is this task's kind."""

    @abstractmethod
    def _load_fit(self, payload: dict[str, Any]) -> Fit: ...

    def stored_fit(self, payload: dict[str, Any] | None) -> Fit | None:
        """The fit stored with the weights, or None when there is none of this task's kind."""
        return self._load_fit(payload) if payload and self.owns(payload) else None

    def threshold(self, spec: str | float, fit: Fit | None, dropped: str = "") -> float | None:
        """``--threshold`` resolved (:func:`deepcovidxr.scoring.operating_points.resolve_threshold`);
        None where the call is the argmax."""
        return None

    # ---- files

    @property
    @abstractmethod
    def decision_columns(self) -> list[str]:
        """predict.py's result columns, between ``Filenames`` and ``crop_status``."""

    @abstractmethod
    def decision_cells(self, combined: Any, threshold: float | None) -> list:
        """One image's :attr:`decision_columns` (floats and text)."""

    @property
    @abstractmethod
    def printed_columns(self) -> tuple[str, ...]:
        """The columns predict.py prints on stdout after the file name."""

    def score_column(self, call: str) -> str:
        """The predictions.csv column holding the score of an image called ``call``."""
        return probability_column(call)

    def member_columns(self, names: Sequence[str]) -> list[str]:
        """Every member's score columns: ``<member>.p_<class>`` per member and class."""
        return [f"{name}.{probability_column(c)}" for name in names for c in self.classes]

    def weights_fields(self) -> dict[str, Any]:
        """What the weights JSON records of the task (after ``rule``)."""
        return {"classes": list(self.classes)}

    def class_counts(self, train: Sequence[int], validation: Sequence[int]) -> dict[str, dict[str, int]]:
        """What a member's run config and sidecar record of the images per class."""
        return {
            "train_counts": {name: int(n) for name, n in zip(self.classes, train, strict=True)},
            "validation_counts": {name: int(n) for name, n in zip(self.classes, validation, strict=True)},
        }

    def describe_counts(self, counts: Sequence[int]) -> str:
        """For logs: "227 images (Negative 100, ...)"."""
        per_class = ", ".join(f"{name} {int(n)}" for name, n in zip(self.classes, counts, strict=True))
        return f"{int(sum(counts))} images ({per_class})"

    @abstractmethod
    def pick(self, *, binary: T, multiclass: T) -> T:
        """``binary`` or ``multiclass``, for a higher layer that keeps one implementation of each."""


class BinaryTask(Task):
    """Negative/Positive: the original's task."""

    activation = "sigmoid"
    loss = "binary_crossentropy"
    label_dtype = np.float32
    published_weights = True
    partial_splits = True

    @property
    def units(self) -> int:
        return 1

    @property
    def keras_metrics(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return (
            ("BinaryAccuracy", {"name": "acc"}),
            ("AUC", {"name": "auc"}),
            ("Precision", {"name": "precision"}),
            ("Recall", {"name": "recall"}),
        )

    @property
    def targets(self) -> np.ndarray:
        return np.array([0.0, 1.0], np.float32)  # the 0/1 label itself: one sigmoid unit

    def member_scores(self, outputs: Any) -> np.ndarray:
        return np.asarray(outputs)[:, 0]

    @property
    def score_shape(self) -> tuple[int, ...]:
        return ()

    def class_probabilities(self, combined: Any) -> np.ndarray:
        p = np.asarray(combined, np.float64)
        return np.stack([1.0 - p, p], axis=1)

    def predicted(self, probabilities: Any, threshold: float = THRESHOLD) -> np.ndarray:
        # P(Positive) >= threshold, as every stage cuts the score (not the argmax: 0.5 is positive).
        return (np.asarray(probabilities)[:, 1] >= threshold).astype(np.int64)

    def _reported_score(self, combined: Any, index: int) -> float:
        return float(combined)  # P(Positive), whichever the call

    @property
    def call_names(self) -> tuple[str, ...]:
        return (NEGATIVE, POSITIVE)

    @property
    def cam_keys(self) -> tuple[str, ...]:
        return tuple(name.lower() for name in self.classes)  # the original's spelling

    def uncertainty(self, scores: Any, weights: Any, tta_variance: Any = None) -> np.ndarray:
        """With test-time augmentation the members' within-image variance over the passes
        ``(images, members)`` is added, weighted the same way (law of total variance)."""
        between = uncertainty.spread(scores, weights)
        if tta_variance is None:
            return between.total
        w = np.asarray(weights, np.float64)
        return np.sqrt(between.member_var + np.asarray(tta_variance, np.float64) @ (w / w.sum()))

    def auc(self, y_true: Any, scores: Any) -> float:
        return metrics.auc_or_nan(y_true, scores)

    def auc_ci(self, y_true: Any, scores: Any, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
        return metrics.bootstrap_auc_ci(y_true, scores, n_boot=n_boot, seed=seed)

    def fit_calibration(self, y_true: Any, combined: Any, method: str) -> calibration.ValidationFit:
        return calibration.fit_from_split(y_true, combined, method=method)

    def owns(self, payload: dict[str, Any]) -> bool:
        return not multiclass_calibration.is_multiclass(payload)

    def _load_fit(self, payload: dict[str, Any]) -> calibration.ValidationFit:
        return calibration.ValidationFit.from_dict(payload)

    def threshold(self, spec: str | float, fit: Fit | None, dropped: str = "") -> float | None:
        return operating_points.resolve_threshold(spec, fit.operating_points if fit else None, dropped)

    @property
    def decision_columns(self) -> list[str]:
        return ["Scores", "Binary pred", "Predictions"]

    def decision_cells(self, combined: Any, threshold: float | None) -> list:
        score = float(combined)
        return [score, *decision(score, THRESHOLD if threshold is None else threshold)[1:]]

    @property
    def printed_columns(self) -> tuple[str, ...]:
        return ("Scores", "Predictions")

    def score_column(self, call: str) -> str:
        return "Scores"

    def member_columns(self, names: Sequence[str]) -> list[str]:
        return list(names)  # the original's: one column per member, named by it

    def weights_fields(self) -> dict[str, Any]:
        return {}  # the original's file: no classes key

    def class_counts(self, train: Sequence[int], validation: Sequence[int]) -> dict[str, dict[str, int]]:
        return {}  # the sidecar stays as before multi-class

    def describe_counts(self, counts: Sequence[int]) -> str:
        return f"{int(sum(counts))} images ({int(counts[1])} positive)"

    def pick(self, *, binary: T, multiclass: T) -> T:
        return binary


class MulticlassTask(Task):
    """Three or more classes, a softmax head."""

    activation = "softmax"
    loss = "categorical_crossentropy"
    label_dtype = np.int64
    published_weights = False
    partial_splits = False

    @property
    def units(self) -> int:
        return len(self.classes)

    @property
    def keras_metrics(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        # ``auc``: Keras' AUC over one label per class, averaged: the macro one-vs-rest AUC.
        return (
            ("CategoricalAccuracy", {"name": "acc"}),
            ("AUC", {"name": "auc", "multi_label": True, "num_labels": len(self.classes)}),
        )

    def _reported_score(self, combined: Any, index: int) -> float:
        return float(np.asarray(combined)[index])  # the called class's probability

    @property
    def call_names(self) -> tuple[str, ...]:
        return self.classes

    @property
    def cam_keys(self) -> tuple[str, ...]:
        return self.classes

    def fit_calibration(self, y_true: Any, combined: Any, method: str) -> multiclass_calibration.MulticlassFit | None:
        # One temperature keeps the rows summing to 1 and the argmax; platt/temperature/isotonic
        # all mean it here, identity none.
        return None if method == "identity" else multiclass_calibration.fit(y_true, combined, self.classes)

    def owns(self, payload: dict[str, Any]) -> bool:
        return multiclass_calibration.is_multiclass(payload)

    def _load_fit(self, payload: dict[str, Any]) -> multiclass_calibration.MulticlassFit:
        fit = multiclass_calibration.MulticlassFit.from_dict(payload)
        if fit.classes != self.classes:
            raise UsageError(
                f"the calibration stored with the ensemble weights is for classes {', '.join(fit.classes)}, "
                f"the members' are {', '.join(self.classes)}: rerun ensemble.py"
            )
        return fit

    @property
    def decision_columns(self) -> list[str]:
        return [*map(probability_column, self.classes), "Predictions"]

    def decision_cells(self, combined: Any, threshold: float | None) -> list:
        index, _ = self.call(combined)
        return [*map(float, combined), self.classes[index]]

    @property
    def printed_columns(self) -> tuple[str, ...]:
        return ("Predictions",)

    def pick(self, *, binary: T, multiclass: T) -> T:
        return multiclass


def task_for(classes: Sequence[str]) -> Task:
    """The task of a class list: exactly Negative/Positive is the binary task, three or more
    classes a multi-class one (:func:`deepcovidxr.contract.classes.discover` refuses any other pair)."""
    classes = tuple(classes)
    if classes == BINARY:
        return BinaryTask(classes)
    if len(classes) < 3:
        raise UsageError(f"classes {list(classes)}: two classes must be {list(BINARY)}; otherwise three or more")
    return MulticlassTask(classes)
