"""Multi-node data parallelism: two worker processes on 127.0.0.1 finish with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from tests.support.helpers import REPO, make_phantom_tree


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _weights(path: Path) -> list[np.ndarray]:
    arrays = []
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"]
        for layer in group.attrs["layer_names"]:
            for name in group[layer].attrs.get("weight_names", []):
                arrays.append(np.asarray(group[layer][name]))
    return arrays


def test_two_workers_train_to_identical_weights(tmp_path: Path) -> None:
    view = make_phantom_tree(tmp_path / "tree", 24, 32, seed=2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "DEEPCOVIDXR_WORKER_COPIES": str(tmp_path / "copies"),
            "CUDA_VISIBLE_DEVICES": "",
        }
        command = [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "ResNet-50",
            "-s",
            "32",
            "-p",
            str(view),
            "-o",
            str(tmp_path / "out"),
            "--multi-worker",
            "--epochs",
            "2",
            "--batch-size",
            "4",
        ]
        processes.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        )
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    chief = tmp_path / "out" / "ResNet50_32_up_uncrop.h5"
    worker = tmp_path / "copies" / "worker_1" / "ResNet50_32_up_uncrop.h5"
    assert chief.is_file() and worker.is_file()
    for a, b in zip(_weights(chief), _weights(worker), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "worker 1 of 2" in outputs[1][1] and "worker 0 of 2" in outputs[0][1]
    config = json.loads((tmp_path / "out" / "ResNet50_32_up_uncrop_config.json").read_text(encoding="utf-8"))
    assert config["workers"] == 2 and set(config["history"]) == {"final"}  # random init: no frozen phase


def test_synchronized_batch_norm_statistics_are_exact_where_keras_cancels() -> None:
    """A channel whose mean is large against its spread: Keras' synchronized moments (E[x^2] -
    E[x]^2 in float32) lose the variance, which made every 3-class multi-worker loss NaN; the
    layer as ``distributed`` sets it up gives numpy's mean and variance and matching outputs."""
    import keras
    import tensorflow as tf

    from deepcovidxr.training.distributed import synchronize_batch_norm

    rng = np.random.default_rng(0)
    x = (3.0e4 + rng.normal(0.0, 1.0, size=(4, 3, 3, 2))).astype(np.float32)
    expected_variance = x.astype(np.float64).var(axis=(0, 1, 2))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        keras_sync = keras.layers.BatchNormalization(synchronized=True, momentum=0.0)
        ours = keras.layers.BatchNormalization(momentum=0.0)
        keras_sync.build(x.shape)
        ours.build(x.shape)
    synchronize_batch_norm(ours)

    @tf.function
    def step(inputs):
        return strategy.run(lambda v: (keras_sync(v, training=True), ours(v, training=True)), args=(inputs,))

    _, out = step(tf.constant(x))
    # momentum 0: the moving statistics are this batch's statistics
    # Keras' cancellation: float32 E[x^2] at 9e8 keeps steps of 64, so the variance (about 1) is
    # lost (here 256 and 512)
    assert not np.allclose(keras_sync.moving_variance.numpy(), expected_variance, rtol=0.5)
    np.testing.assert_allclose(ours.moving_mean.numpy(), x.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expected_variance, rtol=1e-3)
    plain = keras.layers.BatchNormalization()
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain(x, training=True)), atol=1e-3)
