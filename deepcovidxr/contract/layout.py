"""The on-disk contract shared by every stage: folder names, sizes and file names.

Only this module builds or parses those names. The tree is the original's:
``<root>/{224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive}/<image>``,
and an image keeps the same relative name in every view, so views pair by name.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from deepcovidxr.errors import MissingInputError, UsageError

SIZES: tuple[int, ...] = (224, 331)
CROP_REPORT = "crop_report.csv"
RESIZE_REPORT = "resize_report.csv"
SPLIT_MANIFEST = "split_manifest.csv"
QC_MONTAGE = "crop_qc.png"


class Split(enum.StrEnum):
    TRAIN = "Train"
    VALIDATION = "Validation"
    TEST = "Test"


class Label(enum.StrEnum):
    NEGATIVE = "Negative"
    POSITIVE = "Positive"

    @property
    def index(self) -> int:
        """Keras' alphabetical class index: Negative 0, Positive 1 (sigmoid = P(COVID+))."""
        return 1 if self is Label.POSITIVE else 0

    @classmethod
    def parse(cls, text: str | int) -> Label:
        """Accept the spellings labels tables use: Positive/Negative, 1/0, covid, pos/neg, true/false."""
        value = str(text).strip().lower()
        if value in {"positive", "pos", "1", "1.0", "covid", "covid-19", "covid19", "true", "yes", "p"}:
            return cls.POSITIVE
        if value in {"negative", "neg", "0", "0.0", "non-covid", "noncovid", "normal", "false", "no", "n"}:
            return cls.NEGATIVE
        raise UsageError(f"unrecognised label {text!r}: use Positive/Negative (or 1/0)")


class CropMode(enum.StrEnum):
    CROP = "crop"
    UNCROP = "uncrop"


@dataclass(frozen=True)
class DataTree:
    """A dataset root holding the ``{size}/{crop}/{split}/{label}`` folders."""

    root: Path

    def view_dir(self, size: int, crop: CropMode | str) -> Path:
        """``<root>/<size>/<crop>``: what train.py and tuner.py take as ``-p``."""
        return self.root / str(size) / CropMode(crop).value

    def split_dir(self, size: int, crop: CropMode | str, split: Split | str) -> Path:
        return self.view_dir(size, crop) / Split(split).value

    def class_dir(self, size: int, crop: CropMode | str, split: Split | str, label: Label | str) -> Path:
        """The folder of one class: ``Negative``/``Positive`` (any spelling :meth:`Label.parse`
        does not need: the enum or its value) or, in a multi-class tree, the class name itself."""
        name = label.value if isinstance(label, Label) else str(label)
        return self.split_dir(size, crop, split) / name

    def leaf_dirs(
        self,
        sizes: tuple[int, ...] = SIZES,
        splits: tuple[Split, ...] = tuple(Split),
        classes: tuple[str, ...] = tuple(label.value for label in Label),
    ) -> Iterator[Path]:
        for size in sizes:
            for crop in CropMode:
                for split in splits:
                    for label in classes:
                        yield self.class_dir(size, crop, split, label)

    def missing(self, sizes: tuple[int, ...] = SIZES, splits: tuple[Split, ...] = tuple(Split)) -> list[Path]:
        """Every expected leaf folder that does not exist (empty list: the tree is complete)."""
        return [d for d in self.leaf_dirs(sizes, splits) if not d.is_dir()]

    def check(self, sizes: tuple[int, ...] = SIZES, splits: tuple[Split, ...] = tuple(Split)) -> None:
        missing = self.missing(sizes, splits)
        if missing:
            listed = "\n  ".join(str(m) for m in missing[:12])
            more = f"\n  ... and {len(missing) - 12} more" if len(missing) > 12 else ""
            raise MissingInputError(f"dataset tree {self.root} is incomplete; missing folders:\n  {listed}{more}")


RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES


def output_name(relative: Path) -> Path:
    """The name an image output keeps for an input: the same name, except that DICOM becomes
    PNG. Only a known image suffix is ever replaced: a PACS export named by UID
    (``1.2.840.113619.2.55``) keeps its whole name (``1.2.840.113619.2.55.png``)."""
    relative = Path(relative)
    suffix = relative.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return relative
    if suffix in DICOM_SUFFIXES:
        return relative.with_suffix(".png")
    return relative.with_name(relative.name + ".png")


