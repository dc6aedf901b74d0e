"""U-Net architectures, our weight files, and a user's imlab .hdf5 via -U."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.lungs.unet import build_unet, load_unet
from deepcovidxr.networks.legacy_h5 import LegacyWeightsError
from tests.support.legacy_writers import write_imlab_unet


def test_imlab_architecture_matches_the_original_size() -> None:
    model = build_unet("imlab")
    assert model.input_shape == (None, 256, 256, 1) and model.output_shape == (None, 256, 256, 1)
    assert model.count_params() == 5_468_897  # imlab's build_UNet2D_4L
    assert sum(1 for layer in model.layers if layer.weights) == 22  # 3x3 convolutions, no batch-norm


def test_light_architecture_is_smaller() -> None:
    assert build_unet("light").count_params() < 2_000_000
    with pytest.raises(ValueError, match="unknown U-Net architecture"):
        build_unet("huge")


@pytest.fixture(scope="module")
def imlab_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_imlab_unet(tmp_path_factory.mktemp("imlab"))


def test_user_imlab_hdf5_loads_and_predicts_like_the_legacy_model(imlab_file) -> None:
    path, probe, expected = imlab_file
    model, meta = load_unet(path, "float32")
    assert meta["architecture"] == "imlab"
    ours = np.asarray(model.predict(np.load(probe), verbose=0))
    assert np.max(np.abs(ours - np.load(expected))) <= 1e-4


def test_wrong_architecture_file_fails_naming_file_and_layer(tmp_path: Path) -> None:
    light = build_unet("light")
    path = tmp_path / "light.weights.h5"
    light.save_weights(path)
    with pytest.raises(LegacyWeightsError, match=r"not.*readable|no Keras 2 layer list"):
        load_unet(path.rename(tmp_path / "light.hdf5"))


def test_missing_weights_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="-U/--Unet"):
        load_unet(tmp_path / "nope.hdf5")


def test_our_weights_round_trip_with_their_sidecar(tmp_path: Path) -> None:
    import json

    model = build_unet("light")
    path = tmp_path / "lung_unet.weights.h5"
    model.save_weights(path)
    (tmp_path / "lung_unet.json").write_text(json.dumps({"architecture": "light"}), encoding="utf-8")
    loaded, _meta = load_unet(path, "float32")
    probe = np.random.default_rng(1).normal(size=(1, 256, 256, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), model.predict(probe, verbose=0), atol=1e-6)


def test_folded_batch_norm_computes_the_same_function(tmp_path: Path) -> None:
    """Inference folds each batch-norm into its convolution; with non-trivial statistics the
    folded model must give the trained model's probabilities, and have no batch-norm left."""
    import json

    import keras

    model = build_unet("light")
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)]
            )
    path = tmp_path / "lung_unet.weights.h5"
    model.save_weights(path)
    (tmp_path / "lung_unet.json").write_text(json.dumps({"architecture": "light"}), encoding="utf-8")
    folded, meta = load_unet(path, "float32")
    unfolded, _ = load_unet(path, "float32", fold=False)
    assert meta["batch_norm_folded"] is True
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in unfolded.layers)
    probe = rng.normal(size=(2, 256, 256, 1)).astype("float32")
    expected = model.predict(probe, verbose=0)
    assert np.abs(expected - 0.5).max() > 0.05  # the statistics matter for this probe
    np.testing.assert_allclose(folded.predict(probe, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(unfolded.predict(probe, verbose=0), expected, atol=1e-6)


def _train_unet(output: Path, *extra: str) -> tuple:
    """train_unet.py for one epoch on 16 real pairs: (completed process, its metadata or None)."""
    from tests.support.helpers import run_script, shared

    data = shared("lungmasks")
    common = ("--data", data, "--output", output, "--epochs", "1", "--batch-size", "4", "--limit", "16")
    done = run_script("train_unet.py", *common, *extra)
    return done, json.loads((output / "lung_unet.json").read_text(encoding="utf-8")) if done.returncode == 0 else None


def test_train_unet_writes_weights_that_load_and_metadata_that_describes_them(tmp_path: Path) -> None:
    done, meta = _train_unet(tmp_path / "scratch")
    assert done.returncode == 0, done.stderr[-2000:]
    weights = tmp_path / "scratch" / "lung_unet.weights.h5"
    assert done.stdout.strip().endswith(str(weights))
    model, loaded_meta = load_unet(weights, dtype="float32", fold=False)
    assert loaded_meta["architecture"] == meta["architecture"] == "light"
    assert model.count_params() == meta["parameters"]
    data = meta["training_data"]
    assert data["train_pairs"] + data["heldout_pairs"] == 16 and data["heldout_pairs"] >= 1
    assert len(data["heldout_files"]) == data["heldout_pairs"]
    assert len(meta["training"]["history"]) == 1 and meta["training"]["init"] is None
    assert meta["started_from"] is None and meta["training"]["pathology_probability"] == 0.5
    assert 0.0 <= meta["validation"]["dice_min"] <= meta["validation"]["dice_mean"] <= 1.0


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path) -> None:
    """With a zero learning rate, a run started from the shipped U-Net keeps its kernels and its
    held-out Dice; a wrong architecture is refused before any data is read."""
    from tests.support.helpers import REPO

    shipped = REPO / "unet" / "lung_unet.weights.h5"
    done, meta = _train_unet(tmp_path / "tuned", "--init", shipped, "--learning-rate", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert meta["training"]["init"] == str(shipped)
    shipped_meta = json.loads(shipped.with_name("lung_unet.json").read_text(encoding="utf-8"))
    assert meta["started_from"]["file"] == str(shipped)
    assert meta["started_from"]["validation"] == shipped_meta["validation"]  # provenance travels with the file
    assert meta["validation"]["dice_mean"] > 0.9, meta["validation"]
    tuned, _ = load_unet(tmp_path / "tuned" / "lung_unet.weights.h5", dtype="float32", fold=False)
    original, _ = load_unet(shipped, dtype="float32", fold=False)
    kernels = [(a, b) for a, b in zip(tuned.weights, original.weights, strict=True) if "kernel" in a.path]
    assert kernels and all(np.array_equal(a.numpy(), b.numpy()) for a, b in kernels)

    refused, _ = _train_unet(tmp_path / "wrong", "--init", shipped, "--architecture", "imlab")
    assert refused.returncode == 2 and "--architecture light" in refused.stderr


def test_train_unet_refuses_fractions_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    import train_unet

    assert train_unet.main(["--data", ".", "--pathology-probability", "1.5"]) == 2
    assert "--pathology-probability: must lie in [0, 1], got 1.5" in capsys.readouterr().err
    # nothing left to train on (1) or nothing held out to measure (0): refused before any data is read
    for fraction in ("1", "0"):
        assert train_unet.main(["--data", ".", "--heldout-fraction", fraction]) == 2
        assert "--heldout-fraction: must lie strictly between 0 and 1" in capsys.readouterr().err
