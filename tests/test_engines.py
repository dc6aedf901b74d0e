"""deepcovidxr.engines: one member on Keras / ONNX Runtime / OpenVINO at fp32, bf16 and int8,
and the export cache beside the members. One tiny random-weight ResNet-50 (32 px)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export import real_batch

from deepcovidxr import engines
from deepcovidxr.errors import UsageError
from deepcovidxr.layout import CropMode, Member

SIZE = 32
PARITY = 1e-4
# int8 vs fp32 score differences measured on this member and these images: ONNX Runtime ~3e-3,
# OpenVINO/NNCF ~1e-3 (scores of a random-weight member sit near 0.5, sigmoid slope 1/4).
INT8_TOLERANCE = 2e-2
BF16_TOLERANCE = 2e-2
MEMBER = Member("ResNet-50", SIZE, CropMode.UNCROP)


def _save(path: Path, seed: int) -> Path:
    import keras

    from deepcovidxr.models import build_member, save_member

    keras.utils.set_random_seed(seed)
    return save_member(build_member(MEMBER.backbone, SIZE, weights=None), path, MEMBER)


@pytest.fixture(scope="module")
def member_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("members") / MEMBER.legacy_filename, seed=0)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return real_batch(SIZE, count=6)


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    """Other images than the ones scored: calibrating on the predicted images would leak them."""
    return real_batch(SIZE, count=16, offset=10)


@pytest.fixture(scope="module")
def keras_scores(member_file: Path, images: np.ndarray) -> np.ndarray:
    return engines.open_member(MEMBER, member_file, "keras").predict(images)


@pytest.fixture(scope="module")
def built(member_file: Path) -> dict:
    """The first ONNX Runtime open: builds the ONNX export into <members>/.engine_cache."""
    runner = engines.open_member(MEMBER, member_file, "onnxruntime")
    return {"runner": runner, "stats": dict(runner.stats)}


def test_onnxruntime_fp32_matches_keras_and_takes_any_batch(built, images, keras_scores, member_file) -> None:
    runner = built["runner"]
    assert built["stats"]["built"] and (member_file.parent / engines.CACHE_FOLDER).is_dir()
    scores = runner.predict(images)
    assert scores.shape == (len(images),) and scores.dtype == np.float32
    assert np.max(np.abs(scores - keras_scores)) <= PARITY
    # A short last batch runs as it is (variable batch dimension), with the same scores.
    assert np.allclose(runner.predict(images[:1]), scores[:1], atol=1e-6, rtol=0)
    assert runner.predict(images[:0]).shape == (0,)
    with pytest.raises(UsageError, match=r"\(n, 32, 32, 3\)"):
        runner.predict(images[..., 0])


def test_second_open_uses_the_cache(built, images, member_file, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(engines, "to_onnx", no_export)
    monkeypatch.setattr(engines, "_load_keras", no_export)
    runner = engines.open_member(MEMBER, member_file, "onnxruntime")
    assert "built" not in runner.stats
    assert np.array_equal(runner.predict(images), built["runner"].predict(images))


class ExportSpy:
    """Stands in for the tf2onnx conversion (the real one is tested above): copies a known-good
    ONNX file and counts the calls, so the cache rules are tested in seconds."""

    def __init__(self, source: Path) -> None:
        self.source, self.calls = source, 0

    def __call__(self, model, destination: Path) -> Path:
        self.calls += 1
        shutil.copyfile(self.source, destination)
        return destination


@pytest.fixture
def spied(built, member_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of the member, a private cache and the export spy."""
    folder = tmp_path / "members"
    folder.mkdir()
    path = shutil.copy(member_file, folder / member_file.name)
    spy = ExportSpy(built["runner"].path)
    monkeypatch.setattr(engines, "to_onnx", spy)
    monkeypatch.setattr(engines, "_load_keras", lambda member, member_path: None)
    return Path(path), spy


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / engines.CACHE_FOLDER).iterdir())


def test_changed_member_file_rebuilds(spied) -> None:
    path, spy = spied
    engines.open_member(MEMBER, path, "onnxruntime")
    engines.open_member(MEMBER, path, "onnxruntime")
    assert spy.calls == 1
    before = _entries(path.parent)
    _save(path, seed=1)  # retrained: new weights, new sha256
    engines.open_member(MEMBER, path, "onnxruntime")
    assert spy.calls == 2
    after = _entries(path.parent)
    assert len(after) == len(before) == 2 and not set(after) & set(before)  # the stale entry is gone


