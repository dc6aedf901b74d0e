"""The configs of the stages that prepare data: crop_img, resize_img, build_dataset and
train_unet, and the demo, which runs the whole pipeline on phantoms. One frozen dataclass per
script: see :mod:`deepcovidxr.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from deepcovidxr.config import options
from deepcovidxr.config.checks import at_least, exists, unit_interval
from deepcovidxr.config.schema import StageConfig, option
from deepcovidxr.contract import layout


@dataclass(frozen=True, kw_only=True)
class CropConfig(StageConfig):
    """Crop chest X-rays to a square box around the lungs found by a U-Net.

    Walks -f recursively and writes, under -o, the square lung crop of every image with the same
    relative path and file name (DICOM input becomes PNG), a per-file crop_report.csv (status ok,
    one_lung, fallback or error, the box, the lung fraction, the input check: ok or why the image
    does not look like a frontal chest film) and a QC montage crop_qc.png.
    Nothing is written into the input folder. A rerun skips files already done.

    Example:
        python crop_img.py -f raw_images/ -o cropped/ --save-masks masks/
    """

    INPUT_FIELD: ClassVar[str] = "input"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output", "save_masks")

    input: Path = option(
        "-f",
        "--folder",
        help="an image file or a folder of images (PNG, JPEG, BMP, TIFF, DICOM), searched recursively",
        required=True,
        check=exists,
    )
    output: Path = options.output()
    unet: Path | None = options.unet()
    save_masks: Path | None = option(
        "--save-masks",
        help="also write each predicted lung mask (0/255 PNG, original resolution, same relative path) here",
        default=None,
        metavar="DIR",
        show_default=False,
    )
    legacy_names: bool = options.switch(
        "--legacy-names",
        help="write the original's crop/<stem>_crop<ext> and crop_squared/<stem>_crop_squared<ext> instead",
    )
    overwrite: bool = options.overwrite()
    batch_size: int = options.batch_size(16, "images per U-Net batch")
    workers: int = options.workers()
    qc_montage: bool = option("--no-qc", help="do not write the crop_qc.png montage", default=True)
    precision: str = options.inference_precision()


@dataclass(frozen=True, kw_only=True)
class ResizeConfig(StageConfig):
    """Resize images to size x size with Lanczos (Pillow's antialiased filter).

    Walks -i recursively and writes each image under -o with the same relative path and file name
    (DICOM input becomes PNG); gray stays gray. Writes resize_report.csv. A rerun skips finished files.

    Example:
        python resize_img.py -i cropped/ -o cropped_224/ -s 224
    """

    INPUT_FIELD: ClassVar[str] = "input"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output",)

    input: Path = option(
        "-i", "--input_path", help="an image file or a folder, searched recursively", required=True, check=exists
    )
    output: Path = option(
        "-o", "--output_path", help="output folder (created; must lie outside the input)", required=True
    )
    size: int = options.size("output side in pixels (224 or 331 for the ensemble)")
    overwrite: bool = options.overwrite()
    workers: int = options.workers()


@dataclass(frozen=True, kw_only=True)
class DatasetConfig(StageConfig):
    """Build the training tree {224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive}
    from a folder of raw images and a labels table, in one command.

    The labels CSV needs columns file (path relative to --images) and label (Positive/Negative or
    1/0), and should have patient_id: patients, not files, are split (seeded, stratified by label).
    Each image is cropped by the lung U-Net once and written in all four views under one name.
    Images the input check flags (not a frontal chest film, blank, too small, failed DICOM window)
    are left out of the tree (status left_out) unless --keep-flagged.
    <output>/split_manifest.csv records every file's split, crop status, input check and errors.

    Example:
        python build_dataset.py --images raw/ --labels raw/labels.csv -o dataset/ --split 0.7 0.15 0.15
    """

    INPUT_FIELD: ClassVar[str] = "images"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output",)

    images: Path = option(
        "--images", help="folder the labels table's file column is relative to", required=True, check=exists
    )
    labels: Path = option(
        "--labels", help="CSV with file, label and (recommended) patient_id", required=True, check=exists
    )
    output: Path = option("-o", "--output", help="dataset root to create", required=True)
    unet: Path | None = options.unet()
    sizes: tuple[int, ...] = option("--sizes", help="image sizes to write", default=layout.SIZES)
    fractions: tuple[float, float, float] = option(
        "--split",
        help="fractions of patients per split",
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
    )
    seed: int = options.seed()
    overwrite: bool = options.overwrite()
    batch_size: int = options.batch_size(16, "images per U-Net batch")
    workers: int = options.workers()
    precision: str = options.inference_precision()
    keep_flagged: bool = options.switch(
        "--keep-flagged",
        help="also write the images the input check flags (the manifest's input_check column still says why)",
    )


@dataclass(frozen=True, kw_only=True)
class UnetTrainConfig(StageConfig):
    """Train the lung U-Net shipped in unet/ on image/mask pairs.

    Example:
        python train_unet.py --data ../shared/data/lungmasks --output unet --epochs 40
    """

    INPUT_FIELD: ClassVar[str] = "data"

    data: Path = option(
        "--data",
        help="folder with manifest.csv (columns image, mask) or */images + */masks with matching names",
        required=True,
        check=exists,
    )
    output: Path = option("--output", help="where lung_unet.weights.h5 and lung_unet.json go", default=Path("unet"))
    architecture: str = options.choice(
        "--architecture",
        help="light: narrower decoder with batch-norm (default, shipped); imlab: the original 5.5 M U-Net",
        choices=("light", "imlab"),
    )
    epochs: int = option("--epochs", help="training epochs", default=40, check=at_least(1))
    batch_size: int = options.batch_size(8, "images per step")
    learning_rate: float = option(
        "--learning-rate",
        help="Adam peak learning rate, cosine-decayed (0 keeps the initial weights: measures them)",
        default=2e-3,
        check=at_least(0),
    )
    heldout_fraction: float = options.held_out("--heldout-fraction", "fraction of pairs per data set", 0.15)
    seed: int = options.seed()
    precision: str = options.training_precision("auto")
    limit: int | None = option(
        "--limit", help="use only the first N pairs (smoke tests)", default=None, show_default=False
    )
    init: Path | None = option(
        "--init",
        help="start from these U-Net weights (ours, or imlab's trained_model.hdf5 with --architecture imlab) "
        "instead of random ones, e.g. to fine-tune on your own masks",
        default=None,
        check=exists,
        show_default=False,
    )
    pathology_probability: float = option(
        "--pathology-probability",
        help="chance per training image of painted lung opacities (and, half as often, tubes and wires); "
        "the mask stays the whole lung, so opacified lung is segmented as lung (0 turns it off)",
        default=0.5,
        check=unit_interval,
    )


@dataclass(frozen=True, kw_only=True)
class DemoConfig(StageConfig):
    """Run the pipeline on bundled synthetic chest phantoms: no data, no downloads.

    Writes everything under --output and prints the path of its index.html, the page to open first.

    Example:
        python demo.py --output demo_output
    """

    output: Path = option("-o", "--output", help="output folder", default=Path("demo_output"))
    count: int = option("--count", help="number of synthetic phantoms", default=48, check=at_least(8))
    seed: int = options.seed()
    members: tuple[str, ...] = option("--members", help="members to train", default=("res_224_uncrop", "res_224_crop"))
    epochs: int = option("--epochs", help="training epochs per member", default=2, check=at_least(1))
    classes: int = option(
        "--classes",
        help="2: the binary task (Negative/Positive phantoms); 3: normal, lower-zone and diffuse opacities "
        "(softmax members, p_<class> columns, one-vs-rest ROC and confusion matrix)",
        default=2,
        choices=(2, 3),
    )
    unet: Path | None = options.unet()
    workers: int = options.workers()
