"""Where each stage's runs write: a member's training run, the tuner, pretraining, evaluation,
the ensemble fit and prediction, and the names of the files they leave.

Only this module builds those paths; the dataset tree, the per-image output names and the members'
names are :mod:`deepcovidxr.contract.layout`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

from deepcovidxr.contract.layout import MEMBER_SUFFIX, TENSORBOARD, Member
from deepcovidxr.errors import UsageError

SCRATCH = ".scratch"  # a stage's working memmaps inside its output folder, removed when it ends
PHASES: tuple[str, ...] = ("initial", "final")  # the original's save_weights_initial/, save_weights_final/
HYPERPARAMETERS_JSON = "hyperparameters.json"
HYPERPARAMETERS_PICKLE = "hyperparameters.pickle"  # the original tuner's format
ENSEMBLE_WEIGHTS_PICKLE = "ensemble_weights.pickle"
ENSEMBLE_WEIGHTS_JSON = "ensemble_weights.json"
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_INFO = "predictions_info.json"
PREDICT_JOURNAL = ".predict_journal"  # predict.py: the crop and each member's scores, until the outputs are written
PREDICT_ROWS = ".predict_rows"  # predict.py --backend ray: finished rows, batch by batch, until the outputs are written
UNREADABLE_CSV = "unreadable.csv"  # evaluate.py, ensemble.py: tree files no view could read
REPORT_HTML = "report.html"  # evaluate.py and predict.py: the page a reader opens (report_page)
REFERRAL_PNG = "Referral_Curve.png"  # AUC/accuracy as the most uncertain images are referred
CALIBRATION_FIT_PNG = "Calibration_Fitted.png"  # reliability before/after the stored calibration
RESULTS_FOLDER = "Results"  # evaluate.py, as the original
ENSEMBLE_RESULTS_FOLDER = "Ensemble_Results"  # ensemble.py, as the original


def scratch_dir(output: Path) -> Path:
    return Path(output) / SCRATCH


def _run_file(suffix: str, doc: str | None = None) -> property:
    """A path property: the member run's own file ``<output>/<stem>_<suffix>``."""

    def path(self: RunPaths) -> Path:
        return Path(self.output) / f"{self.stem}_{suffix}"

    return property(path, doc=doc)


@dataclass(frozen=True)
class RunPaths:
    """Where one member's training run (train.py, train_all.py, multi-worker) writes."""

    output: Path
    member: Member

    @property
    def stem(self) -> str:
        return self.member.legacy_filename.removesuffix(MEMBER_SUFFIX)

    @property
    def final(self) -> Path:
        return Path(self.output) / self.member.legacy_filename

    @property
    def repeats_folder(self) -> Path:
        """``--repeats``: ``repeats/<stem>/`` holds one folder per seed and ``repeats.csv``."""
        return Path(self.output) / "repeats" / self.stem

    def repeat(self, seed: int) -> RunPaths:
        """Where run ``seed`` of a ``--repeats`` member writes (its own folder: runs never
        overwrite each other, and an interrupted best-of-N resumes run by run)."""
        return RunPaths(self.repeats_folder / f"seed_{seed}", self.member)

    def checkpoint(self, phase: str) -> Path:
        return Path(self.output) / f"save_weights_{phase}" / self.member.legacy_filename

    def phase_record(self, phase: str) -> Path:
        """Written when a phase ends, beside its checkpoint: the settings and data fingerprint it
        was trained with. Only this file marks a phase done (a checkpoint exists after the first
        improving epoch)."""
        return self.checkpoint(phase).with_name(f"{self.stem}_done.json")

    def resume_state(self, phase: str) -> Path:
        """An unfinished phase's last epoch (weights, optimizer, epoch, rule state, history), so
        a rerun goes on from there; removed when the phase ends."""
        return self.checkpoint(phase).with_name(f"{self.stem}_resume.npz")

    def plots(self, phase: str) -> Path:
        return Path(self.output) / f"save_plots_{phase}" / self.stem

    def history(self, phase: str) -> Path:
        return self.plots(phase) / "history.csv"

    member_record = _run_file(
        "done.json",
        "The finished member's record (settings, data fingerprint, the member file's digest), "
        "written just before the member file: a member file is skipped on a rerun only when this matches.",
    )
    log_csv = _run_file("log.csv")
    unreadable = _run_file(
        UNREADABLE_CSV, "The Train/Validation files training left out because they could not be read."
    )
    curves = _run_file("curves.png")
    config = _run_file("config.json")

    @property
    def tensorboard(self) -> Path:
        return Path(self.output) / TENSORBOARD / self.stem

    def worker_copy(self, copies: Path, index: int) -> Path:
        """A non-chief worker's throw-away copy of the final file (multi-worker training)."""
        return Path(copies) / f"worker_{index}" / self.member.legacy_filename


@dataclass(frozen=True)
class TunerPaths:
    """tuner.py's outputs for one member, as the original: ``<out>/tuner/initial_cps/<file>``
    (warm-up), ``<out>/tuner/<stem>/`` (keras-tuner's project: a rerun resumes) and
    ``<out>/tuner/best_models_and_params/<stem>/...``. train.py reads the same paths back."""

    output: Path
    member: Member

    @property
    def root(self) -> Path:
        return Path(self.output) / "tuner"

    @property
    def project(self) -> str:
        """keras-tuner's project name (its folder under :attr:`root`)."""
        return self.member.legacy_filename.removesuffix(MEMBER_SUFFIX)

    @property
    def warmup(self) -> Path:
        return self.root / "initial_cps" / self.member.legacy_filename

    @property
    def best(self) -> Path:
        return self.root / "best_models_and_params" / self.project

    @property
    def params_dir(self) -> Path:
        return self.best / "model_params"

    @property
    def hyperparameters(self) -> Path:
        return self.params_dir / HYPERPARAMETERS_JSON

    @property
    def search(self) -> Path:
        return self.params_dir / "search.json"

    @property
    def trials(self) -> Path:
        return self.best / "trials.csv"


