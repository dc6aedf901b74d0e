"""One schedule for both training loops: Keras fit (train.py) and the multi-worker tf.function loop
(train.py --multi-worker) follow one skip rule for a finished member and feed the same class
weights to the loss."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import REPO, make_phantom_tree

# Run train.py with every keras Loss call spied on: the labels and per-sample weights the loss
# really receives, whichever loop calls it. numpy_function cannot be XLA-compiled, so fit's step is
# compiled without XLA here (the weighting does not depend on it).
SPY = """
import json, os, sys
import numpy as np
import keras
import tensorflow as tf
from keras.src.losses.loss import Loss

seen = []
real_call = Loss.__call__
real_compile = keras.Model.compile

def record(y, w):
    seen.append([np.asarray(y, np.float64).ravel().tolist(), np.asarray(w, np.float64).ravel().tolist()])
    return np.float32(0)

def spy(self, y_true, y_pred, sample_weight=None):
    if tf.is_tensor(y_true) and tf.is_tensor(sample_weight):
        tf.numpy_function(record, [y_true, sample_weight], tf.float32)
    return real_call(self, y_true, y_pred, sample_weight)

def compile_without_xla(self, *args, **kwargs):
    return real_compile(self, *args, **{**kwargs, "jit_compile": False})

Loss.__call__ = spy
keras.Model.compile = compile_without_xla
from deepcovidxr import cli
code = cli.main("train", sys.argv[1:])
with open(os.environ["SPY_OUT"], "w") as handle:
    json.dump(seen, handle)
sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(view: Path, output: Path, *flags: str, multi_worker: bool, spy: Path | None = None):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    args = ["-m", "ResNet-50", "-s", "32", "-p", str(view), "-o", str(output), "--epochs", "1", "--batch-size", "4"]
    if multi_worker:
        # one worker: the multi-worker loop in a cluster of one, in its own process
        cluster = {"worker": [f"127.0.0.1:{_free_port()}"]}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
        args.append("--multi-worker")
    command = [sys.executable, str(REPO / "train.py"), *args, *flags]
    if spy is not None:
        env["SPY_OUT"] = str(spy)
        command = [sys.executable, "-c", SPY, *args, *flags]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600
    )


@pytest.fixture(scope="module")
def unbalanced_view(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train with 6 negatives and 2 positives (class weights 2/3 and 2), Validation with both."""
    view = make_phantom_tree(tmp_path_factory.mktemp("tree"), 20, 32, seed=3)
    for extra in sorted((view / "Train" / "Positive").glob("*.png"))[2:]:
        extra.unlink()
    return view


@pytest.mark.parametrize("multi_worker", [False, True], ids=["fit", "multi-worker"])
def test_a_member_file_without_a_record_is_neither_trusted_nor_overwritten(
    unbalanced_view: Path, tmp_path: Path, multi_worker: bool
) -> None:
    """Both loops follow schedule.finished_member: a member file that no completion record
    describes (another tool's, an older version's) is refused with exit 2, untouched (a finished
    member with a matching record is skipped: tests/training/test_trainer_resume.py)."""
    final = tmp_path / "ResNet50_32_up_uncrop.h5"
    final.write_bytes(b"finished earlier")
    os.utime(final, (1_000_000_000, 1_000_000_000))
    done = _train(unbalanced_view, tmp_path, multi_worker=multi_worker)
    assert done.returncode == 2, done.stderr[-3000:]
    assert final.read_bytes() == b"finished earlier" and final.stat().st_mtime == 1_000_000_000
    assert "--overwrite" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("multi_worker", [False, True], ids=["fit", "multi-worker"])
def test_the_loss_receives_the_class_weights(unbalanced_view: Path, tmp_path: Path, multi_worker: bool) -> None:
    from deepcovidxr.data.tfdata import class_weights, list_split

    expected = class_weights(list_split(unbalanced_view, "Train").labels)
    assert expected == pytest.approx({0: 2 / 3, 1: 2.0})
    spy = tmp_path / "seen.json"
    done = _train(unbalanced_view, tmp_path / "out", "--class-weight", multi_worker=multi_worker, spy=spy)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(spy.read_text(encoding="utf-8"))
    assert seen, "the loop fed no per-sample weights to the loss"
    labels = np.concatenate([np.asarray(y) for y, _ in seen])
    weights = np.concatenate([np.asarray(w) for _, w in seen])
    assert set(labels) == {0.0, 1.0}
    np.testing.assert_allclose(weights, [expected[int(y)] for y in labels], rtol=1e-6)


def test_the_weighted_loss_is_the_mean_over_the_global_batch() -> None:
    """What the multi-worker step minimises equals Keras fit's sample-weighted binary
    cross-entropy (sum of weighted losses over the global batch size), by hand."""
    import tensorflow as tf

    from deepcovidxr.training.schedule import weighted_loss

    labels = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    predictions = np.array([[0.2], [0.7], [0.4], [0.9]], np.float32)
    weights = np.array([0.5, 2.0, 2.0, 0.5], np.float32)
    eps = 1e-7
    p = np.clip(predictions[:, 0], eps, 1 - eps)
    by_hand = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    loss = weighted_loss(tf.constant(labels), tf.constant(predictions), tf.constant(weights), global_batch=8)
    assert float(loss) == pytest.approx(float(np.sum(by_hand * weights) / 8), rel=1e-5)


def test_mixed_float16_scales_the_loss() -> None:
    import keras

    from deepcovidxr.training.schedule import phase_optimizer

    assert isinstance(phase_optimizer("sgd", 0.01, 0.9, "mixed_float16"), keras.optimizers.LossScaleOptimizer)
    for policy in ("float32", "mixed_bfloat16"):  # bfloat16 has float32's range: nothing underflows
        assert not isinstance(phase_optimizer("sgd", 0.01, 0.9, policy), keras.optimizers.LossScaleOptimizer)
