"""Members of sizes other than the published 224/331 through ensemble.py, evaluate.py and
predict.py, and one uncertainty definition for evaluate.py and predict.py under TTA (issue 19,
section 2). Two untrained 64 and 96 px members on a phantom tree keep it fast."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import make_phantom_tree, save_random_members

SIZE, OTHER = 64, 96
MEMBERS = (f"res_{SIZE}_uncrop", f"res_{OTHER}_uncrop")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 64 px uncrop phantom tree with a 96 px view resized from it (so predict.py, given the
    64 px files, makes the same 96 px view), and two random-weight ResNet-50 members."""

    from deepcovidxr.imaging.preprocess import lanczos_resize
    from deepcovidxr.imaging.reader import read_gray, write_gray

    root = tmp_path_factory.mktemp("small")
    view = make_phantom_tree(root / "tree", 30, SIZE, seed=7)
    for path in view.rglob("*.png"):
        target = root / "tree" / str(OTHER) / "uncrop" / path.relative_to(view)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_gray(target, lanczos_resize(read_gray(path), OTHER))
    return root / "tree", save_random_members(root / "members", MEMBERS)


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["Filenames"]: row for row in csv.DictReader(handle)}


def test_members_of_other_sizes_are_ensembled_and_evaluated(small, tmp_path: Path) -> None:
    """Issue 19: ensemble.py found 64 px members but crashed after scoring all of Validation
    (the weights file knew only the 24 published names), and resolve_ensemble refused them."""
    from deepcovidxr.config.inference_stages import EnsembleConfig
    from deepcovidxr.inference.ensemble import resolve_ensemble
    from deepcovidxr.scoring import weights_file
    from deepcovidxr.stages import ensemble as ensemble_stage

    tree, weights = small
    json_path = ensemble_stage.run(
        EnsembleConfig(weights=weights, data=tree, output=tmp_path / "fit", draws=50, batch_size=8)
    ).report
    stored = weights_file.load_weights(json_path)
    assert list(stored) == list(MEMBERS) and sum(stored.values()) == pytest.approx(1.0)
    assert weights_file.load_weights(json_path.with_name("ensemble_weights.pickle")) == pytest.approx(stored)
    # evaluate.py, predict.py and visSample.py take the weights file (the next test runs two of them)
    chosen = resolve_ensemble(weights, json_path)
    assert chosen.names == list(MEMBERS) and chosen.calibrated
    assert chosen.weights.tolist() == pytest.approx([stored[m] for m in MEMBERS])


def test_evaluate_and_predict_give_one_uncertainty_with_tta(small, tmp_path: Path) -> None:
    """Issue 19: ``evaluate.py -t N`` left the TTA variance out of ``uncertainty`` while
    ``predict.py -t N`` added it. The same images (the Test files, under the same relative names,
    so the same per-image augmentation seeds), the same members, ``-t 2``: the same uncertainty."""
    from deepcovidxr.config.inference_stages import EvaluateConfig, PredictConfig
    from deepcovidxr.stages import evaluate as evaluate_stage
    from deepcovidxr.stages import predict as predict_stage

    tree, weights = small
    weights_json = tmp_path / "weights.json"
    weights_json.write_text(json.dumps({MEMBERS[0]: 0.7, MEMBERS[1]: 0.3}), encoding="utf-8")
    test = tree / str(SIZE) / "uncrop" / "Test"
    images = shutil.copytree(test, tmp_path / "images")
    evaluate_stage.run(
        EvaluateConfig(
            weights=weights, image=tree, output=tmp_path / "eval", ensemble_weights=weights_json, tta=2, bootstrap=10
        )
    )
    predict_stage.run(
        PredictConfig(
            weights=weights,
            input=images,
            output=tmp_path / "pred",
            ensemble_weights=weights_json,
            tta=2,
            score_flagged=True,  # 64 px phantoms are "too small" for the input check
            batch_size=8,
        )
    )
    evaluated = _rows(tmp_path / "eval" / "Results" / "predictions.csv")
    predicted = _rows(tmp_path / "pred" / "predictions.csv")
    assert set(evaluated) == set(predicted)
    for name, row in evaluated.items():
        assert float(row["Scores"]) == pytest.approx(float(predicted[name]["Scores"]), abs=1e-5)
    spread = np.array([[float(evaluated[n]["uncertainty"]), float(predicted[n]["uncertainty"])] for n in evaluated])
    np.testing.assert_allclose(spread[:, 0], spread[:, 1], atol=1e-5)
    # the TTA part is really there: more than the members' spread of the TTA means alone
    members = np.array([[float(evaluated[n][m]) for m in MEMBERS] for n in evaluated])
    w = np.array([0.7, 0.3])
    between = np.sqrt(((members - (members @ w)[:, None]) ** 2) @ w)
    assert (spread[:, 0] > between + 1e-7).any()
