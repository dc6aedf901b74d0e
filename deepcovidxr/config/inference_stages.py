"""The configs of the stages that run the ensemble: ensemble (fit the weights), evaluate, predict,
visSample (Grad-CAM, LIME) and export. One frozen dataclass per script: see :mod:`deepcovidxr.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from deepcovidxr.config import options
from deepcovidxr.config.checks import at_least, exists
from deepcovidxr.config.schema import StageConfig, option
from deepcovidxr.errors import UsageError


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
    data: Path = options.dataset_root("-d", "--data", splits="{Validation,Test}")
    output: Path = options.output(default=Path("."))
    method: str = options.choice(
        "--method",
        help="weighted: Dirichlet search on Validation (default); mean: soft mean; vote: hard vote; max",
        choices=("weighted", "mean", "vote", "max"),
    )
    draws: int = option("--draws", help="Dirichlet draws", default=10_000, check=at_least(1))
    calibrate: str = options.choice(
        "--calibrate",
        help="score -> probability map fitted on Validation and stored with the weights (binary ensembles): "
        "platt (default: best held-out Brier/ECE in our comparison), temperature, isotonic, identity (none)",
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
    image: Path = options.dataset_root("-i", "--image", splits="Test")
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
    backend: str = options.backend()
    ray_address: str | None = options.ray_address()
    ray_workers: int = options.ray_workers()
    gpus_per_worker: float | None = options.gpus("--gpus-per-worker", "scoring actor")
    ray_dashboard: bool = options.ray_dashboard()


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
    score_flagged: bool = options.switch(
        "--score-flagged", help="score images the input check flags too (their row still names the reason)"
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
    backend: str = options.backend()
    ray_address: str | None = options.ray_address()
    ray_workers: int = options.ray_workers()
    gpus_per_worker: float | None = options.gpus("--gpus-per-worker", "scoring actor")
    ray_dashboard: bool = options.ray_dashboard()

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
    method: str = options.choice(
        "--method",
        help="gradcam (heatmaps, seconds per image) or lime (superpixels scored by the whole ensemble; "
        "--num-samples forward passes per member per image)",
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