@pytest.mark.parametrize("damage", ["manifest missing", "file truncated", "file corrupted", "key differs"])
def test_partial_or_mismatched_cache_is_rebuilt(spied, damage: str) -> None:
    path, spy = spied
    runner = engines.open_member(MEMBER, path, "onnxruntime")
    artifact = runner.path
    manifest = artifact.with_name(artifact.name.removesuffix(".onnx") + engines.MANIFEST_SUFFIX)
    if damage == "manifest missing":  # an export interrupted before its manifest
        manifest.unlink()
    elif damage == "file truncated":
        artifact.write_bytes(artifact.read_bytes()[:1000])
    elif damage == "file corrupted":  # same size, other bytes
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    else:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        recorded["key"]["versions"]["onnx"] = "0.0"
        manifest.write_text(json.dumps(recorded), encoding="utf-8")
    rebuilt = engines.open_member(MEMBER, path, "onnxruntime")
    assert spy.calls == 2 and rebuilt.stats["built"]
    assert rebuilt.path == artifact  # same key, same name, rebuilt in place
    assert json.loads(manifest.read_text(encoding="utf-8"))["artifacts"][".onnx"]["sha256"] == engines.file_sha256(
        artifact
    )


def test_new_converter_version_does_not_reuse_the_cache(spied, monkeypatch: pytest.MonkeyPatch) -> None:
    path, spy = spied
    first = engines.open_member(MEMBER, path, "onnxruntime").path
    real = engines.package_version
    monkeypatch.setattr(engines, "package_version", lambda name: "99.0" if name == "tf2onnx" else real(name))
    second = engines.open_member(MEMBER, path, "onnxruntime").path
    assert spy.calls == 2 and second != first and not first.exists()


@pytest.mark.parametrize(("engine", "module"), [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_missing_runtime_is_a_usage_error(engine, module, spied, monkeypatch: pytest.MonkeyPatch) -> None:
    path, spy = spied
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(UsageError, match=rf"pip install {module}.*or use (openvino|onnxruntime)"):
        engines.open_member(MEMBER, path, engine)
    assert spy.calls == 0  # refused before any export, and no silent fallback


def test_precision_errors_name_the_alternative(member_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="use engine openvino"):
        engines.open_member(MEMBER, member_file, "onnxruntime", "bf16")
    with pytest.raises(UsageError, match="openvino"):
        engines.open_member(MEMBER, member_file, "keras", "bf16")
    with pytest.raises(UsageError, match="calibration images"):
        engines.open_member(MEMBER, member_file, "onnxruntime", "int8")
    with pytest.raises(UsageError, match="unknown engine"):
        engines.open_member(MEMBER, member_file, "tensorrt")
    monkeypatch.setattr(engines, "cpu_supports_bf16", lambda core=None: False)
    with pytest.raises(UsageError, match=r"avx512_bf16 or AMX.*use precision fp32"):
        engines.open_member(MEMBER, member_file, "openvino", "bf16")


def test_openvino_fp32_matches_keras(built, member_file, images, keras_scores) -> None:
    runner = engines.open_member(MEMBER, member_file, "openvino")
    assert runner.stats["inference_precision"] == "f32"
    scores = runner.predict(images)
    assert np.max(np.abs(scores - keras_scores)) <= PARITY
    assert np.allclose(runner.predict(images[:2]), scores[:2], atol=1e-6, rtol=0)


def test_openvino_bf16_runs_close(built, member_file, images, keras_scores) -> None:
    if not engines.cpu_supports_bf16():
        with pytest.raises(UsageError, match="avx512_bf16"):
            engines.open_member(MEMBER, member_file, "openvino", "bf16")
        return
    runner = engines.open_member(MEMBER, member_file, "openvino", "bf16")
    assert runner.stats["inference_precision"] == "bf16"
    assert "built" not in runner.stats  # bf16 is a compile hint on the fp32 IR: nothing new exported
    difference = float(np.max(np.abs(runner.predict(images) - keras_scores)))
    print(f"OpenVINO bf16 max |diff| vs Keras fp32: {difference:.2e}")
    assert difference <= BF16_TOLERANCE


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_int8_runs_close(engine, built, member_file, images, calibration, keras_scores) -> None:
    runner = engines.open_member(MEMBER, member_file, engine, "int8", calibration=calibration)
    scores = runner.predict(images)
    difference = float(np.max(np.abs(scores - keras_scores)))
    print(f"{engine} int8 max |diff| vs Keras fp32: {difference:.2e}")
    assert scores.shape == (len(images),) and difference <= INT8_TOLERANCE
    if engine == "onnxruntime":  # (one engine is enough: the key is built the same way for both)
        # Other calibration images are another key: a new quantised model, never the old one.
        other = engines.open_member(MEMBER, member_file, engine, "int8", calibration=calibration[:8])
        assert other.stats["built"] and other.path != runner.path
