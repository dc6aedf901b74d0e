"""Real-browser checks of the HTML pages we write (headless Chromium), reusable by any report test.

``image_widths(page)`` opens ``page`` from disk in headless Chromium and returns each ``<img>``'s
``src`` with the natural width the browser decoded (0 = broken image). Chromium is found on PATH
(Debian package ``chromium``); without it the calling test skips with the reason, unless
``DEEPCOVIDXR_REQUIRE_BROWSER=1`` (CI, ``.ci/run``), where its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PROBE_ATTRIBUTE = "data-natural-width"
# After the load event every <img> has finished (decoded or failed): write what the browser saw into
# the DOM, which --dump-dom then prints. The marker on <body> says the script really ran.
PROBE_SCRIPT = f"""
<script>
window.addEventListener("load", () => {{
  for (const img of document.images) img.setAttribute("{PROBE_ATTRIBUTE}", String(img.naturalWidth));
  document.body.setAttribute("data-probed", "1");
}});
</script>
"""


def find_browser() -> str:
    """Path of a headless-capable Chromium, or skip (fail under DEEPCOVIDXR_REQUIRE_BROWSER=1)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = f"no Chromium on PATH (tried {', '.join(BROWSERS)}; Debian: apt-get install chromium)"
    if os.environ.get("DEEPCOVIDXR_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _headless(browser: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # A throwaway profile: no state shared with another run, nothing written to $HOME.
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",  # root in containers; the page is our own file
                "--allow-file-access-from-files",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, int | None]] = []
        self.probed = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body" and values.get("data-probed") == "1":
            self.probed = True
        if tag == "img":
            width = values.get(PROBE_ATTRIBUTE)
            self.images.append((values.get("src") or "", int(width) if width is not None else None))


def image_widths(page: Path) -> list[tuple[str, int]]:
    """``(src, naturalWidth)`` of every image on ``page`` as headless Chromium loads it from disk.

    The probe is a copy of the page with a script appended, written beside it (so every relative
    link resolves exactly as from the page) and removed afterwards.
    """
    browser = find_browser()
    page = Path(page).resolve()
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8") + PROBE_SCRIPT, encoding="utf-8")
    try:
        done = _headless(browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink(missing_ok=True)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    parser = _Images()
    parser.feed(done.stdout)
    assert parser.probed, f"the probe script did not run; chromium said: {done.stderr[-2000:]}"
    missing = [src for src, width in parser.images if width is None]
    assert not missing, f"images without a measured width: {missing}"
    return [(src, int(width)) for src, width in parser.images if width is not None]


def screenshot(page: Path, destination: Path, size: tuple[int, int] = (1200, 2000)) -> Path:
    """A PNG of ``page`` as headless Chromium renders it."""
    browser = find_browser()
    done = _headless(
        browser,
        f"--screenshot={Path(destination).resolve()}",
        f"--window-size={size[0]},{size[1]}",
        "--virtual-time-budget=10000",
        Path(page).resolve().as_uri(),
    )
    assert done.returncode == 0 and Path(destination).is_file(), done.stderr[-2000:]
    return Path(destination)
