"""The inference stages: predict (raw files), evaluate (a dataset tree's Test split) and
ensemble (fit weights on Validation, report on Test), on the shared machinery of
:mod:`deepcovidxr.predictor`.
"""

from __future__ import annotations

import csv
import io
import logging
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER, ensemble, layout, shipped
from deepcovidxr.atomic import write_json, write_text
from deepcovidxr.batch import ERROR
from deepcovidxr.config import ensure_outside
from deepcovidxr.configs import EnsembleConfig, EvaluateConfig, PredictConfig
from deepcovidxr.cropping import segment_files
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imageio import iter_input_files
from deepcovidxr.layout import CropMode, DataTree, Label, Member, Split, ensemble_members
from deepcovidxr.predictor import MemberLoader, ViewStore, image_seed, score_members
from deepcovidxr.stages.common import StageResult, relative_name
from deepcovidxr.views import make_views

log = logging.getLogger(__name__)

# Package data (the authors' published weights), found the same way in a checkout and in a wheel.
DEFAULT_ENSEMBLE_WEIGHTS = shipped.ensemble_weights()
POSITIVE, NEGATIVE = "COVID-19 Positive", "COVID-19 Negative"
THRESHOLD = 0.5


@dataclass(frozen=True)
class Ensemble:
    """The members to run (with their files) and their weights, in canonical order."""

    members: list[tuple[Member, Path]]
    weights: np.ndarray
    rule: str = "weighted"  # stored with the weights (ensemble.load_rule)

    @property
    def names(self) -> list[str]:
        return [m.short_name for m, _ in self.members]

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Member scores (images, members) -> one score per image by the ensemble's rule."""
        return ensemble.combine_rule(scores, self.rule, self.weights)


def resolve_ensemble(weights_dir: Path, ensemble_weights: Path | None, subset: tuple[str, ...] = ()) -> Ensemble:
    """Members with a non-zero weight (optionally a chosen subset, weights renormalised), each
    with its ``<Prefix>_<size>_up_<crop>.h5`` under ``weights_dir``; missing files are one error
    listing them all."""
    source = ensemble_weights or DEFAULT_ENSEMBLE_WEIGHTS
    by_name = ensemble.load_weights(source)
    chosen = [m for m in ensemble_members() if by_name.get(m.short_name, 0.0) > 0]
    if subset:
        wanted = {Member.parse(s).short_name for s in subset}
        chosen = [m for m in chosen if m.short_name in wanted]
        if not chosen:
            raise UsageError(f"none of {', '.join(subset)} has a non-zero ensemble weight")
    missing = [m.legacy_filename for m in chosen if not (Path(weights_dir) / m.legacy_filename).is_file()]
    if missing:
        raise MissingInputError(f"{weights_dir}: missing member file(s): {', '.join(missing)}")
    weights = np.array([by_name[m.short_name] for m in chosen], np.float64)
    if subset:
        weights = weights / weights.sum()
    rule = ensemble.load_rule(source)
    if rule != "weighted":
        log.info("ensemble rule %s (stored with %s)", rule, source)
    return Ensemble([(m, Path(weights_dir) / m.legacy_filename) for m in chosen], weights, rule)


def _views_of(members: list[tuple[Member, Path]]) -> tuple:
    return tuple(dict.fromkeys((m.size, m.crop) for m, _ in members))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, out.getvalue())
    return path


# ---- predict ----------------------------------------------------------------------------------


PREDICTION_COLUMNS = ["Filenames", "Scores", "Binary pred", "Predictions", "crop_status", "error"]


