"""The engines (deepcovidxr.runtime: load, runners, exports, cache, int8): one member on Keras /
ONNX Runtime / OpenVINO at fp32, bf16 and int8, and the export cache beside the members. One tiny
random-weight ResNet-50 (32 px)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.contract.layout import CropMode, Member
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import cache, convert, digest, exports, hardware, load
from tests.stages.test_export import real_batch

SIZE = 32
PARITY = 1e-4
# int8 vs fp32 score differences measured on this member and these images: ONNX Runtime ~3e-3,
# OpenVINO/NNCF ~1e-3 (scores of a random-weight member sit near 0.5, sigmoid slope 1/4).
INT8_TOLERANCE = 2e-2
BF16_TOLERANCE = 2e-2
MEMBER = Member("ResNet-50", SIZE, CropMode.UNCROP)


def _save(path: Path, seed: int) -> Path:
    import keras

    from deepcovidxr.networks.members import build_member, save_member

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
    return load.open_member(MEMBER, member_file, "keras").predict(images)


@pytest.fixture(scope="module")
def built(member_file: Path) -> dict:
    """The first ONNX Runtime open: builds the ONNX export into <members>/.engine_cache."""
    runner = load.open_member(MEMBER, member_file, "onnxruntime")
    return {"runner": runner, "stats": dict(runner.stats)}


def test_onnxruntime_fp32_matches_keras_and_takes_any_batch(built, images, keras_scores, member_file) -> None:
    runner = built["runner"]
    assert built["stats"]["built"] and (member_file.parent / cache.CACHE_FOLDER).is_dir()
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

    monkeypatch.setattr(convert, "to_onnx", no_export)
    monkeypatch.setattr(exports, "load_keras", no_export)
    runner = load.open_member(MEMBER, member_file, "onnxruntime")
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
    monkeypatch.setattr(convert, "to_onnx", spy)
    monkeypatch.setattr(exports, "load_keras", lambda member, member_path: None)
    return Path(path), spy


def _entries(folder: Path) -> list[str]:
    # Entries only: the hidden per-entry lock files stay (removing a lock file another process may
    # hold would let a third take a second lock on a new file).
    return sorted(p.name for p in (folder / cache.CACHE_FOLDER).iterdir() if not p.name.startswith("."))


def test_changed_member_file_rebuilds(spied) -> None:
    path, spy = spied
    load.open_member(MEMBER, path, "onnxruntime")
    load.open_member(MEMBER, path, "onnxruntime")
    assert spy.calls == 1
    before = _entries(path.parent)
    _save(path, seed=1)  # retrained: new weights, new sha256
    load.open_member(MEMBER, path, "onnxruntime")
    assert spy.calls == 2
    after = _entries(path.parent)
    assert len(after) == len(before) == 2 and not set(after) & set(before)  # the stale entry is gone


@pytest.mark.parametrize("damage", ["manifest missing", "file truncated", "file corrupted", "key differs"])
def test_partial_or_mismatched_cache_is_rebuilt(spied, damage: str) -> None:
    path, spy = spied
    runner = load.open_member(MEMBER, path, "onnxruntime")
    artifact = runner.path
    manifest = artifact.with_name(artifact.name.removesuffix(".onnx") + cache.MANIFEST_SUFFIX)
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
    rebuilt = load.open_member(MEMBER, path, "onnxruntime")
    assert spy.calls == 2 and rebuilt.stats["built"]
    assert rebuilt.path == artifact  # same key, same name, rebuilt in place
    assert json.loads(manifest.read_text(encoding="utf-8"))["artifacts"][".onnx"]["sha256"] == digest.file_sha256(
        artifact
    )


def test_new_converter_version_does_not_reuse_the_cache(spied, monkeypatch: pytest.MonkeyPatch) -> None:
    path, spy = spied
    first = load.open_member(MEMBER, path, "onnxruntime").path
    real = digest.package_version
    monkeypatch.setattr(digest, "package_version", lambda name: "99.0" if name == "tf2onnx" else real(name))
    second = load.open_member(MEMBER, path, "onnxruntime").path
    assert spy.calls == 2 and second != first and not first.exists()


@pytest.mark.parametrize(("engine", "module"), [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_missing_runtime_is_a_usage_error(engine, module, spied, monkeypatch: pytest.MonkeyPatch) -> None:
    path, spy = spied
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(UsageError, match=rf"pip install {module}.*or use (openvino|onnxruntime)"):
        load.open_member(MEMBER, path, engine)
    assert spy.calls == 0  # refused before any export, and no silent fallback


def test_precision_errors_name_the_alternative(member_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="use engine openvino"):
        load.open_member(MEMBER, member_file, "onnxruntime", "bf16")
    with pytest.raises(UsageError, match="openvino"):
        load.open_member(MEMBER, member_file, "keras", "bf16")
    with pytest.raises(UsageError, match="calibration images"):
        load.open_member(MEMBER, member_file, "onnxruntime", "int8")
    with pytest.raises(UsageError, match="unknown engine"):
        load.open_member(MEMBER, member_file, "tensorrt")
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda core=None: False)
    with pytest.raises(UsageError, match=r"avx512_bf16 or AMX.*use precision fp32"):
        load.open_member(MEMBER, member_file, "openvino", "bf16")


def test_openvino_fp32_matches_keras(built, member_file, images, keras_scores) -> None:
    runner = load.open_member(MEMBER, member_file, "openvino")
    assert runner.stats["inference_precision"] == "f32"
    scores = runner.predict(images)
    assert np.max(np.abs(scores - keras_scores)) <= PARITY
    assert np.allclose(runner.predict(images[:2]), scores[:2], atol=1e-6, rtol=0)


def test_openvino_bf16_runs_close(built, member_file, images, keras_scores) -> None:
    if not hardware.cpu_supports_bf16():
        with pytest.raises(UsageError, match="avx512_bf16"):
            load.open_member(MEMBER, member_file, "openvino", "bf16")
        return
    runner = load.open_member(MEMBER, member_file, "openvino", "bf16")
    assert runner.stats["inference_precision"] == "bf16"
    assert "built" not in runner.stats  # bf16 is a compile hint on the fp32 IR: nothing new exported
    difference = float(np.max(np.abs(runner.predict(images) - keras_scores)))
    print(f"OpenVINO bf16 max |diff| vs Keras fp32: {difference:.2e}")
    assert difference <= BF16_TOLERANCE


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_int8_runs_close(engine, built, member_file, images, calibration, keras_scores) -> None:
    runner = load.open_member(MEMBER, member_file, engine, "int8", calibration=calibration)
    scores = runner.predict(images)
    difference = float(np.max(np.abs(scores - keras_scores)))
    print(f"{engine} int8 max |diff| vs Keras fp32: {difference:.2e}")
    assert scores.shape == (len(images),) and difference <= INT8_TOLERANCE
    if engine == "onnxruntime":  # (one engine is enough: the key is built the same way for both)
        # Other calibration images are another key: a new quantised model, never the old one.
        other = load.open_member(MEMBER, member_file, engine, "int8", calibration=calibration[:8])
        assert other.stats["built"] and other.path != runner.path


# A process that opens a member whose export is not cached yet: the conversion takes a while and
# its file appears at its end (written atomically), then the manifest is written. Two such
# processes started 0.5 s apart once unlinked each other's files (issue 19).
_RACER = """
import json, shutil, sys, time
from pathlib import Path
from deepcovidxr.runtime import convert, exports, load
from deepcovidxr.contract.layout import CropMode, Member

