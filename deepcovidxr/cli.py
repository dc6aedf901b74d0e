"""Command-line plumbing shared by every stage script: logging, the exit-code contract, the one
call a script makes (:func:`main`) and the installed ``deepcovidxr STAGE`` command."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from deepcovidxr import DISCLAIMER
from deepcovidxr.errors import DeepcovidxrError

if TYPE_CHECKING:
    from deepcovidxr.stages.common import StageResult


def configure_logging(verbose: int = 0) -> None:
    """Log to stderr (stdout is for results); quiet TensorFlow's C++ start-up chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Under an ASCII locale a file name with an accent in a log line or a result would raise
    # UnicodeEncodeError and stop the batch; escape what the terminal cannot show instead.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # absl repeats Keras' advice against the HDF5 files the member contract requires.
    logging.getLogger("absl").setLevel(logging.ERROR)
    # TensorFlow counts traces across every member's own inference function and calls one trace
    # per member "excessive retracing"; each member is traced exactly once.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Keras warns that fit's default shuffle does not apply to tf.data, which we shuffle ourselves.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    # pydicom logs a traceback per failed decoder plugin; the stage reports the failure itself.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def run_stage(stage: Callable[[], StageResult], verbose: int = 0) -> int:
    """Run a stage; print its result's ``report`` (its main output path) to stdout and map it to
    an exit code: 0 done, 1 some input files failed (each reported) or an unexpected error (its
    traceback shown at ``-v``), 2 a usage or input problem the user can mend (one clear line)."""
    log = logging.getLogger("deepcovidxr")
    try:
        result = stage()
    except DeepcovidxrError as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished files are kept and a rerun resumes")
        return 130
    except Exception as error:
        if verbose:
            log.exception("unexpected error")
        else:
            log.error("unexpected error: %s: %s (rerun with -v for the traceback)", type(error).__name__, error)
        return 1
    print(result.report)
    return result.exit_code


def main(stem: str, argv: list[str] | None = None) -> int:
    """Everything a stage script does: parse its flags (and ``--config``) into its config, set up
    logging, record the run in ``run_config.json`` and run the stage."""
    from deepcovidxr import stages
    from deepcovidxr.config.run_record import dump_run
    from deepcovidxr.config.schema import resolve

    stage = stages.get(stem)
    try:
        config, verbose = resolve(stage.config_class, stem, argv, stages.STAGES)
    except SystemExit as done:  # --help, or a usage error argparse has already explained
        return int(done.code or 0)
    configure_logging(verbose)

    def run() -> StageResult:
        dump_run(config, stem)
        return stage.run_function()(config)

    return run_stage(run, verbose)


def dispatch(argv: list[str] | None = None) -> int:
    """``deepcovidxr STAGE [flags]`` (and ``python -m deepcovidxr``): any stage by its script's
    stem (``deepcovidxr crop_img``) or its short alias (``deepcovidxr crop``)."""
    from deepcovidxr import stages

    argv = list(sys.argv[1:] if argv is None else argv)
    names = stages.names()
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in names:
        listing = "\n".join(
            f"  {s.stem:<15} (or {s.alias})" if s.alias else f"  {s.stem}" for s in stages.STAGES.values()
        )
        print(f"usage: deepcovidxr STAGE [flags]   (deepcovidxr STAGE --help)\n\nstages:\n{listing}\n\n{DISCLAIMER}")
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    return main(names[argv[0]], argv[1:])
