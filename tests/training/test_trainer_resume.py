"""Training resume (issue 19): a phase is done only when its completion record says so, and the
record must match the run's hyperparameters and data; a finished member is skipped only when its
record matches too, in both loops (Keras fit and the multi-worker loop).

Runs are in-process (Keras fit compiled without XLA: the compile dominates these tiny runs) and an
interruption is an exception raised at the end of a chosen epoch of a chosen ``fit`` call, after
every callback of the run (checkpoint included) has run, as a kill at that moment would leave it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from tests.support.helpers import make_phantom_tree
from tests.training.test_schedule import _train as train_subprocess

STEM = "ResNet50_32_up_uncrop"


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(autouse=True)
def fit_without_xla(monkeypatch: pytest.MonkeyPatch):
    import keras

    real_compile = keras.Model.compile
    monkeypatch.setattr(
        keras.Model, "compile", lambda self, *a, **k: real_compile(self, *a, **{**k, "jit_compile": False})
    )
    yield
    keras.backend.clear_session()


def _kill_at(monkeypatch: pytest.MonkeyPatch, fit_call: int, epoch: int) -> None:
    """Fit call ``fit_call`` (1 = phase 1) ends with :class:`Killed` after epoch ``epoch`` (from 1)."""
    import keras

    real_fit = keras.Model.fit
    calls = []

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index + 1 == epoch:
                raise Killed

    def fit(self, *args, callbacks=None, **kwargs):
        calls.append(1)
        if len(calls) == fit_call:
            callbacks = [*(callbacks or []), Kill()]
        return real_fit(self, *args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)


def _train(view: Path, output: Path, **options) -> Path:
    import keras

    from deepcovidxr.config.training_stages import TrainConfig
    from deepcovidxr.training.trainer import train_member

    keras.backend.clear_session()
    settings = {"model": "ResNet-50", "size": 32, "path": view, "output": output, "batch_size": 4, **options}
    return train_member(TrainConfig(**settings))


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 12 Train images: whole batches of 4 (a batch of 2 made a random backbone's phase 2 diverge)
    return make_phantom_tree(tmp_path_factory.mktemp("tree"), 20, 32, seed=5)


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A member file of random weights as -w: a file of initial weights makes the run two-phase
    (from none it is the fine-tuning phase alone)."""
    import keras

    from deepcovidxr.networks.members import build_member, save_member

    path = tmp_path_factory.mktemp("weights") / "start.h5"
    keras.utils.set_random_seed(0)
    save_member(build_member("ResNet-50", 32, weights=None), path)
    keras.backend.clear_session()
    return str(path)


def _config_json(output: Path) -> dict:
    return json.loads((output / f"{STEM}_config.json").read_text(encoding="utf-8"))


def test_a_run_killed_in_phase_one_resumes_phase_one(
    view: Path, initial_weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed after epoch 1 of 2 of phase 1 (an improving epoch: its checkpoint is on disk). The
    rerun goes on with phase 1 at epoch 2; it does not take the checkpoint for a finished phase."""
    options = {"epochs": 2, "weights": initial_weights, "learning_rate": 1e-5}
    with monkeypatch.context() as patch:
        _kill_at(patch, fit_call=1, epoch=1)
        with pytest.raises(Killed):
            _train(view, tmp_path, **options)
    assert (tmp_path / "save_weights_initial" / f"{STEM}.h5").is_file()  # what today's code took for "done"
    assert not (tmp_path / f"{STEM}.h5").exists()
    with caplog.at_level(logging.INFO):
        _train(view, tmp_path, **options)
    assert "phase 1 already done" not in caplog.text
    assert "resuming phase initial at epoch 2" in caplog.text
    history = _config_json(tmp_path)["history"]
    assert len(history["initial"]["val_loss"]) == 2  # epoch 1 before the kill, epoch 2 after
    assert len(history["final"]["val_loss"]) == 2
    record = json.loads((tmp_path / "save_weights_initial" / f"{STEM}_done.json").read_text(encoding="utf-8"))
    assert record["phase"] == "initial" and record["settings"]["epochs"] == 2


def test_a_checkpoint_of_other_hyperparameters_is_not_used(
    view: Path, initial_weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed in phase 2 after an improving epoch at one learning rate, then rerun at a learning
    rate that diverges. Today the stale phase-1 checkpoint counted as done and the stale phase-2
    checkpoint was copied in as the member; now both phases are redone, the divergence is
    reported and no member file is written."""
    from deepcovidxr.errors import UsageError

    with monkeypatch.context() as patch:
        _kill_at(patch, fit_call=2, epoch=1)
        with pytest.raises(Killed):
            _train(view, tmp_path, epochs=1, weights=initial_weights, learning_rate=1e-5)
    assert (tmp_path / "save_weights_final" / f"{STEM}.h5").is_file()
    with caplog.at_level(logging.INFO), pytest.raises(UsageError, match="diverged"):
        _train(view, tmp_path, epochs=1, weights=initial_weights, learning_rate=1e12)
    assert "phase 1 already done" not in caplog.text
    assert "learning_rate" in caplog.text and "ignored" in caplog.text  # the stale record, named
    assert not (tmp_path / f"{STEM}.h5").exists()


def _add_validation_image(view: Path) -> None:
    source = sorted((view / "Validation" / "Positive").glob("*.png"))[0]
    shutil.copyfile(source, source.with_name("zz_added.png"))


def test_a_finished_member_is_skipped_only_for_the_same_data(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    view = make_phantom_tree(tmp_path_factory.mktemp("own"), 20, 32, seed=6)
    final = _train(view, tmp_path, epochs=1, weights="none")
    os.utime(final, (1_000_000_000, 1_000_000_000))
    with caplog.at_level(logging.INFO):
        _train(view, tmp_path, epochs=1, weights="none")
    assert "record matches; skipping" in caplog.text and final.stat().st_mtime == 1_000_000_000
    caplog.clear()
    _add_validation_image(view)  # the member was trained on other data now
    with caplog.at_level(logging.INFO):
        _train(view, tmp_path, epochs=1, weights="none")
    assert "record matches; skipping" not in caplog.text and final.stat().st_mtime != 1_000_000_000
    assert "other data" in caplog.text


def test_the_multi_worker_loop_retrains_a_member_of_other_data(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The same record and rule in the multi-worker loop: a member fit trained is finished for it
    too while the data are the same, and is retrained once they are not."""
    view = make_phantom_tree(tmp_path_factory.mktemp("own"), 20, 32, seed=7)
    final = _train(view, tmp_path, epochs=1, weights="none")
    os.utime(final, (1_000_000_000, 1_000_000_000))
    _add_validation_image(view)
    done = train_subprocess(view, tmp_path, "-w", "none", multi_worker=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "other data" in done.stderr and "record matches; skipping" not in done.stderr
    assert final.stat().st_mtime != 1_000_000_000


def test_a_member_file_no_record_describes_is_refused(view: Path, tmp_path: Path) -> None:
    """A member file without a completion record (another tool's, the authors', an older run's)
    is neither taken as finished nor overwritten: a UsageError naming --overwrite, the file kept."""
    from deepcovidxr.errors import UsageError

    final = tmp_path / f"{STEM}.h5"
    final.write_bytes(b"someone's member")
    with pytest.raises(UsageError, match="--overwrite"):
        _train(view, tmp_path, epochs=1, weights="none")
    assert final.read_bytes() == b"someone's member"
