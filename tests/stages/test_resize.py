"""resize_img.py: Pillow Lanczos, recursive, same names, gray kept gray, errors reported."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from deepcovidxr.config.data_stages import ResizeConfig
from deepcovidxr.imaging.preprocess import lanczos_resize
from deepcovidxr.stages.resize import run as run_resize
from tests.support.helpers import run_script, shared


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (5, 5), 0)


def test_lanczos_resize_equals_pillow_and_antialiases() -> None:
    image = _noise((700, 600))
    ours = lanczos_resize(image, 224)
    pillow = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(ours, pillow)
    # a fine checkerboard must average to grey (antialiased), not alias into stripes as OpenCV's LANCZOS4 does
    checker = (np.indices((1600, 1600)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = lanczos_resize(checker, 224)
    aliased = cv2.resize(checker, (224, 224), interpolation=cv2.INTER_LANCZOS4)
    assert small.std() < 3 and abs(float(small.mean()) - 127.5) < 3
    assert aliased.std() > 10 * small.std() + 1


def test_stage_mirrors_tree_keeps_modes_and_reports_errors(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "a" / "b").mkdir(parents=True)
    gray = _noise((300, 260))
    rgb = np.stack([_noise((120, 150), s) for s in range(3)], axis=-1)
    Image.fromarray(gray).save(source / "g.png")
    Image.fromarray(rgb).save(source / "a" / "rgb.png")
    Image.fromarray(gray).save(source / "a" / "b" / "q.jpg", quality=95)
    (source / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnonsense")
    (source / "empty.jpg").write_bytes(b"")
    before = sorted(p.relative_to(source) for p in source.rglob("*"))

    result = run_resize(ResizeConfig(input=source, output=tmp_path / "out", size=64, workers=2))

    assert result.exit_code == 1 and result.counts == {"ok": 3, "error": 2}
    out = tmp_path / "out"
    g = Image.open(out / "g.png")
    assert g.mode == "L" and g.size == (64, 64)
    np.testing.assert_array_equal(
        np.asarray(g), np.asarray(Image.fromarray(gray).resize((64, 64), Image.Resampling.LANCZOS))
    )
    c = Image.open(out / "a" / "rgb.png")
    assert c.mode == "RGB" and c.size == (64, 64)
    assert Image.open(out / "a" / "b" / "q.jpg").format == "JPEG"
    rows = {r["file"]: r for r in csv.DictReader((out / "resize_report.csv").open(encoding="utf-8"))}
    assert rows["a/broken.png"]["status"] == "error" and rows["a/broken.png"]["error"]
    assert rows["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert rows["g.png"]["width"] == "260" and rows["g.png"]["height"] == "300"
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before  # input untouched


def test_rerun_skips_finished_files_and_overwrite_redoes_them(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(_noise((100, 100))).save(source / "x.png")
    run_resize(ResizeConfig(input=source, output=tmp_path / "out", size=32))
    target = tmp_path / "out" / "x.png"
    target.write_bytes(b"sentinel")  # a finished file is trusted, not redone
    run_resize(ResizeConfig(input=source, output=tmp_path / "out", size=32))
    assert target.read_bytes() == b"sentinel"
    run_resize(ResizeConfig(input=source, output=tmp_path / "out", size=32, overwrite=True))
    assert Image.open(target).size == (32, 32)


def test_cli_resizes_dicom_to_png(tmp_path: Path) -> None:
    dicom = shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm")
    done = run_script("resize_img.py", "-i", dicom, "-o", tmp_path / "out", "-s", "96")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "c64d5667-a776-4f95-9e21-bfabafb07740.png"
    image = Image.open(out)
    assert image.mode == "L" and image.size == (96, 96)
    assert done.stdout.strip().endswith("resize_report.csv")


def test_cli_refuses_output_inside_input(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(_noise((50, 50))).save(tmp_path / "in" / "x.png")
    done = run_script("resize_img.py", "-i", tmp_path / "in", "-o", tmp_path / "in" / "small", "-s", "32")
    assert done.returncode != 0 and "inside the input" in done.stderr
    assert not (tmp_path / "in" / "small").exists()


def test_rerun_with_another_size_or_changed_input_redoes_the_outputs(tmp_path: Path) -> None:
    """Regression: a rerun into the same folder skipped every file whose output existed, so
    ``-s 224`` then ``-s 331`` left 224 px images reported ok."""
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.fromarray(_noise((100, 100))).save(source / "x.png")
    Image.fromarray(_noise((90, 120), 1)).save(source / "y.png")
    run_resize(ResizeConfig(input=source, output=out, size=32))
    assert Image.open(out / "x.png").size == (32, 32)

    result = run_resize(ResizeConfig(input=source, output=out, size=48))
    assert result.counts == {"ok": 2}
    assert Image.open(out / "x.png").size == (48, 48) and Image.open(out / "y.png").size == (48, 48)

    # same options, one input rewritten with other pixels: that one is redone, the other kept
    kept = (out / "y.png").stat().st_mtime_ns
    replacement = _noise((100, 100), 7)
    Image.fromarray(replacement).save(source / "x.png")
    run_resize(ResizeConfig(input=source, output=out, size=48))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png")), lanczos_resize(replacement, 48))
    assert (out / "y.png").stat().st_mtime_ns == kept