def _nih_file(kind: str, suffix: str) -> property:
    """A path property: pretrain.py's ``<output>/nih_<kind>_<Model>_<size><suffix>``."""

    def path(self: PretrainPaths) -> Path:
        return Path(self.output) / f"nih_{kind}_{self.model}_{self.size}{suffix}"

    return property(path)


@dataclass(frozen=True)
class PretrainPaths:
    """pretrain.py's outputs for one backbone and size: ``nih_weight_<Model>_<size>.h5`` (which
    tuner.py and train.py take as -w), its per-finding AUROC, log and summary."""

    output: Path
    model: str  # backbone CLI name, e.g. "ResNet-50"
    size: int

    checkpoint = _nih_file("weight", ".h5")
    auroc = _nih_file("auroc", ".csv")
    log_csv = _nih_file("log", ".csv")
    summary = _nih_file("summary", ".json")

    @classmethod
    def parse(cls, path: Path) -> PretrainPaths:
        """The backbone and size of an ``nih_weight_<Model>_<size>.h5`` (backbone names may hold '_')."""
        path = Path(path)
        body = path.name.removeprefix("nih_weight_").removesuffix(".h5")
        model, _, size = body.rpartition("_")
        if not path.name.startswith("nih_weight_") or not model or not size.isdigit():
            raise UsageError(f"not a pretrain.py checkpoint: {path.name!r} (expected nih_weight_<Model>_<size>.h5)")
        return cls(path.parent, model, int(size))


class PlotPaths(NamedTuple):
    roc: Path
    precision_recall: Path
    calibration: Path
    confusion: Path


def plot_paths(folder: Path) -> PlotPaths:
    """The evaluation pictures evaluate.py and ensemble.py write, under the original's names."""
    folder = Path(folder)
    return PlotPaths(
        folder / "ROC_Curve.png",
        folder / "PrecisionRecall_Curve.png",
        folder / "Calibration.png",
        folder / "ConfusionMatrix.png",
    )


def _in_folder(name: str) -> property:
    """A path property: the file ``name`` in the results folder."""

    def path(self: _ResultsPaths) -> Path:
        return self.folder / name

    return property(path, doc=f"``<folder>/{name}``")


@dataclass(frozen=True)
class _ResultsPaths:
    """What the results folders of evaluate.py and ensemble.py share: ``<output>/<FOLDER>/`` with
    the list of unreadable files and the evaluation pictures; scratch space beside it."""

    FOLDER: ClassVar[str]
    output: Path

    @property
    def folder(self) -> Path:
        return Path(self.output) / self.FOLDER

    @property
    def plots(self) -> PlotPaths:
        return plot_paths(self.folder)

    @property
    def scratch(self) -> Path:
        return scratch_dir(self.output)

    unreadable = _in_folder(UNREADABLE_CSV)


@dataclass(frozen=True)
class EvaluationPaths(_ResultsPaths):
    """evaluate.py's outputs: ``<output>/Results/{predictions.csv, metrics.json, plots}``."""

    FOLDER: ClassVar[str] = RESULTS_FOLDER
    predictions = _in_folder(PREDICTIONS_CSV)
    metrics = _in_folder("metrics.json")
    referral = _in_folder(REFERRAL_PNG)
    calibration_fit = _in_folder(CALIBRATION_FIT_PNG)
    report = _in_folder(REPORT_HTML)


@dataclass(frozen=True)
class EnsemblePaths(_ResultsPaths):
    """ensemble.py's outputs under ``<output>/Ensemble_Results/``."""

    FOLDER: ClassVar[str] = ENSEMBLE_RESULTS_FOLDER
    weights_pickle = _in_folder(ENSEMBLE_WEIGHTS_PICKLE)
    weights_json = _in_folder(ENSEMBLE_WEIGHTS_JSON)
    member_auc = _in_folder("member_auc.csv")
    ensemble_predictions = _in_folder("ensemble_predictions.csv")
    individual_predictions = _in_folder("individual_predictions.csv")
    summary = _in_folder("summary.json")
    model_card = _in_folder("MODEL_CARD.md")  # reports.model_card: the page, from the records above
    model_card_json = _in_folder("model_card.json")  # the same facts for a program


@dataclass(frozen=True)
class AuditPaths:
    """audit.py's outputs, in its output folder: the per-image scores, the findings, the page (its
    figures under ``audit_files/``), the model card with the findings, and the scoring journal a
    killed run resumes from (removed when the outputs are written)."""

    output: Path

    @property
    def folder(self) -> Path:
        return Path(self.output)

    scores = _in_folder("scores.csv")
    findings = _in_folder("audit.json")
    page = _in_folder("audit.html")
    model_card = _in_folder("MODEL_CARD.md")
    model_card_json = _in_folder("model_card.json")
    journal = _in_folder(".audit_journal")
    # without -e, when the members found are not the published 24: the equal weights audited
    equal_weights = _in_folder("equal_weights")

    @property
    def scratch(self) -> Path:
        return scratch_dir(self.output)
