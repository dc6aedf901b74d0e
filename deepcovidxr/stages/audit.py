"""audit.py: does the ensemble read the lungs or the hospital? One split of a dataset tree scored
three ways with the U-Net's lung mask (:mod:`deepcovidxr.audit.masked_scoring`), the ensemble's
Grad-CAM mass inside the lungs against chance, what the members' pooled features know about the
site, leakage across splits, and the findings against the configured thresholds.

Writes, in the output folder: ``scores.csv`` (one row per image: the three scores, the lungs'
share, the Grad-CAM share inside them), ``audit.json`` (every section and the findings),
``audit.html`` and the model card with the findings (also refreshed beside ``-e`` when ensemble.py
wrote a card there). The members' scores are journalled as they finish, so a killed run resumes
(the journal is keyed by the files and options: anything else starts afresh). Exit code 0 whatever
the findings; ``--strict``: 3 when a check is flagged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER
from deepcovidxr.audit import findings as checks
from deepcovidxr.audit import leakage, summary
from deepcovidxr.audit.inputs import AuditSplit, audit_split, read_manifest
from deepcovidxr.audit.masked_scoring import MODES, MaskedFilms, mask_films, store_index
from deepcovidxr.config.audit_stages import AuditConfig
from deepcovidxr.contract import run_paths
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.file_report import ERROR, digest, file_stamp, stamped
from deepcovidxr.contract.layout import Split
from deepcovidxr.explain.ensemble_cam import CamSums, cam_keys, ensemble_cams, explained
from deepcovidxr.explain.gradcam import PREDICTED
from deepcovidxr.imaging import masking
from deepcovidxr.inference.ensemble import write_csv
from deepcovidxr.inference.prediction import Prediction, PredictOptions
from deepcovidxr.inference.streaming import ScoreJournal, ViewStore, score_members
from deepcovidxr.stages.common import StageResult, ensemble_options, write_model_card

log = logging.getLogger(__name__)

STATEMENT = (
    "Passing the audit is no evidence of clinical validity: it can only show some ways a model is wrong "
    "(reading the hospital, not the lungs), never that it is right."
)
FILL_NOTE = {
    "kept": "the mean gray of the pixels kept (lungs only: of the lungs; lungs removed: of the rest)",
    "image": "the mean gray of the whole film",
}
STRICT_EXIT = 3  # --strict and a check flagged


def run(config: AuditConfig) -> StageResult:
    """Mask, score, explain and check one split; write scores.csv, audit.json, the page and the
    model card."""
    weights = _weights_file(config)
    prediction = Prediction(_predict_options(config, weights))
    chosen = prediction.chosen
    data = audit_split(config.image, Split(config.split), chosen.members, tuple(prediction.classes), config.sites)
    out = run_paths.AuditPaths(config.output)
    log.info("audit: %s, %d images, %d members", data.split.value, len(data.names), len(chosen.members))
    count = len(data.names)
    store = ViewStore(out.scratch, 3 * count, prediction.views)
    sums = CamSums(store.folder / "maps", count, cam_keys(chosen.classes))
    try:
        cropper = prediction.open_cropper()
        films = mask_films(
            data.paths,
            cropper.crop,
            store,
            prediction.views,
            config.fill,
            config.batch_size,
            keep=lambda i, gray, crop: sums.place(i, gray.shape, crop.square),
        )
        scores = _mode_scores(config, out, prediction, data, store, films)
        cam, targets, features = _look(config, chosen, data, store, sums, films, scores["as_is"])
        changed, overlays = _page_images(config, data, films, scores, cam, sums, targets)
    finally:
        store.close()
    table = _rows(data, films, scores, cam, chosen.task)
    audit = _audit(config, prediction, data, films, scores, cam, features)
    write_csv(out.scores, table[0], table[1])
    write_json(out.findings, audit)
    _write_page(out, audit, changed, overlays)
    _cards(weights, chosen, out, audit)
    flagged = [f["check"] for f in audit["findings"] if f["flagged"]]
    log.info(
        "audit: %d of %d checks flagged%s; %s",
        len(flagged),
        len(audit["findings"]),
        f" ({', '.join(flagged)})" if flagged else "",
        out.page,
    )
    print(
        "\n".join(
            f"{f['check']}\t{_cell(f['value'])}\t{'FLAGGED' if f['flagged'] else 'ok'}" for f in audit["findings"]
        )
    )
    return StageResult(
        out.findings,
        {"ok": count - len(films.errors), ERROR: len(films.errors)},
        exit=STRICT_EXIT if config.strict and flagged else 0,
    )


def _weights_file(config: AuditConfig) -> Path | None:
    """``-e``; without it, the published weights when the members found are the published 24,
    else equal weights over the members found (or ``--members``), written into the output folder
    as the record of what was audited (a member trained with train.py is audited as it is)."""
    from deepcovidxr.inference.ensemble import DEFAULT_ENSEMBLE_WEIGHTS, available_members
    from deepcovidxr.scoring import weights_file

    if config.ensemble_weights is not None:
        return config.ensemble_weights
    found = [m.short_name for m, _ in available_members(config.weights, config.members)]
    if set(found) == set(weights_file.load_weights(DEFAULT_ENSEMBLE_WEIGHTS)):
        return None
    log.warning("audit: no -e given: equal weights over the %d member(s) found (%s)", len(found), ", ".join(found))
    folder = run_paths.AuditPaths(config.output).equal_weights
    return weights_file.save_weights({name: 1.0 / len(found) for name in found}, folder, with_pickle=False)[1]


def _predict_options(config: AuditConfig, ensemble_weights: Path | None) -> PredictOptions:
    return PredictOptions(
        weights=config.weights,
        ensemble_weights=ensemble_weights,
        members=config.members,
        unet=config.unet,
        batch_size=config.batch_size,
        engine=config.engine,
        precision=config.precision,
        engine_cache=config.engine_cache,
        seed=config.seed,
        score_flagged=True,  # the tree's films were checked when it was built
    )


def _mode_scores(
    config: AuditConfig,
    out: run_paths.AuditPaths,
    prediction: Prediction,
    data: AuditSplit,
    store: ViewStore,
    films: MaskedFilms,
) -> dict[str, np.ndarray]:
    """mode -> the ensemble's combined scores of every image (NaN rows for unreadable films),
    each member scoring the three modes' views at once; the members' columns are journalled."""
    chosen, count = prediction.chosen, len(data.names)
    journal = ScoreJournal(out.journal, _fingerprint(config, prediction, data))
    remaining = [(m, p) for m, p in chosen.members if not journal.has(m)]
    members, _ = score_members(
        store, 3 * count, chosen.members, config.batch_size, loader=prediction.loader(remaining), journal=journal
    )
    ready = films.ready
    found = {}
    for mode in MODES:
        rows = members[[store_index(mode, i, count) for i in ready]]
        combined = np.full((count, *chosen.task.score_shape), np.nan)
        if ready:
            combined[ready] = chosen.combine(rows)
        found[mode] = combined
    journal.close()
    return found


def _fingerprint(config: AuditConfig, prediction: Prediction, data: AuditSplit) -> str:
    """What a resumed run must share with the killed one: the films, the ensemble, the U-Net,
    the engine and the fill."""
    return digest(
        stamped(
            {
                **ensemble_options(prediction.chosen),
                "unet": list(prediction.unet),
                "engine": [prediction.engine, prediction.precision],
                "fill": config.fill,
                "size": data.size,
                "files": [[name, file_stamp(path)] for name, path in zip(data.names, data.paths, strict=True)],
            }
        )
    )


def _look(config, chosen, data: AuditSplit, store, sums, films: MaskedFilms, as_is: np.ndarray):
    """Each film's share of the ensemble's Grad-CAM (of its predicted class) inside the lungs,
    and, when there are sites to probe, the members' pooled features of the films as they are
    (read while each member is loaded for its Grad-CAM)."""
    from deepcovidxr.audit.features import pooled_features

    ready = films.ready
    probe = data.site_source is not None and len({data.sites[i] for i in ready}) >= 2
    features: list[np.ndarray] = []

    def keep_features(member, model, images) -> None:
        features.append(pooled_features(model, images, ready, config.batch_size))

    ensemble_cams(chosen, store, ready, sums, config.batch_size, keep_features if probe else None)
    cam = np.full(len(data.names), np.nan)
    targets: dict[int, str] = {}
    for i in ready:
        _, targets[i], _ = explained(as_is[i], tuple(chosen.classes), PREDICTED)
        heatmap = sums.fused(i, targets[i], films.shapes[i])
        cam[i] = masking.mass_inside(heatmap, films.mask(i))
    return cam, targets, (np.concatenate(features, axis=1) if features else None)


def _rows(data: AuditSplit, films: MaskedFilms, scores: dict, cam: np.ndarray, task) -> tuple[list[str], list[list]]:
    """scores.csv: one row per image of the split (an unreadable film keeps its row, with the
    reason in ``error`` and no scores)."""
    header = ["file", "split", "label", "y", "site", "patient_id"]
    mode_columns = task.pick(binary=list(MODES), multiclass=[f"{m}.p_{c}" for m in MODES for c in task.classes])
    header += [*mode_columns, "lung_share", "cam_in_lungs", "crop_status", "error"]
    rows = []
    for i, name in enumerate(data.names):
        base = [
            name,
            data.split.value,
            data.classes[int(data.labels[i])],
            int(data.labels[i]),
            data.sites[i],
            data.patients[i],
        ]
        if i in films.errors:
            rows.append([*base, *[""] * (len(mode_columns) + 3), films.errors[i]])
            continue
        cells = [_cell(v) for m in MODES for v in np.ravel(scores[m][i])]
        rows.append([*base, *cells, _cell(films.lung_share[i]), _cell(cam[i]), films.status[i], ""])
    return header, rows


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.6f}"


def _audit(config: AuditConfig, prediction: Prediction, data: AuditSplit, films, scores, cam, features) -> dict:
    """audit.json: what was run, each section, and the findings."""
    chosen, task = prediction.chosen, prediction.chosen.task
    ready = films.ready
    labels = data.labels[ready]
    modes = summary.mode_aucs(task, labels, {m: scores[m][ready] for m in MODES}, config.bootstrap, config.seed)
    sites = None
    if data.site_source is not None:
        sites = summary.site_section(
            task,
            labels,
            scores["as_is"][ready],
            [data.sites[i] for i in ready],
            [data.patients[i] for i in ready],
            features,
            data.site_source,
            config.probe_folds,
            config.seed,
        )
    pairs, hashed = leakage.duplicates_across_splits(config.image, data.size, config.hash_distance)
    audit = {
        "disclaimer": DISCLAIMER,
        "statement": STATEMENT,
        "task": task.pick(binary="binary", multiclass="multiclass"),
        "classes": list(chosen.classes),
        "split": data.split.value,
        "images": len(data.names),
        "errors": {data.names[i]: reason for i, reason in sorted(films.errors.items())},
        "run": {
            "members": chosen.names,
            "weights": [float(w) for w in chosen.weights],
            "rule": chosen.rule,
            "engine": f"{prediction.engine} {prediction.precision}",
            "films": f"{data.size}/uncrop",
            "fill": FILL_NOTE[config.fill],
            "mask": "the U-Net's lung mask of the film as it is (" + str(prediction.unet[0].name) + ")",
            "sites": data.site_source,
        },
        "modes": modes,
        "modes_summary": summary.modes_summary(modes),
        "attention": summary.attention_summary(cam[ready], [films.lung_share[i] for i in ready], "predicted class"),
        "sites": sites,
        "leakage": {
            "max_distance": config.hash_distance,
            "hashed": hashed,
            "near_duplicates": pairs,
            "patients_in_two_splits": leakage.patients_in_two_splits(read_manifest(config.image)),
        },
        "thresholds": config.thresholds(),
    }
    audit["findings"] = checks.findings(audit, config.thresholds())
    return audit


def _page_images(config: AuditConfig, data: AuditSplit, films: MaskedFilms, scores, cam, sums, targets):
    """The page's films, made while the Grad-CAM sums exist: those whose score moves most when the
    lungs are removed (with their three modes) and those scored highest (with their Grad-CAM)."""
    from deepcovidxr.audit.display import audit_image

    ready = films.ready
    # the score of the last class: Positive when binary (the one-unit head's only score)
    last = {m: np.asarray([float(np.ravel(scores[m][i])[-1]) for i in ready]) for m in MODES}
    moved = [ready[j] for j in np.argsort(-np.abs(last["as_is"] - last["lungs_removed"]), kind="stable")]
    highest = [ready[j] for j in np.argsort(-last["as_is"], kind="stable")]

    position = {i: j for j, i in enumerate(ready)}

    def image(i: int, with_variants: bool):
        modes = {m: float(last[m][position[i]]) for m in MODES}
        return audit_image(
            data.paths[i], data.names[i], films.mask(i), modes, sums, i, targets[i], config.fill, with_variants
        )

    return [image(i, True) for i in moved[: config.montage]], [image(i, False) for i in highest[: config.montage]]


def _write_page(out: run_paths.AuditPaths, audit: dict, changed, overlays) -> Path:
    import pandas as pd

    from deepcovidxr.reports.audit_page import write_audit_page

    table = pd.read_csv(out.scores, keep_default_na=True)
    return write_audit_page(out.folder, audit, table, changed, overlays)


def _cards(weights: Path | None, chosen, out: run_paths.AuditPaths, audit: dict) -> None:
    """The model card with the findings, in the audit's folder; and beside the weights when
    ensemble.py wrote a card there (its records sit beside it), so the card users find carries
    the audit. ``weights``: the weights file audited (None: the published weights)."""
    ensemble = None
    if weights is not None and weights.parent.name == run_paths.ENSEMBLE_RESULTS_FOLDER:
        ensemble = run_paths.EnsemblePaths(weights.parent.parent)
    if ensemble is not None:
        records = (ensemble.weights_json, ensemble.summary)
    else:  # a weights file of one's own (or the equal weights written): its JSON is the record
        json_file = weights.with_suffix(".json") if weights is not None else None
        records = (json_file if json_file is not None and json_file.is_file() else None, None)
    write_model_card(out.model_card, out.model_card_json, chosen.members, *records, audit=audit)
    if ensemble is not None and ensemble.model_card_json.is_file():
        write_model_card(ensemble.model_card, ensemble.model_card_json, chosen.members, *records, audit=audit)
        log.info("audit: the findings added to the model card beside %s", weights)
