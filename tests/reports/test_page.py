"""deepcovidxr.reports.page: report.html is self-contained (copied elsewhere, every picture still loads
in headless Chromium), escaped, and lists what it was given in the stated order."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from deepcovidxr import DISCLAIMER
from deepcovidxr.reports.page import FILES, OVERLAY, THUMBNAIL, Failure, Figure, ImageRow, Metric, Report, write_report
from deepcovidxr.reports.plots import plot_calibration_comparison, plot_gradcam, plot_referral, plot_roc
from deepcovidxr.scoring import calibration as cal
from deepcovidxr.scoring import uncertainty as unc
from deepcovidxr.synthetic.phantoms import make_phantom
from tests.support.browser import image_widths, screenshot

AWKWARD = "a b#<i>&'x\".png"  # spaces, '#', markup and quotes in a file name


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.images.append(values["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _inputs(root: Path) -> tuple[list[ImageRow], list[Figure], list[Failure]]:
    """A prediction run's outputs: X-rays (8-bit PNG, 16-bit PNG, JPEG, an awkward name, an unreadable
    file), Grad-CAM overlays for two of them, and the figures (one outside the report folder)."""
    images = root / "inputs"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["p01.png", "p02_16bit.png", "p03.jpg", AWKWARD, "p05.png", "p06.png"]
    rows = []
    scores = [0.91, 0.35, 0.62, 0.08, 0.55, 0.77]
    spreads = [0.02, 0.21, 0.15, 0.01, 0.30, None]
    for index, (name, score, spread) in enumerate(zip(names, scores, spreads, strict=True)):
        gray = make_phantom(index, positive=score > 0.5, height=320, width=280).image
        path = images / name
        if "16bit" in name:
            Image.fromarray(gray.astype(np.uint16) * 257).save(path)
        else:
            Image.fromarray(gray).save(path, format="JPEG" if name.endswith(".jpg") else "PNG")
        overlay = None
        if index < 2:
            heat = rng.random((10, 10))
            heat = np.kron(heat, np.ones((32, 28)))
            overlay = plot_gradcam(
                root / "gradcam" / f"{Path(name).stem}_gradCAM.png", gray, heat, name, score, "positive"
            )
        rows.append(
            ImageRow(
                name, path, score, spread, label=None, prediction="Pos" if score >= 0.5 else "Neg", overlay=overlay
            )
        )
    broken = images / "broken.png"
    broken.write_bytes(b"not a picture")
    rows.append(ImageRow("broken.png", broken, 0.5, 0.5))
    report = root / "report"
    y = rng.integers(0, 2, 300)
    s = np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1)
    figures = [
        Figure(plot_roc(y, s, report / "roc.png", "Test: ROC"), "ROC curve"),
        Figure(plot_calibration_comparison(y, s, cal.fit(y, s).apply(s), report / "calibration.png"), "Calibration"),
        Figure(
            plot_referral(unc.referral_curve(y, s, -np.abs(s - 0.5)), root / "elsewhere" / "referral.png"), "Referral"
        ),
    ]
    failures = [Failure("bad<1>.dcm", "not a DICOM file & no image header"), Failure("empty.png", "empty file")]
    return rows, figures, failures


@pytest.fixture
def written(tmp_path: Path) -> Path:
    rows, figures, failures = _inputs(tmp_path / "run")
    page = write_report(
        tmp_path / "run" / "report",
        "Prediction <test> & report",
        config={"input": str(tmp_path / "run" / "inputs"), "threshold": "youden", "tta": 4, "members": ["a", "b"]},
        members=["DenseNet_224_crop", "ResNet50_331_uncrop"],
        engine="keras",
        metrics=[
            Metric("AUC", 0.912, 0.874, 0.944),
            Metric("sensitivity at youden", 0.85, 0.78, 0.91, "threshold 0.41 (Validation)"),
            Metric("Brier", 0.101),
            Metric("ECE", float("nan"), note="one class"),
            Metric("images", 300),
        ],
        figures=figures,
        failures=failures,
        images=rows,
    )
    return page


def test_the_copied_folder_shows_every_picture(written: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copied elsewhere" / "report"
    shutil.copytree(written.parent, copy)
    shutil.rmtree(tmp_path / "run")  # nothing outside the copied folder is left to point at
    page = copy / written.name
    parser = _parse(page)
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc, f"{link}: not a relative link"
        target = (page.parent / unquote(parsed.path)).resolve()
        assert target.is_file() and target.is_relative_to(copy.resolve()), link
    # 3 figures + 7 rows in "Highest scores" (6 thumbnails, the broken file has none, 2 overlays)
    # + "Most uncertain" (5 rows with an uncertainty listed first, then the one without: 6 thumbnails, 2 overlays).
    widths = image_widths(page)
    assert len(widths) == 3 + (6 + 2) + (6 + 2)
    broken = [src for src, width in widths if width == 0]
    assert not broken, f"Chromium could not show: {broken}"
    previews = {src: w for src, w in widths if FILES in unquote(src)}
    overlays = [w for src, w in previews.items() if "gradCAM" in src]
    xrays = [w for src, w in previews.items() if "gradCAM" not in src and "referral" not in src]
    assert len(xrays) == 6 and max(xrays) <= THUMBNAIL and len(overlays) == 2 and max(overlays) <= OVERLAY
    shot = screenshot(page, tmp_path / "report.png", size=(1280, 3000))
    assert shot.stat().st_size > 10_000


def test_text_is_escaped_and_the_disclaimer_is_shown(written: Path) -> None:
    source = written.read_text(encoding="utf-8")
    parser = _parse(written)
    text = " ".join(parser.text)
    assert "<i>" not in source and "<test>" not in source and "bad<1>" not in source
    assert set(parser.tags) <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "table",
        "tr",
        "th",
        "td",
        "code",
        "a",
        "img",
        "div",
        "figure",
        "figcaption",
        "span",
    }
    assert AWKWARD in text and "bad<1>.dcm" in text and "not a DICOM file & no image header" in text
    assert "Prediction <test> & report" in text
    assert text.count(DISCLAIMER) == 2
    for shown in ("DenseNet_224_crop, ResNet50_331_uncrop", "keras", "youden", "0.874", "0.944", "n/a", "300"):
        assert shown in text, shown
    assert "no preview" in text


def test_image_tables_are_sorted_and_limited(tmp_path: Path) -> None:
    rows = [
        ImageRow(f"img{i}", score=s, uncertainty=u)
        for i, (s, u) in enumerate([(0.2, 0.3), (0.9, 0.1), (0.5, 0.3), (0.9, None)])
    ]
    page = (
        Report(tmp_path / "r", "t")
        .images("top", rows, sort_by="score", limit=3)
        .images("unsure", rows, sort_by="uncertainty")
    )
    html_text = page.html()
    top = html_text[html_text.index("top") : html_text.index("unsure")]
    unsure = html_text[html_text.index("unsure") :]
    order = lambda part: [n for n in part.split("<code>")[1:] for n in [n.split("</code>")[0]]]  # noqa: E731
    assert order(top) == ["img1", "img3", "img2"]  # ties keep input order
    assert "the first 3 of 4" in top
    assert order(unsure) == ["img0", "img2", "img1", "img3"]  # missing uncertainty last
    with pytest.raises(ValueError, match="sort_by"):
        Report(tmp_path / "r", "t").images("x", rows, sort_by="name")


def test_no_failures_says_so(tmp_path: Path) -> None:
    page = Report(tmp_path / "r", "t").failures([]).write()
    assert "every image passed" in page.read_text(encoding="utf-8")
