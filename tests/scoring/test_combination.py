"""deepcovidxr.scoring.combination: published weights, combination rules, the seeded Dirichlet search, weight files."""

from __future__ import annotations

import json
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deepcovidxr.contract.layout import ensemble_members
from deepcovidxr.scoring import combination, weights_file


class Exploit:
    """A pickle payload that runs a shell command when unpickled with plain ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def synthetic_members(n: int = 300, members: int = 6, informative: int = 2, seed: int = 0):
    """Labels and member scores where only column ``informative`` separates the classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.random((n, members))
    scores[:, informative] = np.clip(0.5 + 0.25 * (labels - 0.5) + 0.2 * rng.normal(size=n), 0, 1)
    return scores, labels


# ------------------------------------------------------------------------------------ published weights


def test_published_weights() -> None:
    w = combination.PUBLISHED_WEIGHTS
    assert w.dtype == np.float64 and w.shape == (24,)
    assert abs(w.sum() - 1.0) < 1e-12
    assert (w > 0).all()
    names = [m.short_name for m in ensemble_members()]
    assert list(weights_file.MEMBER_NAMES) == names
    assert names[int(w.argmax())] == "res_331_crop" and w.max() == 0.23599779970938828
    assert names[int(w.argmin())] == "efficient_224_crop" and w.min() == 0.005684004756204026
    assert combination.published_weights()["dense_224_uncrop"] == 0.05571716975507337
    with pytest.raises(ValueError):
        w[0] = 1.0  # read-only: shared module state


def test_published_aggregates_match_spec() -> None:
    # SPEC s.14: cropped 0.713 vs uncropped 0.287; 331 px 0.654 vs 224 px 0.346; ResNet-50 0.351.
    weights = combination.published_weights()
    crop = sum(v for k, v in weights.items() if k.endswith("_crop"))
    big = sum(v for k, v in weights.items() if "_331_" in k)
    res = sum(v for k, v in weights.items() if k.startswith("res_"))
    assert (round(crop, 3), round(big, 3), round(res, 3)) == (0.713, 0.654, 0.351)


# ------------------------------------------------------------------------------------------- combining


SCORES = np.array([[0.9, 0.2, 0.5], [0.1, 0.4, 0.3], [0.6, 0.7, 0.49]])
WEIGHTS = np.array([0.5, 0.3, 0.2])


def test_combine_rules_against_hand_computation() -> None:
    np.testing.assert_allclose(combination.combine(SCORES, WEIGHTS), [0.61, 0.23, 0.608], atol=1e-12)
    np.testing.assert_allclose(combination.combine_rule(SCORES, "weighted", WEIGHTS), [0.61, 0.23, 0.608], atol=1e-12)
    np.testing.assert_allclose(combination.combine_rule(SCORES, "mean"), [1.6 / 3, 0.8 / 3, 1.79 / 3], atol=1e-12)
    # Vote counts score >= 0.5 as positive: 0.5 votes yes, 0.49 does not.
    np.testing.assert_allclose(combination.combine_rule(SCORES, "vote"), [2 / 3, 0.0, 2 / 3], atol=1e-12)
    np.testing.assert_allclose(combination.combine_rule(SCORES, "max"), [0.9, 0.4, 0.7], atol=1e-12)


def test_combine_rejects_bad_shapes_and_methods() -> None:
    with pytest.raises(ValueError):
        combination.combine(SCORES, WEIGHTS[:2])
    with pytest.raises(ValueError):
        combination.combine(SCORES[0], WEIGHTS)
    with pytest.raises(ValueError, match="needs weights"):
        combination.combine_rule(SCORES, "weighted")
    with pytest.raises(ValueError, match="unknown"):
        combination.combine_rule(SCORES, "median")


def test_published_weights_combine_to_a_probability() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((7, 24))
    combined = combination.combine(scores, combination.PUBLISHED_WEIGHTS)
    assert ((combined >= scores.min(axis=1)) & (combined <= scores.max(axis=1))).all()
    assert combination.combine(np.ones((2, 24)), combination.PUBLISHED_WEIGHTS) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- search


