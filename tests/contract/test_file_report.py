"""batch.BatchReport: a finished row is trusted only when made from the same input and options."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from deepcovidxr.contract.file_report import FINGERPRINT, BatchReport


def _done(tmp_path: Path, options: dict, source: Path, output: Path) -> BatchReport:
    report = BatchReport(tmp_path / "report.csv", ["file", "status", "error"], options=options)
    if not report.finished("a.png", output, source=source):
        output.write_bytes(b"made")
        report.add({"file": "a.png", "status": "ok"})
    report.close()
    return report


def test_a_row_is_redone_when_its_options_or_input_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, output = tmp_path / "a.png", tmp_path / "out.png"
    source.write_bytes(b"pixels")
    first = _done(tmp_path, {"size": 224}, source, output)
    assert first.rows["a.png"][FINGERPRINT] and first.redone == 0
    again = _done(tmp_path, {"size": 224}, source, output)
    assert again.redone == 0 and again.rows["a.png"] == first.rows["a.png"]

    with caplog.at_level(logging.WARNING):
        other = _done(tmp_path, {"size": 331}, source, output)
    assert other.redone == 1 and "size 224 -> 331" in caplog.text

    source.write_bytes(b"other pixels")  # same options, new content
    assert _done(tmp_path, {"size": 331}, source, output).redone == 1
    os.utime(source, ns=(1, 1))  # same size and content, touched: redone too (stamps, not hashes)
    assert _done(tmp_path, {"size": 331}, source, output).redone == 1
    assert _done(tmp_path, {"size": 331}, source, output).redone == 0


def test_a_file_named_by_an_option_is_stamped(tmp_path: Path) -> None:
    """Another U-Net (or member) written at the same path is another option."""
    source, output, unet = tmp_path / "a.png", tmp_path / "out.png", tmp_path / "unet.h5"
    source.write_bytes(b"pixels")
    unet.write_bytes(b"weights")
    _done(tmp_path, {"unet": unet}, source, output)
    unet.write_bytes(b"retrained weights")
    assert _done(tmp_path, {"unet": unet}, source, output).redone == 1


def test_a_report_from_before_fingerprints_is_redone(tmp_path: Path) -> None:
    source, output = tmp_path / "a.png", tmp_path / "out.png"
    source.write_bytes(b"pixels")
    output.write_bytes(b"made by an older version")
    (tmp_path / "report.csv").write_text("file,status,error\na.png,ok,\n", encoding="utf-8")
    report = BatchReport(tmp_path / "report.csv", ["file", "status", "error"], options={"size": 224})
    assert not report.finished("a.png", output, source=source) and report.redone == 1
