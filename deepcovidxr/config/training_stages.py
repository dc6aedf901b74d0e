"""The configs of the stages that train members: pretrain (NIH ChestX-ray14), tuner, train and
train_all (the options train and train_all share: :class:`MemberTraining`). One frozen dataclass
per script: see :mod:`deepcovidxr.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from deepcovidxr.config import options
from deepcovidxr.config.checks import at_least, exists, positive
from deepcovidxr.config.schema import StageConfig, option
from deepcovidxr.contract.layout import CropMode, Member, infer_crop

# From random weights the validation AUC wanders near 0.5 for the first epochs; judged by it, the
# plateau rule cut the learning rate 100x within 11 epochs, before anything was learnt (measured on
# phantoms: val AUC stuck at 0.62; 0.93 with the warm-up). Pretrained backbones are judged at once.
FROM_SCRATCH_WARMUP = 10


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
    size: int = options.size()
    path: Path = option("-p", "--path", help="ChestX-ray14 folder (labels CSV, official lists, images)", required=True)
    output: Path = options.output(default=Path("."))
    weights: str | None = options.initial_weights(
        "--weights",
        "initial weights: imagenet (default; needs a download or ~/.keras/models), a keras.applications "
        "ImageNet no-top .h5 file, or none",
        default="imagenet",
    )
    epochs: int = option("--epochs", help="most epochs (early stopping after 10 flat)", default=50, check=at_least(1))
    batch_size: int = options.batch_size(16, "images per step")
    learning_rate: float = option("--learning-rate", help="SGD learning rate", default=1e-3, check=positive)
    momentum: float = option("--momentum", help="SGD Nesterov momentum", default=0.9)
    validation_fraction: float = options.held_out("--validation-fraction", "share of train_val patients", 0.1)
    seed: int = options.seed()
    download: bool = options.switch(
        "--download", help="download the 12 image archives into -p first (resumable, checksummed; about 45 GB)"
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
    same command and these variables (see docs/training.md, "Hyperparameter search"):
        KERASTUNER_TUNER_ID=chief|tuner0|tuner1...  KERASTUNER_ORACLE_IP=<chief host>  KERASTUNER_ORACLE_PORT=8000
    """

    INPUT_FIELD: ClassVar[str] = "path"

    model: str = options.model()
    size: int = options.size()
    path: Path = options.view_folder()
    output: Path = options.output(default=Path("."))
    weights: str | None = options.initial_weights(
        "--weights",
        "initial weights: nih_weight_<Model>_<size>.h5, a member .h5, a keras.applications ImageNet "
        "no-top .h5, imagenet (download) or none (default)",
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
    optimizer: str = options.choice(
        "--optimizer",
        help="sgd: SGD with Nesterov momentum, as the original; adam: Adam, which trains randomly initialised "
        "backbones far more readily (momentum is then unused)",
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

Multi-node (one process per node, TF_CONFIG set per process; see docs/training.md, "Multi-node training"):
    python train.py -m ResNet-50 -s 224 -p dataset/224/crop -o members/ --multi-worker
"""

    HYPERPARAMETER_KEYS: ClassVar[dict[str, str]] = {
        "learning_rate": "learning_rate",
        "momentum": "momentum",
        "dropout": "dropout_rate",
    }
    INPUT_FIELD: ClassVar[str] = "path"

    model: str = options.model()
    size: int = options.size("input side in pixels (224 or 331 for the ensemble)")
    path: Path = options.view_folder()
    output: Path = option("-o", "--output", help="output folder (members of all views can share it)", required=True)
    weights: str | None = options.initial_weights(
        "--weight_path",
        "initial weights: imagenet (needs a download), a file (keras.applications ImageNet no-top .h5, "
        "nih_weight_<Model>_<size>.h5 from pretrain.py, or a member .h5), or none (default: none)",
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
    multi_worker: bool = options.switch(
        "--multi-worker", help="multi-node data parallelism with MultiWorkerMirroredStrategy, configured by TF_CONFIG"
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
    weights: str | None = options.initial_weights(
        "--weight_path",
        "initial weights: a folder of nih_weight_<Model>_<size>.h5, one file, imagenet or none (default)",
    )
    hyperparameters: Path | None = option(
        "-hy",
        "--hyperparameters",
        help="a tuner.py output folder (per member) or one hyperparameters file for all",
        default=None,
        check=exists,
    )
    backend: str = options.backend()
    ray_address: str | None = options.ray_address()
    gpus_per_member: float | None = options.gpus("--gpus-per-member", "member trained")
    retries: int = option(
        "--retries",
        help="--backend ray: times a failed member is trained again (it resumes from its last epoch) before it "
        "is listed as failed",
        default=1,
        check=at_least(0),
    )
    ray_dashboard: bool = options.ray_dashboard()

    @property
    def common(self) -> dict:
        """The TrainConfig fields every member shares."""
        return {f.name: getattr(self, f.name) for f in fields(MemberTraining)}