def png_name(relative: Path) -> Path:
    """An output that is always PNG (a mask): :func:`output_name` with a raster suffix replaced."""
    name = output_name(relative)
    return name if name.suffix.lower() == ".png" else name.with_suffix(".png")


def image_stem(relative: Path) -> str:
    """The input's name without a known image suffix, sub-folders flattened with ``__``: the stem
    of per-image outputs in a flat folder (Grad-CAM figures, heatmaps)."""
    return png_name(relative).with_suffix("").as_posix().replace("/", "__")


def flat_name(file: str) -> str:
    """The name an image gets in the dataset tree: its relative path with folders joined by '__'
    (the same in all four views, so views pair by name), always a PNG: the tree is written
    lossless, so a view read back from it has the pixels prediction computes in memory (a JPEG
    copy moved grey levels by up to 28 and changed scores)."""
    return png_name(Path(file.replace("/", "__"))).as_posix()


TENSORBOARD = "tensorboard"  # event files below a run's output folder
GRADCAM_FOLDER = "gradCAM_img"
GRADCAM_REPORT = "gradcam_report.csv"


def gradcam_names(relative: Path) -> tuple[Path, Path, Path]:
    """Grad-CAM outputs of one input under ``gradCAM_img/``: figure, raw map (.npy), 8-bit map."""
    stem = image_stem(relative)
    folder = Path(GRADCAM_FOLDER)
    return folder / f"{stem}_gradCAM.png", folder / f"{stem}_heatmap.npy", folder / f"{stem}_heatmap.png"


LIME_FOLDER = "lime_img"  # visSample.py --method lime
LIME_REPORT = "lime_report.csv"


def lime_names(relative: Path) -> tuple[Path, Path]:
    """LIME outputs of one input under ``lime_img/``: the figure and the signed per-pixel weight
    map (.npy, float32 at the display size), named like :func:`gradcam_names`."""
    stem = image_stem(relative)
    folder = Path(LIME_FOLDER)
    return folder / f"{stem}_lime.png", folder / f"{stem}_lime_weights.npy"


def collisions(outputs: dict[str, list[Path]]) -> dict[str, str]:
    """Inputs whose output names clash with another input's (``{input: reason}``), given every
    input's outputs. Every input in a clash is named, so none of them overwrites another."""
    owners: dict[Path, list[str]] = {}
    for source, paths in outputs.items():
        for path in paths:
            owners.setdefault(Path(path), []).append(source)
    reasons: dict[str, str] = {}
    for path, sources in owners.items():
        if len(set(sources)) < 2:
            continue
        for source in sources:
            others = ", ".join(sorted(s for s in set(sources) if s != source))
            reasons.setdefault(source, f"output name {path.name} collides with {others}; rename one of them")
    return reasons


def infer_crop(path: Path, crop: CropMode | str | None) -> CropMode:
    """``--crop`` if given, else the ``crop``/``uncrop`` folder the data path lies in."""
    if crop is not None:
        return CropMode(crop)
    for part in reversed(Path(path).resolve().parts):
        if part in {m.value for m in CropMode}:
            return CropMode(part)
    raise UsageError(f"cannot tell crop or uncrop from {path}: pass --crop crop|uncrop")


def legacy_crop_names(relative: Path) -> tuple[Path, Path]:
    """The original crop_img.py names: ``crop/<stem>_crop<ext>`` and
    ``crop_squared/<stem>_crop_squared<ext>`` (sub-folders kept)."""
    parent, stem, suffix = relative.parent, relative.stem, relative.suffix
    return (
        Path("crop") / parent / f"{stem}_crop{suffix}",
        Path("crop_squared") / parent / f"{stem}_crop_squared{suffix}",
    )


