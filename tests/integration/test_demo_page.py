"""The demo's index.html: every link resolves from the page's own folder, and a real browser shows
every picture (defect 10: links were relative to the folder the demo was started from)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.reports.demo_page import write_index
from tests.support.browser import image_widths

PICTURES = ("dataset/crop_qc.png", "views.png", "gradcam/gradCAM_img/a b_gradCAM.png")
TABLES = ("crop_check.csv", "evaluation/Results/metrics.json")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def _fake_demo_output(output: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Small real PNGs and text files where the demo puts them, listed as the demo lists them:
    paths as built from a relative ``--output`` (``demo_output/...``)."""
    rng = np.random.default_rng(0)
    for name in PICTURES:
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 64), dtype=np.uint8)).save(path)
    for name in TABLES:
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n", encoding="utf-8")
    return [
        ("Pictures", [(str(output / name), f"picture {name}") for name in PICTURES]),
        ("Tables", [(str(output / name), f"table {name}") for name in TABLES]),
    ]


@pytest.fixture
def demo_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """index.html written like ``./run demo`` writes it: started one folder above a relative output."""
    monkeypatch.chdir(tmp_path)
    output = Path("demo_output")
    sections = _fake_demo_output(output)
    page = write_index(output / "index.html", "demo", sections, notes=["a note"])
    return (tmp_path / page).resolve()


def test_every_link_resolves_from_the_pages_folder(demo_page: Path, tmp_path: Path) -> None:
    parser = _Links()
    parser.feed(demo_page.read_text(encoding="utf-8"))
    expected = {*PICTURES, *TABLES}
    assert len(parser.links) >= len(expected) + len(PICTURES)  # a link per entry, an <img> per picture
    resolved = set()
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc, f"{link}: not a relative link"
        target = (demo_page.parent / unquote(parsed.path)).resolve()
        assert target.is_file(), f"{link} does not resolve from {demo_page.parent}"
        resolved.add(target.relative_to(demo_page.parent).as_posix())
    assert resolved == expected


def test_absolute_and_outside_paths_resolve_too(tmp_path: Path) -> None:
    page_dir, other = tmp_path / "site", tmp_path / "elsewhere"
    other.mkdir()
    picture = other / "p.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(picture)
    page = write_index(page_dir / "index.html", "t", [("s", [(str(picture), "outside the page's folder")])], [])
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.links and all((page.parent / unquote(link)).resolve() == picture for link in parser.links)


def test_browser_shows_every_picture(demo_page: Path) -> None:
    widths = image_widths(demo_page)
    assert len(widths) == len(PICTURES)
    broken = [src for src, width in widths if width == 0]
    assert not broken, f"Chromium could not show: {broken}"
    assert {width for _, width in widths} == {64}
