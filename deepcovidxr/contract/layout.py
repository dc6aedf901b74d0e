"""The on-disk contract shared by every stage: folder names, sizes, file names and the members.

Only this module builds or parses those names (where a run writes is
:mod:`deepcovidxr.contract.run_paths`'). The tree is the original's:
``<root>/{224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive}/<image>``,
and an image keeps the same relative name in every view, so views pair by name. A member is a
backbone trained on one (size, crop) view, named as the published weight files are.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def gradcam_dir(output: Path) -> Path:
    """visSample.py's figures and maps folder (the names of :func:`gradcam_names` lie under it)."""
    return Path(output) / GRADCAM_FOLDER


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


MEMBER_SUFFIX = ".h5"


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
