"""Per-image uncertainty of the ensemble, and what referring the most uncertain images buys.

The ensemble score of image i is the weighted mean of its member scores, ``mean_i = sum_j w_j s_ij``
(weights normalised to sum to 1, as the published rule's do). Its uncertainty is the **weighted
standard deviation of the member scores around that mean**::

    sd_i = sqrt( sum_j w_j (s_ij - mean_i)^2 )

(the population form, no small-sample correction: the weights are the ensemble's, not frequencies, and
a zero-weight member contributes nothing, exactly as it contributes nothing to the score).

With test-time augmentation each member gives T scores per image, ``s_ijt``. The total spread is the
standard deviation of the whole weighted mixture of (member, draw) scores, split by the law of total
variance into the two sources::

    total_i^2 = sum_j w_j (m_ij - mean_i)^2   +   sum_j w_j v_ij
                (between members)               (within members: augmentation)

where ``m_ij`` and ``v_ij`` are member j's mean and (population) variance over its T draws and
``mean_i = sum_j w_j m_ij`` is the TTA ensemble score. So ``total = sqrt(member_var + mean tta_var)``
with the weighted mean over members; with T = 1 it is the member spread above.

Multi-class members give probabilities ``(images, members, classes)`` (or ``(images, members, draws,
classes)``). The uncertainty is the spread, as above, of the **predicted class's** probability (the
class with the highest ensemble probability, first on ties): how much the members disagree about the
answer the ensemble gives. For two classes this equals the binary spread of the positive score.

``referral_curve`` answers "if the most uncertain fraction of images went to a radiologist, how good
is the ensemble on the rest?". Only numpy and scikit-learn are imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def _weights(weights: Any, members: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (members,):
        raise ValueError(f"{members} members but weights of shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("ensemble weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("ensemble weights sum to zero")
    return w / total


def _finite(array: Any, ndims: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.float64)
    if a.ndim not in ndims:
        raise ValueError(f"{what} must have {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or infinity")
    return a


@dataclass(frozen=True)
class Spread:
    """Per-image ensemble score and its spread. ``member_var`` is the between-member variance of the
    (TTA-averaged) member scores, ``tta_var`` the weighted mean within-member TTA variance (zeros
    without TTA); ``total = sqrt(member_var + tta_var)``."""

    score: np.ndarray
    member_var: np.ndarray
    tta_var: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return np.sqrt(self.member_var + self.tta_var)

    @property
    def member(self) -> np.ndarray:
        """The member spread alone (standard deviation)."""
        return np.sqrt(self.member_var)


def spread(scores: Any, weights: Any) -> Spread:
    """Binary scores ``(images, members)`` or, with TTA, ``(images, members, draws)`` -> :class:`Spread`.

    ``weights`` (members,) are the ensemble weights (normalised here)."""
    s = _finite(scores, (2, 3), "member scores")
    if s.ndim == 2:
        s = s[:, :, None]
    w = _weights(weights, s.shape[1])
    per_member = s.mean(axis=2)  # (images, members)
    within = s.var(axis=2)  # population variance over draws; 0 for one draw
    score = per_member @ w
    member_var = ((per_member - score[:, None]) ** 2) @ w
    return Spread(score=score, member_var=np.maximum(member_var, 0.0), tta_var=within @ w)


def uncertainty(scores: Any, weights: Any) -> np.ndarray:
    """The per-image uncertainty (:attr:`Spread.total`) of binary scores ``(images, members[, draws])``."""
    return spread(scores, weights).total


def multiclass_spread(probabilities: Any, weights: Any) -> tuple[np.ndarray, Spread]:
    """Multi-class probabilities ``(images, members, classes)`` or ``(images, members, draws, classes)``
    -> (predicted class index per image, :class:`Spread` of that class's probability).

    The predicted class is the argmax of the weighted ensemble probability (TTA-averaged), the lowest
    class index on ties."""
    p = _finite(probabilities, (3, 4), "member probabilities")
    if p.ndim == 3:
        p = p[:, :, None, :]
    w = _weights(weights, p.shape[1])
    ensemble = np.einsum("imtc,m->ic", p, w) / p.shape[2]
    predicted = np.argmax(ensemble, axis=1)
    chosen = np.take_along_axis(p, predicted[:, None, None, None], axis=3)[..., 0]  # (images, members, draws)
    return predicted, spread(chosen, w)


def multiclass_uncertainty(probabilities: Any, weights: Any) -> np.ndarray:
    """The per-image uncertainty of multi-class probabilities (the predicted class's spread)."""
    return multiclass_spread(probabilities, weights)[1].total


# ------------------------------------------------------------------------------------------ referral


def referral_order(uncertainty_values: Any) -> np.ndarray:
    """Image indices, most uncertain first; ties keep the input order (a stable sort)."""
    u = _finite(uncertainty_values, (1,), "uncertainties")
    return np.argsort(-u, kind="stable")


def _auc(labels: np.ndarray, scores: np.ndarray, classes: int) -> float:
    if scores.ndim == 1:
        return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else math.nan
    if np.unique(labels).size < classes:
        return math.nan
    return float(roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=list(range(classes))))


def referral_curve(
    labels: Any,
    scores: Any,
    uncertainty_values: Any,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    threshold: float = 0.5,
) -> list[dict[str, float]]:
    """AUC and accuracy on the images kept when the most uncertain fraction is referred.

    For each fraction f the ``floor(f * n)`` most uncertain images (:func:`referral_order`) are referred
    and the rest kept. Binary: ``scores`` (images,), a kept image is called positive when
    ``score >= threshold``. Multi-class: ``scores`` (images, classes) probabilities, integer labels,
    accuracy of the argmax, macro one-vs-rest AUC. The AUC is NaN when the kept images miss a class.
    Rows: ``{"fraction", "referred", "kept", "auc", "accuracy"}`` in the order of ``fractions``.
    """
    y = np.asarray(labels)
    s = _finite(scores, (1, 2), "scores")
    u = _finite(uncertainty_values, (1,), "uncertainties")
    if y.ndim != 1 or not (y.size == s.shape[0] == u.size):
        raise ValueError(f"labels {y.shape}, scores {s.shape} and uncertainties {u.shape} must have one row per image")
    if y.size == 0:
        raise ValueError("no images")
    classes = 2 if s.ndim == 1 else s.shape[1]
    if not np.isin(np.unique(y), np.arange(classes)).all():
        raise ValueError(f"labels must be class indices 0..{classes - 1}")
    y = y.astype(np.int64)
    order = referral_order(u)
    n = y.size
    rows = []
    for fraction in fractions:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"a referred fraction must be in [0, 1), got {fraction}")
        referred = math.floor(fraction * n + 1e-9)
        kept = np.sort(order[referred:])
        ky, ks = y[kept], s[kept]
        predicted = (ks >= threshold).astype(np.int64) if s.ndim == 1 else np.argmax(ks, axis=1)
        rows.append(
            {
                "fraction": float(fraction),
                "referred": referred,
                "kept": int(kept.size),
                "auc": _auc(ky, ks, classes),
                "accuracy": float(np.mean(predicted == ky)),
            }
        )
    return rows
