"""Combining the 24 member scores: the published weights, combination rules and the seeded weight
search (the weight files: :mod:`deepcovidxr.scoring.weights_file`, whose functions are importable
from here too).

The original (SPEC s.10) fitted the weights with deepstack's ``DirichletEnsemble``: 10,000 unseeded draws
from a flat Dirichlet over the members, keeping the draw whose weighted sum of sigmoids had the highest ROC
AUC, and it did so on the Test split (SPEC bugs 1 and 18). :func:`dirichlet_search` is the same random
search, seeded and vectorised; which split it is given is the caller's choice (it should be Validation).

Multi-class ensembles (three or more classes, :mod:`deepcovidxr.contract.classes`): member scores are
``(images, members, classes)`` probability vectors, every rule returns ``(images, classes)`` rows
summing to 1 (see :func:`combine_rule`), the weight search maximises the macro one-vs-rest ROC AUC
(:func:`dirichlet_search`). Which shape a task's scores have is
:attr:`deepcovidxr.scoring.task.Task.score_shape`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import roc_auc_score

from deepcovidxr.errors import UsageError
from deepcovidxr.scoring.weights_file import MEMBER_NAMES, METHODS

logger = logging.getLogger(__name__)

# The authors' ensemble_weights.pickle (SPEC s.14), canonical member order, digits exactly as stored.
PUBLISHED_WEIGHTS: np.ndarray = np.array(
    [
        0.05571716975507337,  # dense_224_uncrop
        0.024822993602669652,  # dense_224_crop
        0.01808747712894963,  # dense_331_uncrop
        0.1002356044539112,  # dense_331_crop
        0.008134209561247663,  # res_224_uncrop
        0.08251069388404665,  # res_224_crop
        0.02426681748776421,  # res_331_uncrop
        0.23599779970938828,  # res_331_crop
        0.04330556639592669,  # inception_224_uncrop
        0.009148577234176298,  # inception_224_crop
        0.007850525032736548,  # inception_331_uncrop
        0.07507801020860656,  # inception_331_crop
        0.013626053547192577,  # inceptionresnet_224_uncrop
        0.04579237963230957,  # inceptionresnet_224_crop
        0.054896986334149675,  # inceptionresnet_331_uncrop
        0.009064091187328947,  # inceptionresnet_331_crop
        0.027590612067285202,  # xception_224_uncrop
        0.014577548885323158,  # xception_224_crop
        0.009457462487749878,  # xception_331_uncrop
        0.006486991406459347,  # xception_331_crop
        0.01522298198089617,  # efficient_224_uncrop
        0.005684004756204026,  # efficient_224_crop
        0.009317916743011526,  # efficient_331_uncrop
        0.10312752651759315,  # efficient_331_crop
    ],
    dtype=np.float64,
)
# A module-level array is shared by every caller; read-only so nobody rescales the published values.
PUBLISHED_WEIGHTS.flags.writeable = False

# Weight draws are generated in fixed blocks so a seed gives the same draws whatever the data size.
_DRAW_BLOCK = 4096
# Cap on (cases x candidate weightings) cells sorted at once by the AUC evaluation.
_AUC_CELLS = 1_000_000


class SearchResult(NamedTuple):
    """Outcome of :func:`dirichlet_search`: the best weights (in the columns' order), their ROC AUC
    (computed by ``sklearn.metrics.roc_auc_score``) and how many weightings were tried."""

    weights: np.ndarray
    auc: float
    draws: int


def published_weights() -> dict[str, float]:
    """The authors' published weights as ``{member short name: weight}`` in canonical order."""
    return dict(zip(MEMBER_NAMES, PUBLISHED_WEIGHTS.tolist(), strict=True))


# ------------------------------------------------------------------------------------------ combining


def _member_scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (2, 3):
        raise ValueError(f"member scores must be (images, members) or (images, members, classes), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("member scores contain NaN or infinity")
    return s


def combine(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of member sigmoids: ``scores`` (images, members) times ``weights`` (members,).

    This is the published combination rule; the result is cut at 0.5 by the caller. The weights are used
    as given (they are validated to sum to 1 when loaded or saved, not here). Multi-class scores
    (images, members, classes) give the weighted mean of the members' probability vectors
    (``sum_m w_m p_m / sum_m w_m``: the same as the sum for weights summing to 1, and rows that sum
    to 1 whatever the weights' total), shape (images, classes).
    """
    s = _member_scores(scores)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (s.shape[1],):
        raise ValueError(f"{s.shape[1]} member columns but weights of shape {w.shape}")
    if s.ndim == 2:
        return s @ w
    total = w.sum()
    if not total > 0:
        raise ValueError("weights sum to zero")
    return np.einsum("imk,m->ik", s, w) / total


def combine_rule(scores: np.ndarray, method: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Combine member scores into one score per image (binary) or one probability row per image
    (multi-class).

    Binary, scores (images, members) -> (images,): ``weighted``: :func:`combine` (needs
    ``weights``); ``mean``: unweighted soft average; ``vote``: fraction of members calling the image
    positive (score >= 0.5, a hard majority vote when cut at 0.5); ``max``: the most confident member.

    Multi-class, scores (images, members, classes) -> (images, classes), every row summing to 1, the
    call being the row's argmax: ``weighted``: weighted mean of the members' probability vectors;
    ``mean``: their unweighted mean; ``vote``: the fraction of members whose argmax is each class (a
    member's tie goes to the first class in sorted order, as ``numpy.argmax``); ``max``: each class's
    highest probability over the members, the row then divided by its sum (so the class one member
    is most sure of wins; the values are a ranking score more than a calibrated probability).
    """
    if method == "weighted":
        if weights is None:
            raise ValueError("method 'weighted' needs weights")
        return combine(scores, weights)
    s = _member_scores(scores)
    if method == "mean":
        return s.mean(axis=1)
    if method == "vote":
        if s.ndim == 2:
            return (s >= 0.5).mean(axis=1)
        calls = s.argmax(axis=2)  # (images, members)
        counts = (calls[:, :, None] == np.arange(s.shape[2])).sum(axis=1)
        return counts / s.shape[1]
    if method == "max":
        if s.ndim == 2:
            return s.max(axis=1)
        top = s.max(axis=1)
        total = top.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, top / np.where(total > 0, total, 1.0), 1.0 / s.shape[2])
    raise ValueError(f"unknown combination method {method!r}; choose one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------------------------- search


def fast_auc(labels: Any, scores: Any) -> np.ndarray | float:
    """ROC AUC of each column of ``scores`` (images,) or (images, k) against 0/1 ``labels``.

    Mann-Whitney form with ties counting one half, which is exactly what ``roc_auc_score`` computes
    (its trapezoids through tied scores), but for many columns with one sort each. Counts are integers,
    so the only rounding is the final division. Returns a float for 1-D input, else an array of k.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    single = s.ndim == 1
    if single:
        s = s[:, None]
    if y.ndim != 1 or s.ndim != 2 or s.shape[0] != y.size:
        raise ValueError(f"labels of shape {y.shape} do not match scores of shape {np.shape(scores)}")
    positive = y.astype(bool)
    n_pos = int(positive.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UsageError("ROC AUC needs both classes among the labels")
    order = np.argsort(s, axis=0, kind="stable")
    ordered = np.take_along_axis(s, order, axis=0)
    negative = ~positive[order]
    neg_upto = np.cumsum(negative, axis=0)  # negatives at or below each position
    starts = np.ones(ordered.shape, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[:-1] = starts[1:]
    # Negatives strictly below a tie group (forward-filled from its start) and up to its end (back-filled
    # from its end); the counts never decrease along the sort, so running max/min do the filling.
    below = np.maximum.accumulate(np.where(starts, neg_upto - negative, 0), axis=0)
    upto = np.minimum.accumulate(np.where(ends, neg_upto, n_neg)[::-1], axis=0)[::-1]
    # A positive beats the negatives below its group and half of those inside it: (below + upto) / 2.
    wins = np.where(negative, 0, below + upto).sum(axis=0)
    auc = wins / (2.0 * n_pos * n_neg)
    return float(auc[0]) if single else auc


def dirichlet_search(scores: np.ndarray, labels: Any, draws: int = 10000, seed: int = 0) -> SearchResult:
    """Random search on the flat Dirichlet simplex for the weights maximising the ensemble ROC AUC.

    What deepstack's ``DirichletEnsemble`` did for the original, but seeded (``default_rng(seed)``) and
    vectorised. A flat Dirichlet(1, ..., 1) draw is a vector of independent Exp(1) variables divided by
    their sum, which is how the draws are generated, in fixed blocks, so a seed gives the same sequence of
    candidates for any data. The first draw reaching the best AUC wins. Give it the Validation split:
    fitting on Test and reporting on Test is optimistic (SPEC bug 1).

    Multi-class scores (images, members, classes) with class-index labels: the same draws, each
    candidate scored by the macro one-vs-rest ROC AUC of the weighted mean of the members'
    probability vectors (per class, the AUC of that class's column against "this class or not",
    then the unweighted mean over classes). Chosen over log-loss because it is the figure the
    evaluation reports, it keeps the binary search's meaning (a rank objective, one AUC per class,
    the same vectorised Mann-Whitney count) and, like the binary AUC, it cannot be improved by
    merely sharpening or flattening the probabilities. Every class must occur in the labels.
    """
    s = _member_scores(scores)
    y = np.asarray(labels)
    if y.shape != (s.shape[0],):
        raise ValueError(f"{s.shape[0]} images of scores but labels of shape {y.shape}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if s.ndim == 3:
        return _multiclass_search(s, y, draws, seed)
    if not np.isin(np.unique(y), (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = COVID-positive)")
    weights = _best_draw(s.shape[0], s.shape[1], draws, seed, lambda candidates: fast_auc(y, s @ candidates.T))
    # Report the AUC the way everyone else computes it, on the very sum combine() produces.
    auc = float(roc_auc_score(y, combine(s, weights)))
    return _searched(weights, auc, np.atleast_1d(fast_auc(y, s)), "AUC", draws, seed)


def _best_draw(
    n_images: int, n_members: int, draws: int, seed: int, objective: Callable[[np.ndarray], Any]
) -> np.ndarray:
    """The first of ``draws`` flat-Dirichlet weightings (``default_rng(seed)``, fixed blocks) with
    the highest ``objective``, which scores a (candidates, members) block at once."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _AUC_CELLS // n_images)
    best_auc, best_weights = -math.inf, np.full(n_members, 1.0 / n_members)
    for block_start in range(0, draws, _DRAW_BLOCK):
        block = rng.standard_exponential((min(_DRAW_BLOCK, draws - block_start), n_members))
        block /= block.sum(axis=1, keepdims=True)
        for start in range(0, block.shape[0], chunk):
            candidates = block[start : start + chunk]
            aucs = np.atleast_1d(objective(candidates))
            index = int(np.argmax(aucs))
            if aucs[index] > best_auc:  # strict: an equal AUC later does not displace an earlier draw
                best_auc, best_weights = float(aucs[index]), candidates[index].copy()
    return best_weights


def _searched(weights: np.ndarray, auc: float, member_aucs: Any, what: str, draws: int, seed: int) -> SearchResult:
    logger.info(
        "Dirichlet search (%d draws, seed %d): ensemble %s %.4f; best single member %.4f (column %d)",
        draws,
        seed,
        what,
        auc,
        np.max(member_aucs),
        int(np.argmax(member_aucs)),
    )
    return SearchResult(weights=weights, auc=auc, draws=draws)


def macro_ovr_auc(labels: Any, probabilities: Any) -> float:
    """Macro one-vs-rest ROC AUC of (images, classes) probabilities against class-index labels
    (every class must occur), with :func:`fast_auc` (equal to scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")``)."""
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean([fast_auc(y == k, p[:, k]) for k in range(p.shape[1])]))


def _multiclass_search(s: np.ndarray, y: np.ndarray, draws: int, seed: int) -> SearchResult:
    n_images, n_members, n_classes = s.shape
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("multi-class labels must be class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be class indices 0..{n_classes - 1}")
    absent = sorted(set(range(n_classes)) - set(np.unique(y).tolist()))
    if absent:
        raise UsageError(f"the weight search needs every class among the labels; class indices {absent} have no image")
    one_vs_rest = [y == k for k in range(n_classes)]

    def macro(candidates: np.ndarray) -> np.ndarray:
        # Column k of the weighted mean is linear in the weights: (images, members) @ (members, c).
        return np.mean(
            [np.atleast_1d(fast_auc(one_vs_rest[k], s[:, :, k] @ candidates.T)) for k in range(n_classes)], axis=0
        )

    weights = _best_draw(n_images, n_members, draws, seed, macro)
    combined = combine(s, weights)
    auc = float(roc_auc_score(y, combined, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    member_aucs = [macro_ovr_auc(y, s[:, m, :]) for m in range(n_members)]
    return _searched(weights, auc, member_aucs, "macro one-vs-rest AUC", draws, seed)
