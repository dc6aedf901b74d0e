"""The config schema of every stage, one frozen keyword-only dataclass per script.

Each field declares its flags (the original's spellings kept), help, type, default and check
(:mod:`deepcovidxr.config.schema`); the scripts' parsers, the ``--config`` file reader and the per-run
``run_config.json`` are generated from these classes. A class docstring is its script's ``--help``
description. Imports nothing heavy: ``--help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from deepcovidxr.config import options
from deepcovidxr.config.schema import StageConfig, at_least, exists, open_unit_interval, option, positive, unit_interval
from deepcovidxr.contract import layout
from deepcovidxr.contract.layout import CropMode, Member, infer_crop
from deepcovidxr.errors import UsageError

# From random weights the validation AUC wanders near 0.5 for the first epochs; judged by it, the
# plateau rule cut the learning rate 100x within 11 epochs, before anything was learnt (measured on
# phantoms: val AUC stuck at 0.62; 0.93 with the warm-up). Pretrained backbones are judged at once.
FROM_SCRATCH_WARMUP = 10


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
    legacy_names: bool = option(
        "--legacy-names",
        help="write the original's crop/<stem>_crop<ext> and crop_squared/<stem>_crop_squared<ext> instead",
        default=False,
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
    size: int = option(
        "-s", "--size", help="output side in pixels (224 or 331 for the ensemble)", required=True, check=positive
    )
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
    keep_flagged: bool = option(
        "--keep-flagged",
        help="also write the images the input check flags (the manifest's input_check column still says why)",
        default=False,
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
    architecture: str = option(
        "--architecture",
        help="light: narrower decoder with batch-norm (default, shipped); imlab: the original 5.5 M U-Net",
        default="light",
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
    heldout_fraction: float = option(
        "--heldout-fraction",
        help="fraction of pairs per data set held out for validation",
        default=0.15,
        check=open_unit_interval,
    )
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


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(StageConfig):
    """Pretrain a backbone on NIH ChestX-ray14 (14 findings) and write nih_weight_<Model>_<size>.h5,
    which tuner.py and train.py take as -w (the 14-unit head is replaced by a 1-unit head on load),
    plus per-finding AUROC on the official test list (nih_auroc_<Model>_<size>.csv).

    -p is the ChestX-ray14 folder as distributed: Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv),
    train_val_list.txt, test_list.txt and the images, flat or in images_0NN/images/.

    Example:
        python pretrain.py -m DenseNet-121 -s 224 -p /data/NIH -o pretrained/ -w imagenet
    """

    INPUT_FIELD: ClassVar[str] = "path"

    model: str = options.model("-model")
    size: int = option("-s", "--size", help="input side in pixels (224 or 331)", required=True, check=positive)
    path: Path = option("-p", "--path", help="ChestX-ray14 folder (labels CSV, official lists, images)", required=True)
    output: Path = options.output(default=Path("."))
    weights: str | None = option(
        "-w",
        "--weights",
        help="initial weights: imagenet (default; needs a download or ~/.keras/models), a keras.applications "
        "ImageNet no-top .h5 file, or none",
        default="imagenet",
    )
    epochs: int = option("--epochs", help="most epochs (early stopping after 10 flat)", default=50, check=at_least(1))
    batch_size: int = options.batch_size(16, "images per step")
    learning_rate: float = option("--learning-rate", help="SGD learning rate", default=1e-3, check=positive)
    momentum: float = option("--momentum", help="SGD Nesterov momentum", default=0.9)
    validation_fraction: float = option(
        "--validation-fraction",
        help="share of train_val patients held out for validation",
        default=0.1,
        check=open_unit_interval,
    )
    seed: int = options.seed()
    download: bool = option(
        "--download",
        help="download the 12 image archives into -p first (resumable, checksummed; about 45 GB)",
        default=False,
    )
    precision: str = options.training_precision()
    cache: bool | str = option(
        "--cache",
        help="cache decoded, resized images in this file (speeds up epochs after the first; 112k images do "
        "not fit in memory)",
        default=False,
        metavar="FILE",
        parse=str,
        show_default=False,
    )
    overwrite: bool = options.overwrite()


@dataclass(frozen=True, kw_only=True)
class TuneConfig(StageConfig):
    """Search dropout, learning rate and momentum for one member with keras-tuner (Bayesian
    optimisation on validation AUC), after a frozen-backbone warm-up. Writes
    <out>/tuner/best_models_and_params/<stem>/model_params/hyperparameters.json and the original's
    hyperparameters.pickle; train.py takes either with -hy. The trials appear in TensorBoard's HParams
    dashboard (tensorboard --logdir <out>/tuner).

    Example:
        python tuner.py -m ResNet-50 -s 224 -p dataset/224/crop -w nih_weight_ResNet-50_224.h5 -o tuning/

    Distributed search (keras-tuner's chief/worker mode): start one chief and N workers with the
    same command and these variables (see README "Distributed tuning"):
        KERASTUNER_TUNER_ID=chief|tuner0|tuner1...  KERASTUNER_ORACLE_IP=<chief host>  KERASTUNER_ORACLE_PORT=8000
    """

    INPUT_FIELD: ClassVar[str] = "path"

    model: str = options.model()
    size: int = option("-s", "--size", help="input side in pixels (224 or 331)", required=True, check=positive)
    path: Path = options.view_folder()
    output: Path = options.output(default=Path("."))
    weights: str | None = option(
        "-w",
        "--weights",
        help="initial weights: nih_weight_<Model>_<size>.h5, a member .h5, a keras.applications ImageNet "
        "no-top .h5, imagenet (download) or none (default)",
        default=None,
    )
    crop: CropMode | None = option(
        "--crop", help="the view (default: inferred from --path)", default=None, choices=tuple(CropMode)
    )
    max_trials: int = option("--max-trials", help="hyperparameter combinations to try", default=20, check=at_least(1))
    epochs: int = option("--epochs", help="most epochs per trial", default=10, check=at_least(1))
    warmup_epochs: int = option(
        "--warmup-epochs", help="most epochs of the frozen-backbone warm-up", default=50, check=at_least(0)
    )
    batch_size: int = options.batch_size(16, "images per step")
    seed: int = options.seed()
    cache: bool = options.no_cache()
    overwrite: bool = options.overwrite()


BALANCED = "balanced"


def parse_class_weight(text: str) -> bool | str:
    """``--class-weight``'s value: ``balanced`` (the bare flag), ``true``/``false``, weights in
    class order (``1,2.5,1``) or by class name (``Diffuse=2,Normal=0.5``; unnamed classes 1).
    Returns ``False`` (off), ``"balanced"`` or the explicit weights as canonical text; the class
    names are checked against the tree when training starts (``data.resolve_class_weights``)."""
    import math

    value = str(text).strip()
    lowered = value.lower()
    if lowered in {"balanced", "true", "yes", "1", "on"}:
        return BALANCED
    if lowered in {"false", "no", "0", "off", "none", ""}:
        return False
    parts = [p.strip() for p in value.split(",") if p.strip()]
    named = ["=" in p for p in parts]
    if any(named) and not all(named):
        raise ValueError(f"give every weight by position (1,2,1) or every one by class (A=2,B=1), not {value!r}")
    canonical = []
    for part in parts:
        name, _, number = part.rpartition("=") if "=" in part else ("", "", part)
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"{number!r} is not a number (in {value!r})") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"class weights must be finite and non-negative, got {number!r}")
        number = format(weight, ".12g")
        canonical.append(f"{name.strip()}={number}" if name else number)
    return ",".join(canonical)


@dataclass(frozen=True, kw_only=True)
class MemberTraining(StageConfig):
    """The member-training options train.py and train_all.py share."""

    epochs: int = option(
        "--epochs", help="most epochs per phase (early stopping ends sooner)", default=50, check=at_least(1)
    )
    batch_size: int = options.batch_size(16, "images per step per GPU")
    optimizer: str = option(
        "--optimizer",
        help="sgd: SGD with Nesterov momentum, as the original; adam: Adam, which trains randomly initialised "
        "backbones far more readily (momentum is then unused)",
        default="sgd",
        choices=("sgd", "adam"),
    )
    warmup_epochs: int | None = option(
        "--warmup-epochs",
        help="epochs before early stopping and the learning-rate plateau rule watch the validation AUC "
        "(default: 10 from random weights, 0 from pretrained ones)",
        default=None,
        check=at_least(0),
    )
    class_weight: bool | str = option(
        "--class-weight",
        help="weight the loss per class: bare flag or 'balanced': inverse class frequency (scikit-learn's "
        "'balanced', for any number of classes); or explicit weights in class order (1,2,1) or by class "
        "(Diffuse=2,Normal=0.5; classes not named weigh 1)",
        default=False,
        const="balanced",
        parse=parse_class_weight,
        metavar="WEIGHTS",
    )
    oversample: bool = option(
        "--oversample", help="draw training batches with balanced classes (every class equally often)", default=False
    )
    precision: str = options.training_precision()
    seed: int = options.seed()


@dataclass(frozen=True, kw_only=True)
class TrainConfig(MemberTraining):
    """Train one ensemble member in two phases (frozen backbone, then everything) and write it as
<output>/<Prefix>_<size>_up_<crop>.h5 with its curves, CSV log, TensorBoard logs and config.

Example:
    python train.py -m ResNet-50 -s 224 -p dataset/224/crop -o members/ -w nih_weight_ResNet-50_224.h5 \\
        -hy tuner_out/hyperparameters.json --class-weight

Multi-node (one process per node, TF_CONFIG set per process; see README "Multi-node training"):
    python train.py -m ResNet-50 -s 224 -p dataset/224/crop -o members/ --multi-worker
"""

    HYPERPARAMETER_KEYS: ClassVar[dict[str, str]] = {
        "learning_rate": "learning_rate",
        "momentum": "momentum",
        "dropout": "dropout_rate",
    }
    INPUT_FIELD: ClassVar[str] = "path"

    model: str = options.model()
    size: int = option(
        "-s", "--size", help="input side in pixels (224 or 331 for the ensemble)", required=True, check=positive
    )
    path: Path = options.view_folder()
    output: Path = option("-o", "--output", help="output folder (members of all views can share it)", required=True)
    weights: str | None = option(
        "-w",
        "--weight_path",
        help="initial weights: imagenet (needs a download), a file (keras.applications ImageNet no-top .h5, "
        "nih_weight_<Model>_<size>.h5 from pretrain.py, or a member .h5), or none (default: none)",
        default=None,
    )
    hyperparameters: Path | None = option(
        "-hy",
        "--hyperparameters",
        help="hyperparameters.json or the original's hyperparameters.pickle (keys dropout_rate, learning_rate, "
        "momentum); default lr 1e-3, momentum 0.9, dropout 0.3",
        default=None,
        check=exists,
    )
    crop: CropMode | None = option(
        "--crop",
        help="the view, for the output name (default: inferred from --path)",
        default=None,
        choices=tuple(CropMode),
    )
    learning_rate: float | None = option(
        "--learning-rate",
        help="learning rate (overrides the hyperparameters file)",
        default=None,
        check=positive,
        show_default=False,
    )
    momentum: float | None = option(
        "--momentum", help="SGD momentum (overrides the hyperparameters file)", default=None, show_default=False
    )
    dropout: float | None = option(
        "--dropout", help="dropout rate (overrides the hyperparameters file)", default=None, show_default=False
    )
    cache: bool = options.no_cache()
    overwrite: bool = options.overwrite()
    multi_worker: bool = option(
        "--multi-worker",
        help="multi-node data parallelism with MultiWorkerMirroredStrategy, configured by TF_CONFIG",
        default=False,
    )
    repeats: int = option(
        "--repeats",
        help="train N times with seeds seed, seed+1, ...; keep the best by validation AUC, then loss "
        "(every run listed in repeats.csv)",
        default=1,
        check=at_least(1),
    )

    @property
    def member(self) -> Member:
        return Member(self.model, self.size, infer_crop(self.path, self.crop))

    @property
    def from_scratch(self) -> bool:
        return self.weights is None or str(self.weights).lower() == "none"

    @property
    def warmup(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return FROM_SCRATCH_WARMUP if self.from_scratch else 0


@dataclass(frozen=True, kw_only=True)
class TrainAllConfig(MemberTraining):
    """Train all 24 ensemble members (or a chosen subset) one after another with train.py's schedule.
    A member is skipped only when its record (<stem>_done.json) says it was trained with the same
    settings on the same data; an unfinished phase resumes from its last epoch; a member file with
    no record (the authors', an older version's) is refused unless --overwrite, never overwritten.

    -w may be a folder of pretrain.py outputs (nih_weight_<Model>_<size>.h5, chosen per member) and
    -hy a tuner.py output folder (each member's tuned values) or one file for all.

    Example:
        python train_all.py -d dataset/ -o members/ -w pretrained/ -hy tuning/ --members res_224_crop dense_331_uncrop
    """

    INPUT_FIELD: ClassVar[str] = "data"

    data: Path = option(
        "-d", "--data", help="dataset root holding {224,331}/{crop,uncrop}/", required=True, check=exists
    )
    output: Path = option("-o", "--output", help="folder the _up_ member files go to", required=True)
    members: tuple[str, ...] = options.members(
        "members to train, e.g. res_224_crop or ResNet50_224_up_crop.h5 (default: all 24)"
    )
    weights: str | None = option(
        "-w",
        "--weight_path",
        help="initial weights: a folder of nih_weight_<Model>_<size>.h5, one file, imagenet or none (default)",
        default=None,
    )
    hyperparameters: Path | None = option(
        "-hy",
        "--hyperparameters",
        help="a tuner.py output folder (per member) or one hyperparameters file for all",
        default=None,
        check=exists,
    )

    @property
    def common(self) -> dict:
        """The TrainConfig fields every member shares."""
        return {f.name: getattr(self, f.name) for f in fields(MemberTraining)}


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig(StageConfig):
    """Fit the ensemble's member weights on the Validation split (Dirichlet random search maximising
    AUC, seeded) or use a fixed rule (mean, vote, max), then report every member and the ensemble on
    the Test split. Writes Ensemble_Results/ensemble_weights.pickle (float64, canonical member order)
    and ensemble_weights.json (weights and the combination rule, which every later stage applies),
    predictions CSVs, member_auc.csv, ROC and confusion-matrix PNGs. Members of three or more classes
    (class folders other than Negative/Positive): the search maximises the macro one-vs-rest AUC, the
    JSON records the classes, predictions hold p_<class> columns. Research use only: not for diagnosis.

    Example:
        python ensemble.py -w weights/ -d dataset/ -o ensemble_out/ --draws 10000 --seed 0
    """

    INPUT_FIELD: ClassVar[str] = "data"

    weights: Path = options.member_folder()
    data: Path = option(
        "-d",
        "--data",
        help="dataset root holding {224,331}/{crop,uncrop}/{Validation,Test}/<class folders> (Negative, Positive)",
        required=True,
        check=exists,
    )
    output: Path = options.output(default=Path("."))
    method: str = option(
        "--method",
        help="weighted: Dirichlet search on Validation (default); mean: soft mean; vote: hard vote; max",
        default="weighted",
        choices=("weighted", "mean", "vote", "max"),
    )
    draws: int = option("--draws", help="Dirichlet draws", default=10_000, check=at_least(1))
    calibrate: str = option(
        "--calibrate",
        help="score -> probability map fitted on Validation and stored with the weights (binary ensembles): "
        "platt (default: best held-out Brier/ECE in our comparison), temperature, isotonic, identity (none)",
        default="platt",
        choices=("platt", "temperature", "isotonic", "identity"),
    )
    members: tuple[str, ...] = options.members("only these members (default: every member file found)")
    batch_size: int = options.batch_size()
    engine: str = options.engine()
    precision: str = options.engine_precision()
    calibration: Path | None = options.calibration(
        "dataset root whose Train split calibrates int8 members (never Validation or Test, which are scored)"
    )
    engine_cache: Path | None = options.engine_cache()
    seed: int = options.seed()


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(StageConfig):
    """Evaluate the ensemble on the Test split of a dataset tree: Results/predictions.csv (Filenames,
    Scores, Binary prediction, Predictions, Actual, one column per member), Results/metrics.json (AUC
    with a 95 % bootstrap interval, accuracy, sensitivity, specificity, PPV, NPV, F1 at 0.5 and at the
    Youden threshold (the one ensemble.py chose on Validation when the weights store it, else
    chosen on Test and labelled so), Brier score) and ROC, precision-recall, calibration and
    confusion-matrix PNGs.
    Three or more classes: predictions.csv holds Filenames, Predictions and Actual (class names) and
    p_<class> columns, member_probabilities.csv every member's, metrics.json per-class, macro and
    weighted sensitivity, specificity, precision, F1 and one-vs-rest AUC (macro AUC with a bootstrap
    interval), accuracy, confusion matrix; one-vs-rest ROC and row-normalised confusion PNGs.
    Research use only: not for diagnosis.

    Example:
        python evaluate.py -w weights/ -i dataset/ -o evaluation/ -t 10
    """

    INPUT_FIELD: ClassVar[str] = "image"

    weights: Path = options.member_folder()
    image: Path = option(
        "-i",
        "--image",
        help="dataset root holding {224,331}/{crop,uncrop}/Test/<class folders> (Negative, Positive)",
        required=True,
        check=exists,
    )
    output: Path = options.output("output folder (Results/ is written in it)")
    ensemble_weights: Path | None = options.ensemble_weight()
    tta: int = options.tta()
    members: tuple[str, ...] = options.members()
    batch_size: int = options.batch_size()
    engine: str = options.engine()
    precision: str = options.engine_precision()
    calibration: Path | None = options.calibration(
        "dataset root whose Validation split calibrates int8 members (never Test, which is scored; "
        "the evaluated tree itself is fine)"
    )
    engine_cache: Path | None = options.engine_cache()
    seed: int = options.seed()
    bootstrap: int = option(
        "--bootstrap", help="bootstrap resamples for the (macro) AUC interval", default=2000, check=at_least(0)
    )


@dataclass(frozen=True, kw_only=True)
class PredictConfig(StageConfig):
    """Predict COVID-19 suspicion for chest X-rays (a file or a folder, searched recursively; PNG,
    JPEG, DICOM) with the 24-member ensemble. Non-interactive; never writes into the input folder.
    Crop and resize happen in memory. Writes <output>/predictions.csv (Filenames relative to -i,
    Scores, Binary pred, Predictions, crop_status, error, one column per member, then Probability
    (calibrated with the ensemble's Validation fit, when stored), uncertainty (the weighted spread of
    the member scores, plus the TTA spread with -t) and input_check) and report.html; unreadable files
    get an error row and a non-zero exit code. Images the input check flags (not a frontal chest
    X-ray, blank, too small, failed window) keep their row with empty Scores and the reason, unless
    --score-flagged. Members run one at a time over all images, so memory does not grow with the
    folder. Research use only: not for diagnosis.

    Examples:
        python predict.py -w weights/ -i new_images/ -o predictions/
        python predict.py -w weights/ -i new_images/ -o pred_3/ --shard 3/8      # job-array task 3 of 8
        python predict.py --merge pred_1 pred_2 pred_3 pred_4 pred_5 pred_6 pred_7 pred_8 -o predictions/
        python predict.py --config run.yaml -w other_weights/       # a flag overrides the file's value
    """

    INPUT_FIELD: ClassVar[str] = "input"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output",)

    weights: Path | None = options.member_folder(required=False)
    input: Path | None = option(
        "-i", "--image", help="an image file or a folder (recursive)", default=None, check=exists, show_default=False
    )
    output: Path = options.output("output folder (must lie outside the input)")
    ensemble_weights: Path | None = options.ensemble_weight()
    tta: int = options.tta()
    members: tuple[str, ...] = options.members()
    shard: tuple[int, int] | None = option(
        "--shard",
        help="process only the K-th of N deterministic slices of the sorted file list",
        default=None,
        parse=options.shard,
        metavar="K/N",
        show_default=False,
    )
    merge: tuple[Path, ...] = option(
        "--merge",
        help="instead of predicting, join these shard outputs' predictions.csv into -o",
        default=(),
        metavar="SHARD_DIR",
        show_default=False,
    )
    unet: Path | None = options.unet()
    batch_size: int = options.batch_size()
    engine: str = options.engine()
    precision: str = options.engine_precision()
    calibration: Path | None = options.calibration()
    engine_cache: Path | None = options.engine_cache()
    threshold: str = option(
        "--threshold",
        help="what decides Binary pred: a number compared with Scores (default 0.5: the original's results "
        "reproduce) or an operating point ensemble.py stored with the weights: youden, sens90, sens95",
        default="0.5",
    )
    score_flagged: bool = option(
        "--score-flagged",
        help="score images the input check flags too (their row still names the reason)",
        default=False,
    )
    report_limit: int = option(
        "--report-limit", help="images per table of report.html (highest scores, most uncertain)", default=50
    )
    gradcam: Path | None = option(
        "--gradcam",
        help="a visSample.py output folder: its overlays are shown in report.html beside the scores",
        default=None,
    )
    seed: int = options.seed()
    workers: int = options.workers()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.merge and (self.weights is None or self.input is None):
            raise UsageError("-w/--weight and -i/--image are required (unless --merge)")
        if self.calibration is not None and self.input is not None:
            refuse_overlap(self.calibration, self.input)


def refuse_overlap(calibration: Path, images: Path) -> None:
    """int8 calibration images must not be the images scored: the two paths may not be the same or
    lie one inside the other."""
    calibration, images = Path(calibration).resolve(), Path(images).resolve()
    if calibration == images or calibration in images.parents or images in calibration.parents:
        raise UsageError(
            f"--calibration {calibration} overlaps the images being predicted ({images}): calibrate on other "
            "images (e.g. a Validation split), never on the ones scored"
        )


@dataclass(frozen=True, kw_only=True)
class GradcamConfig(StageConfig):
    """Grad-CAM heatmaps of the ensemble for chest X-rays (a file or a folder): per image,
    gradCAM_img/<name>_gradCAM.png (input, heatmap, overlay) and the raw heatmap (<name>_heatmap.npy
    in [0, 1] and <name>_heatmap.png), fused over the members with the ensemble weights, crop-view
    maps placed back in original-image coordinates. --method lime: LIME superpixels for (green)
    and against (red) the class on the original image, every perturbed copy scored by the whole
    ensemble, lime_img/<name>_lime.png and lime_report.csv (predicted class, score); seeded
    (--seed), --num-samples copies per image, each through every member (minutes per image on a
    CPU where Grad-CAM takes seconds). Research use only: not for diagnosis.

    Example:
        python visSample.py -w weights/ -p images/ -o explanations/ --target predicted
        python visSample.py -w weights/ -p images/ -o explanations/ --method lime --num-samples 1000
    """

    INPUT_FIELD: ClassVar[str] = "path"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output",)

    weights: Path = options.member_folder()
    path: Path = option("-p", "--path", help="an image file or a folder (recursive)", required=True, check=exists)
    output: Path = options.output(default=Path("."))
    ensemble_weights: Path | None = options.ensemble_weight(" for the Grad-CAM fusion")
    members: tuple[str, ...] = options.members()
    target: str = option(
        "--target",
        help="class whose evidence is shown: predicted (each image's ensemble class) or a class of the members "
        "(binary: positive or negative; multi-class: a class name from the members' sidecars)",
        default="predicted",
    )
    method: str = option(
        "--method",
        help="gradcam (heatmaps, seconds per image) or lime (superpixels scored by the whole ensemble; "
        "--num-samples forward passes per member per image)",
        default="gradcam",
        choices=("gradcam", "lime"),
    )
    num_samples: int = option(
        "--num-samples", help="LIME: perturbed copies per image (time grows linearly)", default=1000, check=at_least(10)
    )
    seed: int = options.seed()
    unet: Path | None = options.unet()
    batch_size: int = options.batch_size(8, "images per U-Net batch and per Grad-CAM / LIME pass")
    precision: str = options.inference_precision()
    workers: int = options.workers()
    overwrite: bool = options.overwrite()


@dataclass(frozen=True, kw_only=True)
class ExportConfig(StageConfig):
    """Export ensemble members for fast inference engines: one file per member (ONNX, TFLite or a
    TensorFlow SavedModel) plus ensemble.json describing the ensemble (members, weights, combination
    rule, input contract, class names). An exported member takes the same preprocessed input as the
    Keras member (size x size x 3, ImageNet-normalised) and returns the same scores.

    Example:
        python export.py -w weights/ -o exported/ --format onnx
    """

    INPUT_FIELD: ClassVar[str] = "weights"
    OUTSIDE_INPUT: ClassVar[tuple[str, ...]] = ("output",)

    weights: Path = options.member_folder()
    output: Path = options.output("output folder for the exported members and ensemble.json")
    format: str = option(
        "--format", help="onnx, tflite or saved_model", default="onnx", choices=("onnx", "tflite", "saved_model")
    )
    members: tuple[str, ...] = options.members("only these members (default: every member with a non-zero weight)")
    ensemble_weights: Path | None = options.ensemble_weight()