@dataclass(frozen=True)
class Member:
    """One ensemble member: a backbone trained on one (size, crop) view."""

    backbone: str  # CLI name, e.g. "DenseNet-121"
    size: int
    crop: CropMode

    @property
    def spec(self):
        from deepcovidxr.contract import backbones

        return backbones.get(self.backbone)

    @property
    def short_name(self) -> str:
        """The original's member name: ``dense_224_uncrop``."""
        return f"{self.spec.short}_{self.size}_{self.crop.value}"

    @property
    def legacy_filename(self) -> str:
        """The published weight-file name: ``DenseNet_224_up_uncrop.h5``."""
        return f"{self.spec.prefix}_{self.size}_up_{self.crop.value}.h5"

    @classmethod
    def parse(cls, text: str) -> Member:
        """Accept a short name (``res_331_crop``) or a weight-file name (``ResNet50_331_up_crop.h5``)."""
        from deepcovidxr.contract import backbones

        stem = Path(text).name.removesuffix(".h5")
        parts = stem.split("_")
        if len(parts) == 4 and parts[2] == "up":
            parts = [parts[0], parts[1], parts[3]]
        if len(parts) != 3 or not parts[1].isdigit():
            raise UsageError(f"not a member name: {text!r} (expected e.g. res_331_crop or ResNet50_331_up_crop.h5)")
        return cls(backbones.get(parts[0]).name, int(parts[1]), CropMode(parts[2]))


def ensemble_members() -> tuple[Member, ...]:
    """The canonical 24-member order of ``ensemble_weights.pickle`` (SPEC s.14): per backbone
    family, 224 uncrop, 224 crop, 331 uncrop, 331 crop."""
    from deepcovidxr.contract.backbones import BACKBONES

    return tuple(
        Member(b.name, size, crop) for b in BACKBONES for size in SIZES for crop in (CropMode.UNCROP, CropMode.CROP)
    )


def member_files(folder: Path) -> list[tuple[Member, Path]]:
    """Every member file (``<Prefix>_<size>_up_<crop>.h5``, any size) directly in ``folder``, in the
    canonical order (backbone table, size, uncrop before crop): the 24 published members and
    members trained at other sizes (``train.py -s 128``) alike. Other ``.h5`` files are ignored."""
    found = []
    for path in sorted(Path(folder).glob(f"*_up_*{MEMBER_SUFFIX}")):
        try:
            member = Member.parse(path.name)
        except (UsageError, ValueError):  # an unknown backbone, a crop that is neither
            continue
        if path.is_file() and path.name == member.legacy_filename:
            found.append((member, path))
    return sorted(found, key=lambda item: member_order(item[0]))


def member_order(member: Member) -> tuple[int, int, bool]:
    """The canonical order of any member (backbone table, size, uncrop before crop): for the
    published 24 it is ``ensemble_members()``' order, and members of other sizes fall in place."""
    from deepcovidxr.contract.backbones import NAMES

    return (NAMES.index(member.backbone), member.size, member.crop != CropMode.UNCROP)


# ---- run outputs: members, tuner, pretraining, evaluation, ensemble -------------------------------

SCRATCH = ".scratch"  # a stage's working memmaps inside its output folder, removed when it ends
PHASES: tuple[str, ...] = ("initial", "final")  # the original's save_weights_initial/, save_weights_final/
MEMBER_SUFFIX = ".h5"
HYPERPARAMETERS_JSON = "hyperparameters.json"
HYPERPARAMETERS_PICKLE = "hyperparameters.pickle"  # the original tuner's format
ENSEMBLE_WEIGHTS_PICKLE = "ensemble_weights.pickle"
ENSEMBLE_WEIGHTS_JSON = "ensemble_weights.json"
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_INFO = "predictions_info.json"
PREDICT_JOURNAL = ".predict_journal"  # predict.py: the crop and each member's scores, until the outputs are written
UNREADABLE_CSV = "unreadable.csv"  # evaluate.py, ensemble.py: tree files no view could read
REPORT_HTML = "report.html"  # evaluate.py and predict.py: the page a reader opens (report_page)
REFERRAL_PNG = "Referral_Curve.png"  # AUC/accuracy as the most uncertain images are referred
CALIBRATION_FIT_PNG = "Calibration_Fitted.png"  # reliability before/after the stored calibration
RESULTS_FOLDER = "Results"  # evaluate.py, as the original
ENSEMBLE_RESULTS_FOLDER = "Ensemble_Results"  # ensemble.py, as the original


