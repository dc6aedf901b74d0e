"""One precision vocabulary (auto | fp32 | bf16 | fp16 | int8): each kind of stage accepts its
values (checked once, in deepcovidxr.config.precision), old spellings still read with a warning,
and deepcovidxr.runtime.precision resolves a value once into the Policy that training, the U-Net,
the engines and the engine cache read."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.config import data_stages, inference_stages, training_stages
from deepcovidxr.config import precision as vocabulary
from deepcovidxr.config.precision import ENGINE, TRAINING, UNET
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import hardware
from deepcovidxr.runtime.precision import Policy, for_engine, for_training, for_unet, resolve


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Set what the hardware says: machine(bf16=..., gpu=...)."""

    def set_to(bf16: bool, gpu: bool = False) -> None:
        monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda core=None: bf16)
        monkeypatch.setattr(hardware, "gpu_available", lambda: gpu)

    return set_to


# kind, engine, value, (native bf16, GPU) -> (name, keras dtype policy, U-Net precision, cache key)
RESOLVED = [
    # training: mixed precision only where it pays
    (TRAINING, "keras", "auto", (False, True), ("fp16", "mixed_float16", "fp16", "fp32")),
    (TRAINING, "keras", "auto", (True, False), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    (TRAINING, "keras", "auto", (False, False), ("fp32", "float32", "fp32", "fp32")),
    (TRAINING, "keras", "fp32", (True, True), ("fp32", "float32", "fp32", "fp32")),
    (TRAINING, "keras", "bf16", (False, True), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    (TRAINING, "keras", "fp16", (False, False), ("fp16", "mixed_float16", "fp16", "fp32")),
    # the U-Net on Keras or OpenVINO: bf16 where the CPU has it; ONNX Runtime: fp32
    (UNET, "keras", "auto", (True, True), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    (UNET, "keras", "auto", (False, True), ("fp32", "float32", "fp32", "fp32")),
    (UNET, "openvino", "auto", (True, False), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    (UNET, "onnxruntime", "auto", (True, False), ("fp32", "float32", "fp32", "fp32")),
    (UNET, "keras", "fp32", (True, False), ("fp32", "float32", "fp32", "fp32")),
    (UNET, "keras", "bf16", (False, False), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    # the members on an engine; the U-Net beside them follows at fp32/bf16, else takes its own auto
    (ENGINE, "openvino", "auto", (True, False), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    (ENGINE, "openvino", "auto", (False, False), ("fp32", "float32", "fp32", "fp32")),
    (ENGINE, "keras", "auto", (True, True), ("fp32", "float32", "bf16", "fp32")),
    (ENGINE, "onnxruntime", "auto", (True, False), ("fp32", "float32", "fp32", "fp32")),
    (ENGINE, "openvino", "fp32", (True, False), ("fp32", "float32", "fp32", "fp32")),
    (ENGINE, "openvino", "bf16", (True, False), ("bf16", "mixed_bfloat16", "bf16", "fp32")),
    (ENGINE, "onnxruntime", "int8", (True, False), ("int8", "float32", "fp32", "int8")),
    (ENGINE, "openvino", "int8", (True, False), ("int8", "float32", "bf16", "int8")),
    (ENGINE, "openvino", "int8", (False, False), ("int8", "float32", "fp32", "int8")),
]


@pytest.mark.parametrize(("kind", "engine", "value", "hardware_says", "expected"), RESOLVED)
def test_every_value_resolves_as_documented(machine, kind, engine, value, hardware_says, expected) -> None:
    machine(*hardware_says)
    policy = resolve(value, kind, engine)
    assert (policy.name, policy.keras_dtype_policy, policy.unet_precision, policy.cache_key) == expected
    assert policy.requested == value and policy.kind == kind
    assert policy.engine_precision == policy.name
    assert policy.mixed is (policy.keras_dtype_policy != "float32")
    unet = policy.unet()
    assert (unet.kind, unet.name, unet.keras_dtype_policy) == (UNET, expected[2], policy.unet_dtype)


def test_every_kind_accepts_its_values_and_refuses_the_others() -> None:
    assert vocabulary.PRECISIONS == ("auto", "fp32", "bf16", "fp16", "int8")
    assert vocabulary.accepted(TRAINING) == ("auto", "fp32", "bf16", "fp16")
    assert vocabulary.accepted(UNET) == ("auto", "fp32", "bf16")
    assert vocabulary.accepted(ENGINE) == ("auto", "fp32", "bf16", "int8")
    for kind in vocabulary.KINDS:
        for value in vocabulary.PRECISIONS:
            if value in vocabulary.accepted(kind):
                assert vocabulary.spelled(value.upper(), kind) == value
                continue
            with pytest.raises(ValueError, match=f"choose one of {', '.join(vocabulary.accepted(kind))}$"):
                vocabulary.spelled(value, kind)


def _predict(precision: str):
    return inference_stages.PredictConfig(weights=".", input=".", output="/tmp/o", precision=precision)


def _train(precision: str):
    return training_stages.TrainConfig(model="ResNet-50", size=224, path=".", output="o", precision=precision)


def _train_unet(precision: str):
    return data_stages.UnetTrainConfig(data=".", precision=precision)


@pytest.mark.parametrize(
    ("config", "kind", "value", "accepted"),
    [(_predict, ENGINE, "fp16", "int8"), (_train, TRAINING, "int8", "fp16"), (_train_unet, TRAINING, "half", "fp16")],
    ids=["predict-fp16", "train-int8", "train_unet-half"],
)
def test_a_value_a_stage_does_not_accept_is_a_usage_error_naming_the_accepted(config, kind, value, accepted) -> None:
    with pytest.raises(
        UsageError, match=rf"--precision: '{value}' is not accepted by .*choose one of auto, .*{accepted}$"
    ):
        config(value)
    with pytest.raises(UsageError, match=rf"choose one of auto, .*{accepted}$"):  # a library caller
        resolve(value, kind)


def test_refusals_say_why(machine) -> None:
    with pytest.raises(UsageError, match="no engine here runs fp16"):
        for_engine("fp16", "openvino")
    with pytest.raises(UsageError, match="inference precision"):
        for_training("int8")
    with pytest.raises(UsageError, match="U-Net runs fp32 or bf16"):
        for_unet("fp16")


# old spelling -> new, per kind (``mixed`` meant the device's half type in training, bf16 elsewhere)
OLD = [
    ("float32", TRAINING, "fp32"),
    ("float32", UNET, "fp32"),
    ("float32", ENGINE, "fp32"),
    ("bfloat16", TRAINING, "bf16"),
    ("bfloat16", UNET, "bf16"),
    ("bfloat16", ENGINE, "bf16"),
    ("mixed", TRAINING, "auto"),
    ("mixed", UNET, "bf16"),
    ("mixed", ENGINE, "bf16"),
]


@pytest.mark.parametrize(("old", "kind", "new"), OLD)
def test_old_spellings_warn_and_resolve_to_the_new_value(machine, caplog, old: str, kind: str, new: str) -> None:
    machine(bf16=True)
    with pytest.warns(DeprecationWarning, match=rf"--precision {old} is an old spelling; say --precision {new}"):
        assert vocabulary.spelled(old, kind) == new
    assert f"say --precision {new}" in caplog.text
    with pytest.warns(DeprecationWarning):
        policy = resolve(old, kind, "openvino" if kind != TRAINING else "keras")
    assert policy.requested == new


def test_old_spellings_in_a_config_warn_and_keep_the_new_value(caplog) -> None:
    with caplog.at_level(logging.WARNING), pytest.warns(DeprecationWarning):
        unet = data_stages.UnetTrainConfig(data=".", precision="mixed")
    assert unet.precision == "auto" and "say --precision auto" in caplog.text
    with pytest.warns(DeprecationWarning):
        crop = data_stages.CropConfig(input=".", output="/tmp/o", precision="float32")
    assert crop.precision == "fp32"


def test_bfloat16_means_bf16_in_training_too(machine) -> None:
    """Regression: training read ``--precision bfloat16`` as ``mixed``, which is mixed_float16 on a
    GPU: a user asking for bfloat16 trained in float16."""
    machine(bf16=False, gpu=True)
    with pytest.warns(DeprecationWarning):
        config = training_stages.TrainConfig(model="ResNet-50", size=224, path=".", output="o", precision="bfloat16")
    assert config.precision == "bf16"
    assert for_training(config.precision).keras_dtype_policy == "mixed_bfloat16"


def test_a_resolved_policy_passes_through_and_gives_the_unets(machine) -> None:
    machine(bf16=True)
    members = for_engine("int8", "openvino")
    assert resolve(members, ENGINE, "openvino") is members
    assert for_unet(members, "openvino") == members.unet()
    assert for_unet(members, "openvino").engine_precision == "bf16"
    with pytest.raises(ValueError, match="resolved for engine openvino used on onnxruntime"):
        for_engine(members, "onnxruntime")
    assert str(members) == "int8" and str(for_engine("auto", "openvino")) == "bf16 (auto)"
    assert isinstance(members, Policy)
    with pytest.raises(AttributeError):
        members.name = "fp32"  # frozen: read, never changed


# ---- what reads the policy ---------------------------------------------------------------------


def test_training_sets_the_policys_keras_dtype(machine) -> None:
    import keras

    from deepcovidxr.training.schedule import set_precision

    machine(bf16=False, gpu=False)
    try:
        assert set_precision("bf16") == "mixed_bfloat16" == keras.mixed_precision.dtype_policy().name
        assert set_precision(for_training("auto")) == "float32" == keras.mixed_precision.dtype_policy().name
    finally:
        set_precision("fp32")


def test_the_run_record_keeps_its_mixed_precision_bool(machine) -> None:
    machine(bf16=True)
    assert for_training("auto").mixed is True and for_training("fp32").mixed is False


def _probe(engine: str, policy, tmp_path: Path):
    """The cache entry ``policy`` would run, without building it."""
    from deepcovidxr.runtime import exports, load

    model = tmp_path / "model.h5"
    model.write_bytes(b"weights")
    source = exports.Source("model", model, "0" * 64, load=lambda: None)
    calibration = np.zeros((2, 32, 32, 3), np.float32)
    stats = {"probe": True}
    entry = load._entry(source, tmp_path, for_engine(policy, engine), calibration, None, stats)
    assert stats["missing"]
    return entry


def test_the_engine_cache_key_follows_the_policy(machine, tmp_path: Path) -> None:
    """int8 is its own export; fp32 and bf16 share the fp32 artifact (bf16 is OpenVINO's compile
    hint on it): the key's precision is the policy's cache_key."""
    machine(bf16=True)
    fp32, bf16, int8 = (_probe("openvino", p, tmp_path) for p in ("fp32", "bf16", "int8"))
    assert fp32.key == bf16.key and fp32.key["precision"] == "fp32"
    assert int8.key["precision"] == "int8" and int8.digest != fp32.digest and int8.base != fp32.base
    onnx = _probe("onnxruntime", "fp32", tmp_path)
    onnx_int8 = _probe("onnxruntime", "int8", tmp_path)
    assert onnx.key["precision"] == "fp32" and onnx_int8.key["precision"] == "int8" and onnx.base != onnx_int8.base


def test_engines_refuse_what_they_cannot_run(machine) -> None:
    from deepcovidxr.runtime.load import check_engine

    machine(bf16=True)
    with pytest.raises(UsageError, match="engine keras runs fp32 only"):
        check_engine("keras", for_engine("bf16", "keras"))
    with pytest.raises(UsageError, match="no bf16 convolution kernels"):
        check_engine("onnxruntime", "bf16")
    assert check_engine("keras", "auto") == for_engine("auto", "keras")  # resolved once, returned


def test_the_unet_reads_the_policy(machine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The U-Net follows the members' policy on an engine, and reads its Keras dtype from it. Old
    spellings reach the engine path too (``bfloat16`` was an unknown precision there)."""
    from deepcovidxr.lungs import cropper

    machine(bf16=True)
    seen: list[Policy] = []

    def open_model(path, load, engine, policy, folder, extra, name):
        seen.append(for_unet(policy, engine))
        return None

    monkeypatch.setattr("deepcovidxr.runtime.load.open_model", open_model)
    cropper.LungCropper(engine="openvino", precision=for_engine("int8", "openvino"), cache_dir=tmp_path)
    with pytest.warns(DeprecationWarning):
        cropper.LungCropper(engine="openvino", precision="bfloat16", cache_dir=tmp_path)
    cropper.LungCropper(engine="onnxruntime", precision=for_engine("auto", "onnxruntime"), cache_dir=tmp_path)
    assert [(p.engine, p.engine_precision) for p in seen] == [
        ("openvino", "bf16"),
        ("openvino", "bf16"),
        ("onnxruntime", "fp32"),
    ]

    loaded: list[str] = []

    def load_unet(path, dtype, fold):
        loaded.append(dtype)
        return None, {"inference_dtype": dtype}

    monkeypatch.setattr("deepcovidxr.lungs.unet.load_unet", load_unet)
    cropper.LungCropper(precision=for_engine("fp32", "keras"))
    cropper.LungCropper(precision="auto")
    assert loaded == ["float32", "mixed_bfloat16"]