member_path, source, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

def slow_export(model, destination):
    time.sleep(1.0)
    shutil.copyfile(source, destination)
    time.sleep(1.0)
    return destination

convert.to_onnx = slow_export
exports.load_keras = lambda member, path: None
exports.ISOLATE_EXPORTS = False
time.sleep(delay)
runner = load.open_member(Member("ResNet-50", 32, CropMode.UNCROP), member_path, "onnxruntime")
sys.stdout.write(json.dumps({"path": str(runner.path), "built": bool(runner.stats.get("built"))}) + "\\n")
"""


def test_two_processes_building_one_entry_at_once_both_succeed(
    built, member_file: Path, images, keras_scores, tmp_path: Path
) -> None:
    import os
    import subprocess

    folder = tmp_path / "members"
    folder.mkdir()
    path = Path(shutil.copy(member_file, folder / member_file.name))
    script = tmp_path / "racer.py"
    script.write_text(_RACER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(built["runner"].path), str(delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
        )
        for delay in (0.0, 1.5)
    ]
    outcomes = [racer.communicate(timeout=300) for racer in racers]
    for racer, (_, stderr) in zip(racers, outcomes, strict=True):
        assert racer.returncode == 0, stderr[-2000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outcomes]
    assert results[0]["path"] == results[1]["path"]
    assert [r["built"] for r in results] == [True, False]  # the second waited for the first's entry
    runner = load.open_member(MEMBER, path, "onnxruntime")
    assert "built" not in runner.stats  # the entry both left is valid
    assert np.max(np.abs(runner.predict(images) - keras_scores)) <= PARITY


def test_read_only_members_folder_caches_in_the_user_cache(
    spied, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, spy = spied
    members = path.parent
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DEEPCOVIDXR_CACHE", raising=False)
    # A shared server's read-only folder. Tests run as root, which writes through mode bits, so the
    # writability probe is told what a user would find.
    members.chmod(0o555)
    monkeypatch.setattr(cache, "_writable", lambda folder: not Path(folder).is_relative_to(members), raising=False)
    try:
        with caplog.at_level("INFO", logger="deepcovidxr.runtime.cache"):
            runner = load.open_member(MEMBER, path, "onnxruntime")
    finally:
        members.chmod(0o755)
    assert runner.path.is_relative_to(tmp_path / "xdg" / "deepcovidxr") and spy.calls == 1
    assert not (members / cache.CACHE_FOLDER).exists()
    assert "not writable" in caplog.text and str(tmp_path / "xdg") in caplog.text


def test_openvino_converts_without_an_onnx_step(member_file: Path, images, keras_scores, tmp_path: Path) -> None:
    """The IR comes straight from the traced TensorFlow function (in an export worker process): no
    ONNX file is made on the way, which is where the memory went (issue 19)."""
    folder = tmp_path / "members"
    folder.mkdir()
    path = Path(shutil.copy(member_file, folder / member_file.name))
    runner = load.open_member(MEMBER, path, "openvino")
    assert runner.stats["built"] == [runner.path.name] and runner.path.suffix == ".xml"
    assert not list((folder / cache.CACHE_FOLDER).glob("*.onnx"))
    assert np.max(np.abs(runner.predict(images) - keras_scores)) <= PARITY


# Keras' model.export(format="onnx") peaked at 5.9 GB for this ResNet-50 at 32 px (94 MB of weights):
# grappler over a frozen copy of the graph, then tf2onnx's 24 optimiser passes each leaving one more
# copy of every weight in protobuf arenas. Measured with the fix: 1.5 GB.
EXPORT_PEAK_GB = 2.5

_EXPORT_ONLY = """
import sys
from pathlib import Path
import keras
from deepcovidxr.runtime import convert
from deepcovidxr.networks.members import build_member
keras.utils.set_random_seed(0)
convert.to_onnx(build_member("ResNet-50", 32, weights=None), Path(sys.argv[1]))
"""


# A small launcher between the test worker and the export: a child's ru_maxrss counts the address
# space it was forked from (Linux keeps the old mm's high-water mark across exec), so measured from
# a pytest worker that had loaded other tests' models it read 3.1 GB for a 1.5 GB export.
_PEAK_OF_CHILD = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_onnx_export_peak_memory(tmp_path: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = tmp_path / "stderr.txt"
    export = [sys.executable, "-c", _EXPORT_ONLY, str(tmp_path / "m.onnx")]
    with log.open("w", encoding="utf-8") as errors:
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_OF_CHILD, *export], stdout=subprocess.PIPE, stderr=errors, env=env, check=False
        )
    assert done.returncode == 0, log.read_text(encoding="utf-8")[-2000:]
    peak_gb = int(done.stdout.split()[-1]) / 1024**2  # the export's own peak RSS, as /usr/bin/time -v reports it
    print(f"ONNX export of ResNet-50 at 32 px: peak RSS {peak_gb:.2f} GB")
    assert (tmp_path / "m.onnx").is_file() and peak_gb < EXPORT_PEAK_GB


def test_export_missing_builds_a_cold_cache_once(spied) -> None:
    """What a stage calls before scoring: every missing export built (with a progress bar), then
    nothing on a warm cache; Keras needs none."""
    path, spy = spied
    assert load.export_missing([(MEMBER, path)], "onnxruntime", "fp32") == [MEMBER.short_name]
    assert spy.calls == 1
    assert load.export_missing([(MEMBER, path)], "onnxruntime", "fp32") == []
    assert load.export_missing([(MEMBER, path)], "keras", "fp32") == []
    assert spy.calls == 1 and "built" not in load.open_member(MEMBER, path, "onnxruntime").stats


def test_worker_exports_run_in_parallel_within_the_memory_budget(monkeypatch) -> None:
    """A cold cache exports two members at once (one worker process each), but never two whose
    estimated peaks exceed the budget together; a failure is raised once the others stopped."""
    import threading
    import time

    lock = threading.Lock()
    running: list[str] = []
    seen: list[list[str]] = []

    def job(name: str) -> None:
        with lock:
            running.append(name)
            seen.append(sorted(running))
        time.sleep(0.05)
        with lock:
            running.remove(name)

    sizes = {"big1": 3.0, "big2": 3.0, "small1": 1.0, "small2": 1.0}
    exports.within_budget([(name, size) for name, size in sizes.items()], job, 4.0)
    assert {name for group in seen for name in group} == set(sizes)
    assert any(len(group) == 2 for group in seen)  # parallel
    assert all(sum(sizes[n] for n in group) <= 4.0 for group in seen)  # within the budget
    seen.clear()
    exports.within_budget([(name, size) for name, size in sizes.items()], job, 0.5)
    assert all(len(group) == 1 for group in seen) and len(seen) == 4  # a job alone always starts

    def failing(name: str) -> None:
        if name == "small1":
            raise RuntimeError("export of small1 failed")

    with pytest.raises(RuntimeError, match="small1"):
        exports.within_budget([(name, size) for name, size in sizes.items()], failing, 4.0)