def shard_files(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Every n-th file of the sorted list, starting at the k-th: deterministic for job arrays."""
    if shard is None:
        return files
    k, n = shard
    if not 1 <= k <= n:
        raise UsageError(f"--shard {k}/{n}: K must be between 1 and N")
    return files[k - 1 :: n]


def run_predict(config: PredictConfig) -> StageResult | Path:
    from deepcovidxr.lungs.cropper import LungCropper, locate
    from deepcovidxr.reports import QcCollector, QcItem

    if config.merge:
        return merge_predictions(list(config.merge), config.output)
    ensure_outside(config.input, config.output)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    files = shard_files(list(iter_input_files(config.input)), config.shard)
    names = [relative_name(f, config.input).as_posix() for f in files]
    log.info(
        "predict: %d files, %d members%s",
        len(files),
        len(chosen.members),
        f", shard {config.shard[0]}/{config.shard[1]}" if config.shard else "",
    )
    loader = MemberLoader(chosen.members, _load).start()  # the first member builds while images are cropped
    store = ViewStore(layout.scratch_dir(config.output), len(files), _views_of(chosen.members))
    status: dict[int, tuple[str, str]] = {}
    try:

        class Rows:  # the segment loop's report interface, kept in memory
            def add(self, row: dict) -> None:
                status[row["index"]] = (row["status"], row.get("error", ""))

        def handle(item: tuple, gray: np.ndarray, probability: np.ndarray) -> tuple[dict, QcItem]:
            _, index = item
            result = locate(gray, probability)
            store.put(index, make_views(gray, result.square, _views_of(chosen.members)))
            return {"index": index, "status": result.status.value}, QcItem.of(
                names[index], gray, result.square, result.status.value
            )

        def failed(item: tuple, reason: str) -> dict:
            return {"index": item[1], "status": ERROR, "error": reason}

        cropper = LungCropper(config.unet, batch_size=config.batch_size, precision=config.precision)
        segment_files(
            [(f, i) for i, f in enumerate(files)],
            cropper,
            handle,
            failed,
            Rows(),
            QcCollector(limit=0),
            workers=config.workers,
            desc="crop",
        )
        del cropper
        seeds = np.array([image_seed(n, config.seed) for n in names], np.int64)
        scores, timings = score_members(
            store, len(files), chosen.members, config.batch_size, config.tta, seeds, loader=loader
        )
    finally:
        store.close()
    ensemble_scores = chosen.combine(scores)
    rows = []
    for index, name in enumerate(names):
        crop_status, error = status.get(index, (ERROR, "not processed"))
        if crop_status == ERROR:
            rows.append([name, "", "", "", crop_status, error, *[""] * len(chosen.members)])
            continue
        score = float(ensemble_scores[index])
        positive = score >= THRESHOLD
        rows.append(
            [
                name,
                f"{score:.6f}",
                int(positive),
                POSITIVE if positive else NEGATIVE,
                crop_status,
                "",
                *(f"{s:.6f}" for s in scores[index]),
            ]
        )
    path = _write_csv(config.output / layout.PREDICTIONS_CSV, PREDICTION_COLUMNS + chosen.names, rows)
    write_json(
        config.output / layout.PREDICTIONS_INFO,
        {
            "disclaimer": DISCLAIMER,
            "members": chosen.names,
            "weights": chosen.weights.tolist(),
            "rule": chosen.rule,
            "tta": config.tta,
            "threshold": THRESHOLD,
            "shard": config.shard,
            "files": len(files),
            "timings": timings,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    )
    errors = sum(1 for r in rows if r[4] == ERROR)
    for row in rows:
        if row[4] != ERROR:
            print(f"{row[0]}\t{row[1]}\t{row[3]}")
    log.info("predict: %d scored, %d errors; %s", len(rows) - errors, errors, path)
    return StageResult(path, {"ok": len(rows) - errors, ERROR: errors})


def _load(path: Path, member: Member):
    from deepcovidxr.models import load_member

    return load_member(path, member)


def merge_predictions(shards: list[Path], output: Path) -> Path:
    """Join shard folders' predictions.csv into one, sorted by file name; duplicates are an error."""
    header: list[str] | None = None
    rows: dict[str, list[str]] = {}
    for shard in shards:
        path = shard / layout.PREDICTIONS_CSV if shard.is_dir() else shard
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            this_header = next(reader)
            if header is not None and this_header != header:
                raise UsageError(f"{path}: columns differ from the first shard's")
            header = this_header
            for row in reader:
                if row[0] in rows:
                    raise UsageError(f"{row[0]} appears in more than one shard")
                rows[row[0]] = row
    if header is None:
        raise UsageError("no shards given")
    return _write_csv(Path(output) / layout.PREDICTIONS_CSV, header, [rows[k] for k in sorted(rows)])


# ---- dataset tree (evaluate, ensemble) ---------------------------------------------------------


@dataclass(frozen=True)
class SplitImages:
    names: list[str]  # "<Label>/<file>", the same in every view
    labels: np.ndarray


def load_split(
    root: Path, split: Split, members: list[tuple[Member, Path]], store_folder: Path
) -> tuple[SplitImages, ViewStore]:
    """Read one split of the tree for every view the members need, pairing views by relative
    path (never by position); a file missing from or extra in a view is an error naming it.
    Listing and decoding are the training pipeline's (hidden files skipped, ``read_view``)."""
    from deepcovidxr.data import IMAGE_SUFFIXES
    from deepcovidxr.imageio import list_images, read_view

    tree = DataTree(root)
    views = _views_of(members)
    listing: dict[tuple, list[str]] = {}
    for size, crop in views:
        folder = tree.split_dir(size, crop, split)
        names = (
            sorted(
                p.relative_to(folder).as_posix()
                for label in Label
                if (folder / label.value).is_dir()
                for p in list_images(folder / label.value, IMAGE_SUFFIXES)
            )
            if folder.is_dir()
            else None
        )
        if names is None:
            raise MissingInputError(f"missing folder {folder}")
        listing[(size, crop)] = names
    reference_view, reference = next(iter(listing.items()))
    for view, names in listing.items():
        if names != reference:
            extra, missing = sorted(set(names) - set(reference)), sorted(set(reference) - set(names))
            raise UsageError(
                f"{split.value}: views {reference_view[0]}/{reference_view[1].value} and {view[0]}/{view[1].value} "
                f"hold different images; only in the second: {extra[:5]}; missing from it: {missing[:5]}"
            )
    if not reference:
        raise UsageError(f"no images in the {split.value} split of {root}")
    store = ViewStore(store_folder, len(reference), views)
    for (size, crop), array in store.arrays.items():
        folder = tree.split_dir(size, crop, split)
        for index, name in enumerate(reference):
            array[index] = read_view(folder / name, size)
    labels = np.array([Label(n.split("/")[0]).index for n in reference], np.float64)
    return SplitImages(reference, labels), store


def score_split(
    root: Path, split: Split, chosen: Ensemble, scratch: Path, batch_size: int, tta: int = 0, seed: int = 0
) -> tuple[SplitImages, np.ndarray]:
    images, store = load_split(root, split, chosen.members, scratch)
    try:
        seeds = np.array([image_seed(n, seed) for n in images.names], np.int64)
        scores, _ = score_members(
            store, len(images.names), chosen.members, batch_size, tta, seeds, loader=MemberLoader(chosen.members, _load)
        )
    finally:
        store.close()
    return images, scores


__all__ = ["CropMode", "merge_predictions", "resolve_ensemble", "run_predict", "score_split", "shard_files"]


# ---- evaluate ---------------------------------------------------------------------------------


def run_evaluate(config: EvaluateConfig) -> Path:
    from deepcovidxr import metrics, plots

    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    out = layout.EvaluationPaths(Path(config.output))
    results = out.folder
    images, scores = score_split(
        config.image, Split.TEST, chosen, out.scratch, config.batch_size, config.tta, config.seed
    )
    combined = chosen.combine(scores)
    rows = []
    for name, label, score, member_row in zip(images.names, images.labels, combined, scores, strict=True):
        positive = score >= THRESHOLD
        rows.append(
            [
                name,
                f"{score:.6f}",
                int(positive),
                POSITIVE if positive else NEGATIVE,
                int(label),
                *(f"{s:.6f}" for s in member_row),
            ]
        )
    path = _write_csv(
        out.predictions,
        ["Filenames", "Scores", "Binary prediction", "Predictions", "Actual", *chosen.names],
        rows,
    )
    summary = metrics.evaluate(images.labels, combined, n_boot=config.bootstrap, seed=config.seed)
    summary["member_auc"] = {
        name: metrics.auc_or_nan(images.labels, scores[:, i]) for i, name in enumerate(chosen.names)
    }
    write_json(
        out.metrics,
        {
            "disclaimer": DISCLAIMER,
            "split": "Test",
            "tta": config.tta,
            "ensemble_weights": dict(zip(chosen.names, chosen.weights.tolist(), strict=True)),
            "ensemble_rule": chosen.rule,
            **summary,
        },
    )
    figures = plots.evaluation_plots(results, images.labels, combined, THRESHOLD, "Ensemble on Test")
    from deepcovidxr.tensorboard_images import write_images

    # The same figures in TensorBoard, beside the members' training curves (tensorboard --logdir).
    write_images(results / layout.TENSORBOARD, {f.stem: f for f in figures})
    log.info(
        "Test: AUC %.4f (95%% CI %.4f-%.4f), sensitivity %.3f, specificity %.3f at 0.5; %s",
        summary["auc"],
        *summary["auc_ci95"],
        summary["at_0.5"]["sensitivity"],
        summary["at_0.5"]["specificity"],
        path,
    )
    return path


# ---- ensemble -------------------------------------------------------------------------------


def available_members(folder: Path, subset: tuple[str, ...] = ()) -> list[tuple[Member, Path]]:
    """Canonical-order members whose files are in ``folder`` (or the chosen subset, all required)."""
    wanted = [Member.parse(s) for s in subset] if subset else list(ensemble_members())
    found = [(m, Path(folder) / m.legacy_filename) for m in wanted if (Path(folder) / m.legacy_filename).is_file()]
    missing = [m.legacy_filename for m in wanted if not (Path(folder) / m.legacy_filename).is_file()]
    if subset and missing:
        raise MissingInputError(f"{folder}: missing member file(s): {', '.join(missing)}")
    if not found:
        raise MissingInputError(f"{folder}: no member files (<Prefix>_<size>_up_<crop>.h5)")
    if missing:
        log.warning("%d of 24 members have no file in %s; ensembling the %d present", len(missing), folder, len(found))
    return found


def run_ensemble(config: EnsembleConfig) -> Path:
    """Fit the combination on Validation (never on Test) and report every member and the
    ensemble on Test."""
    from deepcovidxr import metrics, plots

    if config.method not in ensemble.METHODS:
        raise UsageError(f"unknown method {config.method!r}; choose one of {ensemble.METHODS}")
    members = available_members(config.weights, config.members)
    names = [m.short_name for m, _ in members]
    out = layout.EnsemblePaths(Path(config.output))
    results, scratch = out.folder, out.scratch
    candidate = Ensemble(members, np.full(len(members), 1.0 / len(members)))
    validation, val_scores = score_split(config.data, Split.VALIDATION, candidate, scratch, config.batch_size)
    if config.method == "weighted":
        search = ensemble.dirichlet_search(val_scores, validation.labels, draws=config.draws, seed=config.seed)
        weights = np.asarray(search.weights, np.float64)
        log.info("Dirichlet search (%d draws, seed %d): validation AUC %.4f", config.draws, config.seed, search.auc)
    else:
        weights = candidate.weights
    pickle_path, json_path = ensemble.save_weights(
        dict(zip(names, weights.tolist(), strict=True)), results, rule=config.method
    )
    test, test_scores = score_split(config.data, Split.TEST, candidate, scratch, config.batch_size)
    combined = ensemble.combine_rule(test_scores, config.method, weights if config.method == "weighted" else None)
    member_rows = [
        [name, f"{metrics.auc_or_nan(test.labels, test_scores[:, i]):.6f}", f"{weights[i]:.6f}"]
        for i, name in enumerate(names)
    ]
    summary = metrics.evaluate(test.labels, combined, seed=config.seed)
    member_rows.append([f"ensemble ({config.method})", f"{summary['auc']:.6f}", "1.000000"])
    _write_csv(out.member_auc, ["member", "test_auc", "weight"], member_rows)
    _write_csv(
        out.ensemble_predictions,
        ["Filenames", "Scores", "Binary prediction", "Actual"],
        [
            [n, f"{s:.6f}", int(s >= THRESHOLD), int(y)]
            for n, s, y in zip(test.names, combined, test.labels, strict=True)
        ],
    )
    _write_csv(
        out.individual_predictions,
        ["Filenames", *names],
        [[n, *(f"{v:.6f}" for v in row)] for n, row in zip(test.names, test_scores, strict=True)],
    )
    plots.evaluation_plots(results, test.labels, combined, THRESHOLD, f"Ensemble ({config.method}) on Test")
    write_json(
        out.summary,
        {
            "disclaimer": DISCLAIMER,
            "method": config.method,
            "fitted_on": "Validation",
            "reported_on": "Test",
            "draws": config.draws,
            "seed": config.seed,
            "weights": dict(zip(names, weights.tolist(), strict=True)),
            "test": summary,
        },
    )
    for name, auc, _ in member_rows:
        print(f"{name}\t{auc}")
    log.info("ensemble weights: %s and %s", pickle_path, json_path)
    return json_path
