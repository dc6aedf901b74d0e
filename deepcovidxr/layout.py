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
        raise ValueError(f"unrecognised label {text!r}: use Positive/Negative (or 1/0)")


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
            raise FileNotFoundError(f"dataset tree {self.root} is incomplete; missing folders:\n  {listed}{more}")


def legacy_crop_names(relative: Path) -> tuple[Path, Path]:
    """The original crop_img.py names: ``crop/<stem>_crop<ext>`` and
    ``crop_squared/<stem>_crop_squared<ext>`` (sub-folders kept)."""
    parent, stem, suffix = relative.parent, relative.stem, relative.suffix
    return (Path("crop") / parent / f"{stem}_crop{suffix}", Path("crop_squared") / parent / f"{stem}_crop_squared{suffix}")
