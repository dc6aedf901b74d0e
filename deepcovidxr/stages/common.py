"""What every stage shares: its result, the relative name of an input, and the refusal of outputs
that would overwrite each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deepcovidxr.contract import layout
from deepcovidxr.contract.file_report import ERROR, BatchReport


@dataclass(frozen=True)
class StageResult:
    """What every stage's ``run`` returns: ``report``, its main output (a report, a CSV, a
    checkpoint: the path ``cli`` prints), ``counts`` of its rows by status (any ``error`` makes the
    exit code 1) and ``files``, other outputs a caller may want (export.py's member files)."""

    report: Path
    counts: dict[str, int] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    exit: int = 0  # a stage's own code, taking precedence over 1 (audit.py --strict: 3 when a check is flagged)

    @property
    def exit_code(self) -> int:
        return self.exit or (1 if self.counts.get(ERROR, 0) else 0)


def refuse_missing_ray(config) -> None:
    """``--backend ray`` without Ray installed: one line naming the extra (exit 2), before any work."""
    if config.backend == "ray":
        from deepcovidxr.runtime.ray_cluster import import_ray

        import_ray()


def relative_name(path: Path, root: Path) -> Path:
    return Path(path.name) if root.is_file() else path.relative_to(root)


def crop_options(config) -> dict:
    """What shapes a crop besides its input, for a stage's rerun fingerprint: the U-Net file and
    its precision (the box follows the mask). Every stage that crops adds these to its own options."""
    from deepcovidxr.lungs.cropper import default_unet_path

    return {"unet": config.unet or default_unet_path(), "precision": config.precision}


def ensemble_options(chosen) -> dict:
    """What shapes an ensemble's scores, for a stage's rerun fingerprint: every member file (its
    stamp: a retrained member is another option), the weights, the rule and the classes."""
    return {
        "members": [path for _, path in chosen.members],
        "weights": [round(float(w), 12) for w in chosen.weights],
        "rule": chosen.rule,
        "classes": list(chosen.classes),
    }


def explanation_options(config, chosen) -> dict:
    """The explanation stages' (Grad-CAM, LIME) fingerprint options: the crop, the ensemble, the
    class explained, and LIME's sampling (its seed and number of copies)."""
    lime = {"num_samples": config.num_samples, "seed": config.seed} if config.method == "lime" else {}
    return {**crop_options(config), **ensemble_options(chosen), "target": config.target, "method": config.method} | lime


def report_page(folder: Path, title: str, config, chosen, **sections) -> Path:
    """report.html of an ensemble stage (evaluate.py, predict.py): what was run (the options, the
    members, the engine) and ``sections`` (:func:`deepcovidxr.reports.page.write_report`'s)."""
    from deepcovidxr.reports.page import write_report

    engine = f"{config.engine} {config.precision}"
    return write_report(folder, title, config=config.options(), members=chosen.names, engine=engine, **sections)


def refuse_collisions(report: BatchReport, outputs: dict[str, list[Path]]) -> dict[str, str]:
    """Error rows for the inputs whose outputs would overwrite another input's (never written)."""
    clashes = layout.collisions(outputs)
    for name, reason in clashes.items():
        report.add({"file": name, "status": ERROR, "error": reason})
    return clashes


def crop_for_explanation(todo: list[tuple], config, report: BatchReport, keep) -> list[str]:
    """The explanation stages' crop (Grad-CAM, LIME): ``todo`` items ``(path, name)`` through the
    U-Net in batches; ``keep(item, gray, crop, input_check)`` keeps what the stage needs. Failures
    become final rows of ``report`` (the explanation writes the others); returns the names cropped,
    in ``todo``'s order."""
    from deepcovidxr.lungs.cropper import LungCropper
    from deepcovidxr.lungs.pipeline import crop_images

    if not todo:
        return []
    cropper = LungCropper(config.unet, batch_size=config.batch_size, precision=config.precision)
    outcome = crop_images(todo, cropper, keep, config.workers)
    for name, (status, error) in outcome.items():
        if status == ERROR:
            report.add({"file": name, "status": ERROR, "error": error})
    return [name for _, name in todo if outcome.get(name, (ERROR, ""))[0] != ERROR]


def plan_outputs(source: Path, output: Path, report: BatchReport, names) -> tuple[int, list[tuple[Path, str]]]:
    """The per-image stages' plan: every input under ``source`` with its outputs (``names(relative)``
    -> paths relative to ``output``); clashing outputs become error rows (never written) and inputs
    whose outputs and finished report row exist are skipped (resume). Returns (inputs found, todo)."""
    from deepcovidxr.imaging.reader import iter_input_files

    planned = {}
    for path in iter_input_files(source):
        relative = relative_name(path, source)
        planned[relative.as_posix()] = (path, [output / n for n in names(relative)])
    clashes = refuse_collisions(report, {name: outputs for name, (_, outputs) in planned.items()})
    todo = [
        (path, name)
        for name, (path, outputs) in planned.items()
        if name not in clashes and not report.finished(name, *outputs, source=path)
    ]
    return len(planned), todo


def write_model_card(
    md_path: Path, json_path: Path, members: list, weights_json: Path | None, summary_json: Path | None, audit=None
) -> tuple[Path, Path]:
    """MODEL_CARD.md and model_card.json, read from the records (the ensemble's weights JSON and
    summary.json when there are, the members' own, audit.json's content when given); the digests
    come from here because the digest cache is a layer above the card's."""
    from deepcovidxr.contract import shipped
    from deepcovidxr.reports import model_card
    from deepcovidxr.runtime.digest import file_sha256

    # a member scored from elsewhere (the tests' stand-ins) has no file to digest: the card says null
    digests = {m.short_name: file_sha256(path) for m, path in members if Path(path).is_file()}
    unet = shipped.unet_weights()
    if unet.is_file():
        digests["unet"] = file_sha256(unet)
    card = model_card.build(members, digests, weights_json, summary_json, audit=audit)
    return model_card.write(md_path, json_path, card)
