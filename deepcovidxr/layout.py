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
        return self.split_dir(size, crop, split) / Label(label).value

    def leaf_dirs(self, sizes: tuple[int, ...] = SIZES, splits: tuple[Split, ...] = tuple(Split)) -> Iterator[Path]:
        for size in sizes:
            for crop in CropMode:
                for split in splits:
                    for label in Label:
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
        from deepcovidxr import backbones

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
        from deepcovidxr import backbones

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
    from deepcovidxr.backbones import BACKBONES

    return tuple(
        Member(b.name, size, crop) for b in BACKBONES for size in SIZES for crop in (CropMode.UNCROP, CropMode.CROP)
    )
