"""``report.html``: one self-contained page per run that a reader opens first.

The page holds the research-use disclaimer, what was run (configuration, members, engine), metrics
with their intervals, figures, the images not scored (unreadable, failed input check) with the
reason, and tables of images with thumbnails (for prediction: the highest scores and the most
uncertain first, with the Grad-CAM overlay where there is one).

Everything the page shows lives inside its folder: thumbnails and overlay previews are written to
``report_files/`` beside the page, and a figure outside the folder is copied there, so every link is
relative to the page and the folder can be copied or zipped elsewhere intact. Every text is escaped
with ``html.escape`` and every link percent-encoded. Files are written atomically (the page last).

Use the builder::

    page = Report(folder, "Prediction")
    page.run_info(config, members, engine="keras")
    page.metrics("Test metrics", [Metric("AUC", 0.91, 0.88, 0.94)])
    page.figures("Figures", [Figure(folder / "roc.png", "ROC curve")])
    page.failures([Failure("a.dcm", "not a DICOM file")])
    page.images("Highest scores", rows, sort_by="score", limit=50)
    page.write()  # -> folder / "report.html"

or :func:`write_report` for the usual layout in one call.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deepcovidxr import DISCLAIMER, __version__
from deepcovidxr.contract.atomic import atomic_path, write_bytes, write_text

logger = logging.getLogger(__name__)

PAGE = "report.html"
FILES = "report_files"
THUMBNAIL = 160  # px, longest side of an X-ray thumbnail
OVERLAY = 480  # px, longest side of a Grad-CAM overlay preview
SORT_KEYS = ("score", "uncertainty")

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.warn{background:#fff3cd;padding:.6em .8em;border:1px solid #e0c36c;font-weight:600}
table{border-collapse:collapse;margin:.5em 0} th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top} th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0;max-width:560px} figure img{max-width:100%;
border:1px solid #ccc} figcaption{font-size:.9em;color:#555} td img{display:block} .muted{color:#777}
code{font-size:.9em}
"""


# ------------------------------------------------------------------------------------------ entries