def scratch_dir(output: Path) -> Path:
    return Path(output) / SCRATCH


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

    @property
    def member_record(self) -> Path:
        """The finished member's record (settings, data fingerprint, the member file's digest),
        written just before the member file: a member file is skipped on a rerun only when this
        matches."""
        return Path(self.output) / f"{self.stem}_done.json"

    def plots(self, phase: str) -> Path:
        return Path(self.output) / f"save_plots_{phase}" / self.stem

    def history(self, phase: str) -> Path:
        return self.plots(phase) / "history.csv"

    @property
    def log_csv(self) -> Path:
        return Path(self.output) / f"{self.stem}_log.csv"

    @property
    def unreadable(self) -> Path:
        """The Train/Validation files training left out because they could not be read."""
        return Path(self.output) / f"{self.stem}_{UNREADABLE_CSV}"

    @property
    def curves(self) -> Path:
        return Path(self.output) / f"{self.stem}_curves.png"

    @property
    def config(self) -> Path:
        return Path(self.output) / f"{self.stem}_config.json"

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


@dataclass(frozen=True)
class PretrainPaths:
    """pretrain.py's outputs for one backbone and size: ``nih_weight_<Model>_<size>.h5`` (which
    tuner.py and train.py take as -w), its per-finding AUROC, log and summary."""

    output: Path
    model: str  # backbone CLI name, e.g. "ResNet-50"
    size: int

    def _name(self, kind: str, suffix: str) -> Path:
        return Path(self.output) / f"nih_{kind}_{self.model}_{self.size}{suffix}"

    @property
    def checkpoint(self) -> Path:
        return self._name("weight", ".h5")

    @property
    def auroc(self) -> Path:
        return self._name("auroc", ".csv")

    @property
    def log_csv(self) -> Path:
        return self._name("log", ".csv")

    @property
    def summary(self) -> Path:
        return self._name("summary", ".json")

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


@dataclass(frozen=True)
class EvaluationPaths:
    """evaluate.py's outputs: ``<output>/Results/{predictions.csv, metrics.json, plots}``."""

    output: Path

    @property
    def folder(self) -> Path:
        return Path(self.output) / RESULTS_FOLDER

    @property
    def predictions(self) -> Path:
        return self.folder / PREDICTIONS_CSV

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def unreadable(self) -> Path:
        return self.folder / UNREADABLE_CSV

    @property
    def plots(self) -> PlotPaths:
        return plot_paths(self.folder)

    @property
    def referral(self) -> Path:
        return self.folder / REFERRAL_PNG

    @property
    def calibration_fit(self) -> Path:
        return self.folder / CALIBRATION_FIT_PNG

    @property
    def report(self) -> Path:
        return self.folder / REPORT_HTML

    @property
    def scratch(self) -> Path:
        return scratch_dir(self.output)


@dataclass(frozen=True)
class EnsemblePaths:
    """ensemble.py's outputs under ``<output>/Ensemble_Results/``."""

    output: Path

    @property
    def folder(self) -> Path:
        return Path(self.output) / ENSEMBLE_RESULTS_FOLDER

    @property
    def weights_pickle(self) -> Path:
        return self.folder / ENSEMBLE_WEIGHTS_PICKLE

    @property
    def weights_json(self) -> Path:
        return self.folder / ENSEMBLE_WEIGHTS_JSON

    @property
    def member_auc(self) -> Path:
        return self.folder / "member_auc.csv"

    @property
    def ensemble_predictions(self) -> Path:
        return self.folder / "ensemble_predictions.csv"

    @property
    def individual_predictions(self) -> Path:
        return self.folder / "individual_predictions.csv"

    @property
    def unreadable(self) -> Path:
        return self.folder / UNREADABLE_CSV

    @property
    def summary(self) -> Path:
        return self.folder / "summary.json"

    @property
    def plots(self) -> PlotPaths:
        return plot_paths(self.folder)

    @property
    def scratch(self) -> Path:
        return scratch_dir(self.output)


def gradcam_dir(output: Path) -> Path:
    """visSample.py's figures and maps folder (the names of :func:`gradcam_names` lie under it)."""
    return Path(output) / GRADCAM_FOLDER
