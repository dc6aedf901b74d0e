"""The member ``train.py`` learns from random weights on cropped phantoms, and what is asserted of
it: it learns the lower-zone opacities (training) and its Grad-CAM points at them (Grad-CAM).

Both tests share one trained member, the suite's longest fixture (397 s at 96 px beside four
other busy processes on this 2-core host; it was 954 s at 128 px), so they live in one module:
the suite runs on two xdist workers with ``--dist loadfile``, which keeps a module on one worker,
so the member is trained once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.helpers import make_phantom_tree, run_script

# 3x3 final feature maps: enough to tell the lower zone (0.94 of the peaks land there) at under
# half the cost of 128 px (measured: validation AUC 0.986, test 0.976, sensitivity 0.91).
LEARNING_SIZE = 96
LEARNING_COUNT = 400
LEARNING_BOOST = 40.0


@pytest.fixture(scope="module")
def phantom_member(tmp_path_factory) -> tuple[Path, Path]:
    """train.py, run from the command line, on 400 cropped phantoms at 96 px from random
    weights (ResNet-50, Adam, 12 epochs). Returns (view folder, output)."""
    root = tmp_path_factory.mktemp("phantom_member")
    view = make_phantom_tree(root / "data", LEARNING_COUNT, LEARNING_SIZE, opacity_boost=LEARNING_BOOST, view="crop")
    output = root / "members"
    result = run_script(
        "train.py",
        *("-m", "ResNet-50", "-s", LEARNING_SIZE, "-p", view, "-o", output),
        *("-w", "none", "--optimizer", "adam", "--epochs", 12, "--batch-size", 32, "--seed", 0),
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return view, output


def test_train_cli_learns_phantom_opacities_from_random_weights(phantom_member: tuple[Path, Path]) -> None:
    """The issue's learning check: train.py from the command line, random initial weights, learns
    the positives' lower-zone opacities (validation AUC >= 0.9, measured here with sklearn on the
    member it wrote) and writes the ``_up_`` member with its curves, log and config."""
    import csv

    from sklearn.metrics import roc_auc_score

    from deepcovidxr.data.tfdata import list_split, make_dataset
    from deepcovidxr.networks.members import load_member

    view, output = phantom_member
    member_file = output / f"ResNet50_{LEARNING_SIZE}_up_crop.h5"
    assert member_file.is_file(), sorted(p.name for p in output.iterdir())
    model = load_member(member_file)
    aucs = {}
    for split in ("Validation", "Test"):
        files = list_split(view, split)
        scores = model.predict(make_dataset(files, LEARNING_SIZE, 32, training=False), verbose=0)[:, 0]
        aucs[split] = roc_auc_score(files.labels, scores)
    assert aucs["Validation"] >= 0.9, aucs
    assert aucs["Test"] >= 0.85, aucs  # never seen while training or checkpointing

    config = json.loads((output / f"ResNet50_{LEARNING_SIZE}_up_crop_config.json").read_text(encoding="utf-8"))
    assert config["initial_weights"] == "none" and config["warmup_epochs"] == 10
    assert config["final"] == member_file.name
    with (output / f"ResNet50_{LEARNING_SIZE}_up_crop_log.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {r["phase"] for r in rows} == {"final"}  # random weights: no frozen phase
    assert all(r["learning_rate"] for r in rows)  # one value per epoch, warm-up included
    assert max(float(r["val_auc"]) for r in rows) >= 0.9
    assert (output / f"ResNet50_{LEARNING_SIZE}_up_crop_curves.png").stat().st_size > 0


def test_gradcam_of_a_trained_member_points_at_the_opacities(phantom_member) -> None:
    """Grad-CAM of the member train.py learnt on cropped phantoms (see conftest.phantom_member),
    placed back into the 256 px phantoms, on the 80 held-out positives.

    At this test size the last convolutional map is 3x3, one cell a third of the lungs' height:
    the peak lands in the lower zone of a lung holding an opacity almost always (0.94 measured)
    and inside the opacity itself 0.19 of the time, against a chance level of 0.04 (the opacity's
    share of the crop box). ``benchmarks/bench_gradcam_pointing.py`` measures it at 224 px.
    """
    from deepcovidxr.contract.backbones import get
    from tools.phantom_tasks import gradcam_pointing

    view, output = phantom_member
    member = output / f"ResNet50_{LEARNING_SIZE}_up_crop.h5"
    measured = gradcam_pointing(member, view, get("ResNet-50").gradcam_layer)
    assert measured["positives"] == 80 and measured["detected"] > 0.8, measured
    assert measured["map_side"] == LEARNING_SIZE // 32, measured
    assert measured["lower_zone"] >= 0.8, measured
    assert measured["inside"] >= 3 * measured["chance"], measured
