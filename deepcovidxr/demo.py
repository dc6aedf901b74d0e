"""The embedded default run: the pipeline on bundled synthetic phantoms, no data needed.

phantoms (with true lung masks and labels) -> dataset tree (U-Net crop + Lanczos resize, patient
split) -> crop check against the true masks -> ``index.html`` listing what a reader opens first.
"""

from __future__ import annotations

import csv
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER, layout
from deepcovidxr.atomic import write_text
from deepcovidxr.dataset import DatasetConfig, run_build_dataset
from deepcovidxr.imageio import read_gray
from deepcovidxr.layout import CropMode, DataTree
from deepcovidxr.reports import write_view_strip
from deepcovidxr.synthetic import write_phantom_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    output: Path = Path("demo_output")
    count: int = 48
    seed: int = 0
    sizes: tuple[int, ...] = layout.SIZES
    unet: Path | None = None
    workers: int = 4


@dataclass(frozen=True)
class DemoResult:
    report: Path  # index.html
    exit_code: int


def crop_check(manifest: Path, phantoms: Path, destination: Path) -> dict[str, float]:
    """Share of each phantom's true lung pixels inside its square crop, from the manifest boxes."""
    rows = [r for r in csv.DictReader(manifest.open(newline="")) if r["status"] != "error"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "status", "lung_inside_crop"])
    coverages = []
    for row in rows:
        truth = read_gray(phantoms / row["file"].replace("images/", "masks/", 1)) > 127
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        coverage = float(truth[y0:y1, x0:x1].sum() / max(1, truth.sum()))
        coverages.append(coverage)
        writer.writerow([row["file"], row["status"], f"{coverage:.4f}"])
    write_text(destination, out.getvalue())
    values = np.array(coverages) if coverages else np.zeros(1)
    return {
        "images": len(coverages),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "at_least_99": float((values >= 0.99).mean()),
    }


def write_index(
    destination: Path, title: str, sections: list[tuple[str, list[tuple[str, str]]]], notes: list[str]
) -> Path:
    """A plain HTML page: per section, links (images are shown inline) with a caption."""
    base = destination.parent
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%;border:1px solid #ccc}"
        ".warn{background:#fff3cd;padding:.6em;border:1px solid #e0c36c}</style>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='warn'>{html.escape(DISCLAIMER)}</p>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for heading, entries in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><ul>")
        for path, caption in entries:
            link = html.escape(Path(path).relative_to(base).as_posix() if Path(path).is_absolute() else path)
            parts.append(f"<li><a href='{link}'>{link}</a>: {html.escape(caption)}</li>")
            if link.endswith(".png"):
                parts.append(f"<br><a href='{link}'><img src='{link}' alt='{link}'></a>")
        parts.append("</ul>")
    write_text(destination, "\n".join(parts) + "\n")
    return destination


def run_demo(config: DemoConfig) -> DemoResult:
    output = config.output
    phantoms = output / "phantoms"
    labels = write_phantom_set(phantoms, config.count, seed=config.seed, patients=max(3, config.count * 2 // 3))
    log.info("demo: %d synthetic phantoms in %s", config.count, phantoms)
    dataset = output / "dataset"
    built = run_build_dataset(
        DatasetConfig(
            images=phantoms,
            labels=labels,
            output=dataset,
            unet=config.unet,
            sizes=config.sizes,
            seed=config.seed,
            workers=config.workers,
        )
    )
    check = crop_check(built.report, phantoms, output / "crop_check.csv")
    log.info(
        "demo: crops keep %.1f %% of the true lung on average (worst %.1f %%)", 100 * check["mean"], 100 * check["min"]
    )
    tree = DataTree(dataset)
    examples = sorted(p for p in (tree.view_dir(config.sizes[0], CropMode.UNCROP)).rglob("*.png"))[:6]
    views = [
        [
            tree.view_dir(s, c) / e.relative_to(tree.view_dir(config.sizes[0], CropMode.UNCROP))
            for s in config.sizes
            for c in CropMode
        ]
        for e in examples
    ]
    strip = write_view_strip(output / "views.png", views, [f"{s} {c.value}" for s in config.sizes for c in CropMode])
    index = write_index(
        output / "index.html",
        "deepcovidxr demo run (synthetic phantoms)",
        [
            (
                "Lung crops",
                [
                    (str(dataset / layout.QC_MONTAGE), "U-Net square crop boxes; non-ok crops come first"),
                    (str(strip), "the four views the ensemble members see, per image"),
                    (
                        str(output / "crop_check.csv"),
                        f"true lung pixels inside each crop: mean {check['mean']:.3f}, "
                        f"worst {check['min']:.3f}, share >= 0.99: {check['at_least_99']:.2f}",
                    ),
                ],
            ),
            (
                "Dataset tree",
                [
                    (str(built.report), "per image: label, patient, split, crop status and box"),
                    (str(dataset), "{224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive}"),
                ],
            ),
            ("Inputs", [(str(labels), "phantom labels and patient ids"), (str(phantoms / "masks"), "true lung masks")]),
        ],
        notes=[
            f"{config.count} phantoms, seed {config.seed}. Crop statuses: "
            + ", ".join(f"{k} {v}" for k, v in sorted(built.counts.items()))
        ],
    )
    return DemoResult(index, built.exit_code)
