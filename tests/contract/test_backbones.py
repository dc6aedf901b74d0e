"""Every row of the backbone table: builds, freezes as a whole, saves and reloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.contract import backbones
from deepcovidxr.contract.backbones import BACKBONES
from deepcovidxr.contract.layout import CropMode, Member
from deepcovidxr.networks.members import backbone_layers, build_member, load_member, save_member, set_backbone_trainable

SIZE = 75  # the smallest size every keras.applications backbone accepts


def test_lookup_accepts_every_spelling_and_suggests_on_typos() -> None:
    assert backbones.get("resnet50") is backbones.get("ResNet-50") is backbones.get("res")
    with pytest.raises(ValueError, match="did you mean DenseNet-121"):
        backbones.get("DenseNet121x")
    assert [b.prefix for b in BACKBONES] == [
        "DenseNet",
        "ResNet50",
        "Inception",
        "InceptionResNet",
        "Xception",
        "EfficientNet",
    ]


def test_too_small_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 75 px"):
        backbones.get("Inception-V3").build(64)


@pytest.mark.parametrize("spec", BACKBONES, ids=[b.name for b in BACKBONES])
def test_member_builds_freezes_saves_and_reloads(spec: backbones.Backbone, tmp_path: Path) -> None:
    import keras

    model = build_member(spec.name, SIZE, dropout=0.2)
    assert model.input_shape == (None, SIZE, SIZE, 3) and model.output_shape == (None, 1)
    assert model.get_layer("last").activation.__name__ == "sigmoid"
    gradcam = model.get_layer(spec.gradcam_layer)
    assert len(gradcam.output.shape) == 4, "the Grad-CAM layer must be spatial"

    set_backbone_trainable(model, False)
    head = model.get_layer("last")
    assert [w.path for w in model.trainable_weights] == [w.path for w in head.trainable_weights]
    frozen_before = [w.numpy().copy() for layer in backbone_layers(model) for w in layer.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, SIZE, SIZE, 3)).astype("float32")
    head_before = head.get_weights()[0].copy()
    model.fit(x, np.array([0, 1, 0, 1], "float32"), epochs=1, verbose=0)
    frozen_after = [w.numpy() for layer in backbone_layers(model) for w in layer.weights]
    assert all(np.array_equal(a, b) for a, b in zip(frozen_before, frozen_after, strict=True)), (
        "phase 1 changed backbone weights (batch-norm statistics included)"
    )
    assert not np.array_equal(head_before, head.get_weights()[0])

    set_backbone_trainable(model, True)
    assert len(model.trainable_weights) > 50

    member = Member(spec.name, SIZE, CropMode.CROP)
    path = save_member(model, tmp_path / member.legacy_filename, member)
    assert path.name == f"{spec.prefix}_{SIZE}_up_crop.h5" and path.with_suffix(".json").is_file()
    reloaded = load_member(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_efficientnet_builtin_preprocessing_is_the_identity() -> None:
    import keras

    model = build_member("EfficientNet-B2", SIZE)
    x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    stem_input = keras.Model(model.input, model.get_layer("stem_conv_pad").input)
    np.testing.assert_allclose(stem_input.predict(x, verbose=0), x, atol=1e-6)


def test_nih_checkpoint_head_is_swapped_on_load(tmp_path: Path) -> None:
    nih = build_member("ResNet-50", SIZE, outputs=14)
    path = tmp_path / "nih_weight_ResNet-50_75.h5"
    save_member(nih, path)
    member = build_member("ResNet-50", SIZE, weights=path)
    assert member.output_shape == (None, 1)
    np.testing.assert_array_equal(
        member.get_layer("conv1_conv").get_weights()[0], nih.get_layer("conv1_conv").get_weights()[0]
    )


def test_offline_imagenet_names_the_file_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from deepcovidxr.networks.members import WeightsUnavailableError

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached ImageNet files
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    import keras.src.applications.resnet as resnet

    monkeypatch.setattr(resnet.file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError, match="pass -w with a local file"):
        build_member("ResNet-50", SIZE, weights="imagenet")