def test_fast_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random((200, 30)), 1)  # heavy ties
    scores[:, 0] = 0.5  # one column entirely tied
    scores[:, 1] = labels  # perfect separation
    expected = [roc_auc_score(labels, scores[:, j]) for j in range(30)]
    np.testing.assert_allclose(combination.fast_auc(labels, scores), expected, rtol=0, atol=1e-12)
    assert combination.fast_auc(labels, scores[:, 1]) == 1.0 and combination.fast_auc(labels, scores[:, 0]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        combination.fast_auc(np.zeros(200, int), scores)


def test_dirichlet_search_is_seeded_and_on_the_simplex() -> None:
    scores, labels = synthetic_members()
    first = combination.dirichlet_search(scores, labels, draws=2000, seed=3)
    again = combination.dirichlet_search(scores, labels, draws=2000, seed=3)
    other = combination.dirichlet_search(scores, labels, draws=2000, seed=4)
    np.testing.assert_array_equal(first.weights, again.weights)
    assert first.auc == again.auc and first.draws == 2000
    assert not np.array_equal(first.weights, other.weights)
    assert first.weights.shape == (6,) and (first.weights >= 0).all()
    assert first.weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_dirichlet_search_finds_the_informative_member() -> None:
    scores, labels = synthetic_members(informative=2)
    result = combination.dirichlet_search(scores, labels, draws=3000, seed=0)
    member_aucs = [roc_auc_score(labels, scores[:, j]) for j in range(scores.shape[1])]
    assert int(np.argmax(member_aucs)) == 2
    assert result.auc >= max(member_aucs) - 0.02
    assert int(np.argmax(result.weights)) == 2
    # The reported AUC is sklearn's on combine(); the search's fast AUC agrees with it.
    combined = combination.combine(scores, result.weights)
    assert result.auc == roc_auc_score(labels, combined)
    assert combination.fast_auc(labels, combined) == pytest.approx(result.auc, abs=1e-12)


@pytest.mark.parametrize(("block", "cells"), [(4096, 1_000_000), (64, 120 * 7)])
def test_dirichlet_search_beats_every_draw_it_could_have_made(monkeypatch, block: int, cells: int) -> None:
    # The winner is the best of the seed's flat-Dirichlet draws (normalised Exp(1) vectors), whether the
    # draws are generated in one block or many and scored in one chunk or many.
    monkeypatch.setattr(combination, "_DRAW_BLOCK", block)
    monkeypatch.setattr(combination, "_AUC_CELLS", cells)
    scores, labels = synthetic_members(n=120, members=4, seed=5)
    result = combination.dirichlet_search(scores, labels, draws=300, seed=11)
    draws = np.random.default_rng(11).standard_exponential((300, 4))
    draws /= draws.sum(axis=1, keepdims=True)
    aucs = [roc_auc_score(labels, scores @ w) for w in draws]
    assert result.auc == pytest.approx(max(aucs), abs=1e-12)
    np.testing.assert_allclose(result.weights, draws[int(np.argmax(aucs))], rtol=0, atol=1e-15)


def test_dirichlet_search_full_size_is_fast() -> None:
    scores, labels = synthetic_members(n=300, members=24, informative=7)
    start = time.perf_counter()
    result = combination.dirichlet_search(scores, labels, draws=10_000, seed=0)
    elapsed = time.perf_counter() - start
    assert result.draws == 10_000 and result.weights.shape == (24,)
    assert elapsed < 8.0, f"10,000 draws took {elapsed:.1f} s"


def test_dirichlet_search_rejects_bad_input() -> None:
    scores, labels = synthetic_members(n=20)
    with pytest.raises(ValueError):
        combination.dirichlet_search(scores, labels[:10])
    with pytest.raises(ValueError):
        combination.dirichlet_search(scores, labels, draws=0)
    with pytest.raises(ValueError, match="both classes"):
        combination.dirichlet_search(scores, np.zeros(20, int), draws=10)


# ------------------------------------------------------------------------------------------ weight files


def test_load_the_original_pickle_array_and_plain_list(tmp_path: Path) -> None:
    as_array = tmp_path / "array" / "ensemble_weights.pickle"
    as_list = tmp_path / "list" / "ensemble_weights.pickle"
    for path, payload, protocol in (
        (as_array, combination.PUBLISHED_WEIGHTS.copy(), 3),
        (as_list, list(combination.PUBLISHED_WEIGHTS.tolist()), 2),
    ):
        path.parent.mkdir()
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        loaded = weights_file.load_weights(path)
        assert list(loaded) == list(weights_file.MEMBER_NAMES)
        assert list(loaded.values()) == combination.PUBLISHED_WEIGHTS.tolist()  # bit-exact


def test_save_load_round_trip_full(tmp_path: Path) -> None:
    weights = combination.published_weights()
    pickle_path, json_path = weights_file.save_weights(weights, tmp_path / "out")
    assert (pickle_path.name, json_path.name) == ("ensemble_weights.pickle", "ensemble_weights.json")
    raw = pickle.loads(pickle_path.read_bytes())  # what the original's predict.py would read
    assert isinstance(raw, np.ndarray) and raw.dtype == np.float64
    np.testing.assert_array_equal(raw, combination.PUBLISHED_WEIGHTS)
    assert weights_file.load_weights(pickle_path) == weights
    assert weights_file.load_weights(json_path) == weights
    assert json.loads(json_path.read_text(encoding="utf-8")) == {"rule": "weighted", "weights": weights}
    assert sorted(p.name for p in pickle_path.parent.iterdir()) == ["ensemble_weights.json", "ensemble_weights.pickle"]


def test_subset_round_trip(tmp_path: Path) -> None:
    # Given out of order and with a legacy file name: stored in canonical order under short names.
    subset = {"res_331_crop": 0.5, "DenseNet_224_up_uncrop.h5": 0.2, "efficient_331_crop": 0.3}
    pickle_path, json_path = weights_file.save_weights(subset, tmp_path)
    expected = {"dense_224_uncrop": 0.2, "res_331_crop": 0.5, "efficient_331_crop": 0.3}
    assert list(weights_file.load_weights(json_path).items()) == list(expected.items())
    np.testing.assert_array_equal(pickle.loads(pickle_path.read_bytes()), [0.2, 0.5, 0.3])  # no zeros invented
    assert weights_file.load_weights(pickle_path) == expected  # named through the sibling JSON
    json_path.unlink()
    with pytest.raises(ValueError, match=r"holds 3 weights.*ensemble_weights\.json"):
        weights_file.load_weights(pickle_path)
    names, vector = weights_file.weight_vector(expected)
    assert names == ("dense_224_uncrop", "res_331_crop", "efficient_331_crop")
    np.testing.assert_array_equal(vector, [0.2, 0.5, 0.3])


@pytest.mark.parametrize(
    "payload",
    [
        {"res_331_crop": 0.5, "dense_224_crop": 0.4},  # sums to 0.9
        {"res_331_crop": 1.2, "dense_224_crop": -0.2},  # negative
        {"res_331_crop": 1.0, "not_a_member": 0.0},  # unknown member
        {"res_331_crop": "1.0"},  # not a number
        {"res_331_crop": True},  # bool is not a weight
        {},  # empty
        [0.5, 0.5],  # not an object
    ],
)
def test_invalid_json_rejected_naming_the_file(tmp_path: Path, payload) -> None:
    path = tmp_path / "ensemble_weights.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("ensemble_weights.json")):
        weights_file.load_weights(path)


def test_json_duplicates_and_slightly_off_sums(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"res_331_crop": 0.5, "res_331_crop": 0.5}', encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate"):
        weights_file.load_weights(path)
    path.write_text(json.dumps({"res_331_crop": 0.6, "dense_224_crop": 0.4 + 5e-7}), encoding="utf-8")
    assert weights_file.load_weights(path)["dense_224_crop"] == 0.4 + 5e-7  # within 1e-6
    path.write_text(json.dumps({"res_331_crop": 0.6, "dense_224_crop": 0.4 + 5e-6}), encoding="utf-8")
    with pytest.raises(ValueError, match="sum to 1"):
        weights_file.load_weights(path)


def test_invalid_pickles_rejected(tmp_path: Path) -> None:
    cases = {
        "sum.pickle": combination.PUBLISHED_WEIGHTS * 1.01,
        "negative.pickle": np.r_[combination.PUBLISHED_WEIGHTS[:-1], -0.1],
        "matrix.pickle": np.tile(combination.PUBLISHED_WEIGHTS, (2, 1)) / 2,
        "strings.pickle": ["a"] * 24,
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps(payload, protocol=3))
        with pytest.raises(ValueError, match=re.escape(name)):
            weights_file.load_weights(path)
    with pytest.raises(ValueError, match="sum to 1"):
        weights_file.save_weights({"res_331_crop": 0.7}, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "ensemble_weights.pickle"
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ValueError, match=re.escape("ensemble_weights.pickle")):
        weights_file.load_weights(path)
    assert not marker.exists()


def test_the_rule_is_stored_and_a_flat_json_is_the_weighted_rule(tmp_path: Path) -> None:
    weights = {"res_224_uncrop": 0.5, "dense_224_crop": 0.5}
    pickle_path, json_path = weights_file.save_weights(weights, tmp_path / "vote", rule="vote")
    assert weights_file.load_rule(json_path) == "vote" and weights_file.load_rule(pickle_path) == "vote"
    assert weights_file.load_weights(json_path) == weights
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(weights), encoding="utf-8")
    assert weights_file.load_rule(flat) == "weighted" and weights_file.load_weights(flat) == weights
    # a pickle whose neighbour holds other weights does not inherit its rule
    names = weights_file.MEMBER_NAMES
    full, other = tmp_path / "full", tmp_path / "other"
    weights_file.save_weights(dict.fromkeys(names, 1 / len(names)), full, rule="vote")
    weights_file.save_weights({**dict.fromkeys(names, 0.0), names[0]: 1.0}, other, rule="max")
    (other / "ensemble_weights.pickle").write_bytes((full / "ensemble_weights.pickle").read_bytes())
    assert weights_file.load_rule(full / "ensemble_weights.pickle") == "vote"
    assert weights_file.load_rule(other / "ensemble_weights.pickle") == "weighted"
    with pytest.raises(ValueError, match="unknown combination rule"):
        weights_file.save_weights(weights, tmp_path / "bad", rule="median")