@dataclass(frozen=True)
class Metric:
    """One row of a metrics table: a value with an optional interval (``low``, ``high``)."""

    name: str
    value: float | int | str | None
    low: float | None = None
    high: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG (or JPEG) to show, with its caption."""

    path: Path
    caption: str = ""


@dataclass(frozen=True)
class Failure:
    """An image that was not scored (unreadable, or flagged by the input check), and why."""

    file: str
    reason: str


@dataclass(frozen=True)
class ImageRow:
    """One image in an image table. ``image`` is the input file (a thumbnail is made from it; DICOM
    and 16-bit files are read by :func:`deepcovidxr.imaging.reader.read_gray`), ``overlay`` an optional
    Grad-CAM picture. ``extra``: more columns, shown as text."""

    name: str
    image: Path | None = None
    score: float | None = None
    uncertainty: float | None = None
    label: str | None = None
    prediction: str | None = None
    overlay: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ helpers


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _text(value)
    if isinstance(value, int):
        return str(value)
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:48] or "image"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


class Report:
    """Builds ``report.html`` in ``folder`` section by section (in call order); :meth:`write` writes it."""

    def __init__(self, folder: Path, title: str, *, thumbnail: int = THUMBNAIL, overlay: int = OVERLAY) -> None:
        self.folder = Path(folder)
        self.title = title
        self.thumbnail_size = thumbnail
        self.overlay_size = overlay
        self._parts: list[str] = []
        self._made: dict[tuple[str, int], str | None] = {}  # (source, size) -> link (None: unreadable)
        self._count = 0

    # ------------------------------------------------------------------ files beside the page

    @property
    def files(self) -> Path:
        return self.folder / FILES

    def _link(self, path: Path) -> str:
        relative = Path(os.path.relpath(Path(path).resolve(), self.folder.resolve())).as_posix()
        return html.escape(quote(relative), quote=True)

    def _next_name(self, stem: str, suffix: str) -> Path:
        self._count += 1
        return self.files / f"{self._count:04d}_{_safe_stem(stem)}{suffix}"

    def _preview(self, source: Path, size: int, gray: bool) -> str | None:
        """Link to a downsized JPEG copy of ``source`` in ``report_files/`` (made once per source and
        size), or None when the file cannot be read (logged)."""
        key = (str(Path(source).resolve()), size)
        if key in self._made:
            return self._made[key]
        from PIL import Image

        from deepcovidxr.imaging.pixels import ImageReadError

        try:
            if gray:
                from deepcovidxr.imaging.reader import read_gray

                picture = Image.fromarray(read_gray(source))
            else:
                with Image.open(source) as opened:
                    picture = opened.convert("RGB")
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=88)
        except (ImageReadError, OSError, ValueError) as error:  # a bad preview must not stop the report
            logger.warning("report: no preview of %s: %s", source, error)
            self._made[key] = None
            return None
        destination = self._next_name(Path(source).name, ".jpg")
        write_bytes(destination, buffer.getvalue())
        self._made[key] = link = self._link(destination)
        return link

    def _figure_link(self, path: Path) -> str:
        """Link to a figure: in place when inside the folder, else a copy in ``report_files/``."""
        path = Path(path)
        if _inside(path, self.folder):
            return self._link(path)
        key = (str(path.resolve()), 0)
        if key not in self._made:
            destination = self._next_name(path.name, path.suffix.lower())
            destination.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(destination) as tmp:
                shutil.copyfile(path, tmp)
            self._made[key] = self._link(destination)
        return self._made[key] or ""

    # ------------------------------------------------------------------------------ sections

    def heading(self, text: str) -> Report:
        self._parts.append(f"<h2>{_text(text)}</h2>")
        return self

    def paragraph(self, text: str) -> Report:
        self._parts.append(f"<p>{_text(text)}</p>")
        return self

    def run_info(
        self,
        config: Mapping[str, Any],
        members: Sequence[str] = (),
        engine: str | None = None,
        heading: str = "What was run",
    ) -> Report:
        """The stage's options (a key/value table), the ensemble members and the inference engine."""
        rows = [("deepcovidxr", __version__)]
        if engine is not None:
            rows.append(("engine", engine))
        if members:
            rows.append((f"members ({len(members)})", ", ".join(members)))
        for key, value in config.items():
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((str(key), shown))
        body = "".join(f"<tr><th>{_text(k)}</th><td><code>{_text(v)}</code></td></tr>" for k, v in rows)
        self._parts.append(f"<h2>{_text(heading)}</h2><table class='run'>{body}</table>")
        return self

    def metrics(self, heading: str, rows: Sequence[Metric], level: str = "95% CI") -> Report:
        """A table: metric, value, interval (``low - high``), note."""
        if not rows:
            return self
        body = []
        for m in rows:
            interval = ""
            if m.low is not None or m.high is not None:
                interval = f"{_number(m.low)} &ndash; {_number(m.high)}"
            body.append(
                f"<tr><td>{_text(m.name)}</td><td class='num'>{_number(m.value)}</td>"
                f"<td class='num'>{interval}</td><td>{_text(m.note)}</td></tr>"
            )
        self._parts.append(
            f"<h2>{_text(heading)}</h2><table class='metrics'><tr><th>metric</th><th>value</th>"
            f"<th>{_text(level)}</th><th>note</th></tr>{''.join(body)}</table>"
        )
        return self

    def figures(self, heading: str, figures: Sequence[Figure]) -> Report:
        """Pictures side by side, each linking to its full-size file."""
        if not figures:
            return self
        cells = []
        for f in figures:
            link = self._figure_link(f.path)
            alt = _text(f.caption or Path(f.path).name)
            cells.append(
                f"<figure><a href='{link}'><img src='{link}' alt='{alt}'></a>"
                f"<figcaption>{_text(f.caption)}</figcaption></figure>"
            )
        self._parts.append(f"<h2>{_text(heading)}</h2><div class='figs'>{''.join(cells)}</div>")
        return self

    def failures(self, rows: Sequence[Failure], heading: str = "Images not scored") -> Report:
        """Every failed image with its reason (a line saying there were none when ``rows`` is empty)."""
        self._parts.append(f"<h2>{_text(heading)} ({len(rows)})</h2>")
        if not rows:
            self._parts.append("<p class='muted'>None: every image passed.</p>")
            return self
        body = "".join(f"<tr><td><code>{_text(r.file)}</code></td><td>{_text(r.reason)}</td></tr>" for r in rows)
        self._parts.append(f"<table class='failures'><tr><th>file</th><th>reason</th></tr>{body}</table>")
        return self

    def images(
        self, heading: str, rows: Sequence[ImageRow], sort_by: str | None = None, limit: int | None = 50
    ) -> Report:
        """A table of images with thumbnails, highest ``sort_by`` (``score`` / ``uncertainty``) first
        (missing values last, ties in input order), at most ``limit`` rows (None: all)."""
        if sort_by is not None and sort_by not in SORT_KEYS:
            raise ValueError(f"sort_by must be one of {SORT_KEYS} or None, got {sort_by!r}")
        chosen = list(rows)
        if sort_by is not None:

            def key(row: ImageRow) -> float:
                value = getattr(row, sort_by)
                return -value if value is not None and math.isfinite(value) else math.inf

            chosen.sort(key=key)  # stable
        total = len(chosen)
        if limit is not None:
            chosen = chosen[:limit]
        columns = ["#", "image", "name"]
        has = {
            attr: any(getattr(r, attr) is not None for r in chosen)
            for attr in ("score", "uncertainty", "label", "prediction", "overlay")
        }
        columns += [c for c in ("score", "uncertainty", "label", "prediction") if has[c]]
        extra_keys = list(dict.fromkeys(k for r in chosen for k in r.extra))
        columns += extra_keys
        if has["overlay"]:
            columns.append("Grad-CAM")
        body = []
        for index, row in enumerate(chosen, 1):
            cells = [f"<td class='num'>{index}</td>", f"<td>{self._image_cell(row.image, row.name, gray=True)}</td>"]
            cells.append(f"<td><code>{_text(row.name)}</code></td>")
            for attr in ("score", "uncertainty"):
                if has[attr]:
                    cells.append(f"<td class='num'>{_number(getattr(row, attr))}</td>")
            for attr in ("label", "prediction"):
                if has[attr]:
                    cells.append(f"<td>{_text(getattr(row, attr) or '')}</td>")
            cells += [f"<td>{_number(row.extra.get(k))}</td>" for k in extra_keys]
            if has["overlay"]:
                cells.append(f"<td>{self._image_cell(row.overlay, row.name, gray=False)}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        shown = f" (the first {len(chosen)} of {total})" if len(chosen) < total else f" ({total})"
        header = "".join(f"<th>{_text(c)}</th>" for c in columns)
        self._parts.append(
            f"<h2>{_text(heading)}{_text(shown)}</h2><table class='images'><tr>{header}</tr>{''.join(body)}</table>"
        )
        return self

    def _image_cell(self, source: Path | None, name: str, gray: bool) -> str:
        if source is None:
            return "<span class='muted'>-</span>"
        link = self._preview(Path(source), self.thumbnail_size if gray else self.overlay_size, gray)
        if link is None:
            return "<span class='muted'>no preview</span>"
        return f"<a href='{link}'><img src='{link}' alt='{_text(name)}'></a>"

    # ---------------------------------------------------------------------------------- write

    def html(self) -> str:
        return "\n".join(
            [
                "<!doctype html>",
                "<html lang='en'><head><meta charset='utf-8'>",
                f"<title>{_text(self.title)}</title><style>{_STYLE}</style></head><body>",
                f"<h1>{_text(self.title)}</h1>",
                f"<p class='warn'>{_text(DISCLAIMER)}</p>",
                *self._parts,
                f"<p class='warn'>{_text(DISCLAIMER)}</p>",
                "</body></html>",
                "",
            ]
        )

    def write(self) -> Path:
        """Write ``report.html`` (atomically, after every file it links to) and return its path."""
        page = self.folder / PAGE
        write_text(page, self.html())
        logger.info("wrote %s", page)
        return page


def write_report(
    folder: Path,
    title: str,
    *,
    config: Mapping[str, Any] | None = None,
    members: Sequence[str] = (),
    engine: str | None = None,
    metrics: Sequence[Metric] = (),
    figures: Sequence[Figure] = (),
    failures: Sequence[Failure] | None = None,
    images: Sequence[ImageRow] = (),
    limit: int = 50,
    notes: Sequence[str] = (),
) -> Path:
    """The usual page in one call: notes, what was run, metrics, figures, failed images, then the
    images with the highest scores and (when any row has an uncertainty) the most uncertain ones."""
    page = Report(folder, title)
    for note in notes:
        page.paragraph(note)
    if config is not None:
        page.run_info(config, members, engine)
    page.metrics("Metrics", metrics)
    page.figures("Figures", figures)
    if failures is not None:
        page.failures(failures)
    if images:
        page.images("Highest scores", images, sort_by="score", limit=limit)
        if any(r.uncertainty is not None for r in images):
            page.images("Most uncertain", images, sort_by="uncertainty", limit=limit)
    return page.write()
