"""The Python API (``deepcovidxr.Predictor``): the same rows as predict.py's predictions.csv, column
for column and digit for digit, from files, folders and arrays; Grad-CAM at the image's size; an
``import deepcovidxr`` that loads no TensorFlow. Two random-weight members of 64 and 96 px keep it
fast; a real film, a DICOM, a blank image (the input check flags it) and a broken file cover every
kind of row."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.helpers import run_script, save_random_members, shared

MEMBERS = ("res_64_uncrop", "res_96_crop")
OPTIONS = {"engine": "keras", "tta": 2, "seed": 3, "batch_size": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("predictor")
    members = save_random_members(root / "members", MEMBERS, {MEMBERS[0]: 0.6, MEMBERS[1]: 0.4})
    images = root / "images"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    shutil.copy(shared("cxr", "Negative", "nih_00000310_001.png"), images / "b.png")
    shutil.copy(shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm"), images / "c.dcm")
    Image.fromarray(np.full((300, 300), 128, np.uint8)).save(images / "blank.png")
    (images / "broken.png").write_bytes(b"not an image")
    return {"members": members, "weights": members / "ensemble_weights.json", "images": images, "root": root}


@pytest.fixture(scope="module")
def csv_rows(world: dict) -> tuple[list[str], list[list[str]]]:
    """predict.py's predictions.csv, run as a user runs it."""
    out = world["root"] / "predict_out"
    flags = ("--engine", "keras", "-t", "2", "--seed", "3", "--batch-size", "2")
    done = run_script(
        "predict.py", "-w", world["members"], "-e", world["weights"], "-i", world["images"], "-o", out, *flags
    )
    assert done.returncode == 1, done.stderr[-3000:]  # broken.png: an error row
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def predictor(world: dict):
    from deepcovidxr import Predictor

    return Predictor(world["members"], weights=world["weights"], **OPTIONS)


def _as_csv(frame) -> list[list[str]]:
    """The DataFrame's rows written as predict.py writes them (six decimals, blanks empty)."""

    import pandas as pd

    def cell(column: str, value) -> str:
        if isinstance(value, str):
            return value
        if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        return str(int(value)) if column == "Binary pred" else f"{float(value):.6f}"

    return [[cell(c, v) for c, v in zip(frame.columns, row, strict=True)] for row in frame.itertuples(index=False)]


def test_a_folder_gives_predict_py_rows_digit_for_digit(predictor, world: dict, csv_rows) -> None:
    header, rows = csv_rows
    frame = predictor.predict(world["images"])
    assert list(frame.columns) == header == predictor.columns
    assert _as_csv(frame) == rows
    by_name = {row[0]: row for row in rows}
    assert by_name["broken.png"][header.index("crop_status")] == "error"
    assert by_name["blank.png"][header.index("error")].startswith("not scored: input check")
    assert by_name["a.png"][header.index("Scores")] != ""
    assert frame["Binary pred"].dtype.name == "Int64" and frame["Scores"].dtype == np.float64


def test_files_and_arrays_score_as_predict_py_does(predictor, world: dict, csv_rows) -> None:
    """Paths and arrays (uint8, float in [0, 1]) mixed: under the names predict.py gives them, the
    same TTA draws and the same rows."""
    from deepcovidxr.imaging.reader import read_gray

    _, rows = csv_rows
    by_name = {row[0]: row for row in rows}
    a, c = world["images"] / "a.png", world["images"] / "c.dcm"
    gray = read_gray(a)
    frame = predictor.predict([c, gray, gray / 255.0, a], names=["c.dcm", "a.png", "a.png", "a.png"])
    assert _as_csv(frame) == [by_name["c.dcm"], *[by_name["a.png"]] * 3]


def test_inputs_are_named_as_predict_py_names_them(world: dict) -> None:
    """A file by its file name (as predict.py -i file), a folder's files by their path relative to
    it (as predict.py -i folder), an array by its position."""
    from deepcovidxr.predictor import image_inputs

    sources, names = image_inputs([world["images"] / "a.png", np.zeros((4, 4), np.uint8), world["images"]])
    assert names[:2] == ["a.png", "array_1"] and "c.dcm" in names[2:] and len(sources) == len(names)


def test_without_tta_an_array_scores_as_its_file_whatever_its_name(world: dict) -> None:
    from deepcovidxr import Predictor
    from deepcovidxr.imaging.reader import read_gray

    plain = Predictor(world["members"], weights=world["weights"], engine="keras", batch_size=2)
    path = world["images"] / "b.png"
    frame = plain.predict([path, read_gray(path)])
    scores = frame[["Scores", *MEMBERS, "uncertainty"]].to_numpy()
    np.testing.assert_array_equal(scores[0], scores[1])


def test_explain_gives_a_map_of_each_image_s_shape(predictor, world: dict, tmp_path: Path) -> None:
    from deepcovidxr.imaging.reader import read_gray

    path = world["images"] / "a.png"
    gray = read_gray(path)
    found = predictor.explain([path, gray, world["images"] / "broken.png"], figures=tmp_path)
    first, second, broken = found
    assert first.heatmap.shape == gray.shape and first.heatmap.dtype == np.float32
    assert 0.0 <= first.heatmap.min() and first.heatmap.max() <= 1.0
    assert first.target in {"positive", "negative"} and first.target == first.predicted
    np.testing.assert_array_equal(first.heatmap, second.heatmap)  # an array is explained as its file
    assert first.figure is not None and first.figure.is_file()
    assert broken.heatmap is None and broken.error
    negative = predictor.explain([gray], target="negative")[0]
    assert negative.target == "negative" and negative.heatmap.shape == gray.shape


def test_arrays_the_api_cannot_read_are_refused(predictor) -> None:
    from deepcovidxr.errors import UsageError

    for bad in (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 2.0), np.zeros((8, 8), np.int32)):
        with pytest.raises(UsageError):
            predictor.predict([bad])
    with pytest.raises(UsageError):
        predictor.predict([np.zeros((8, 8), np.uint8)], names=["one", "two"])


def test_importing_the_package_loads_no_tensorflow(world: dict) -> None:
    """``import deepcovidxr`` and ``deepcovidxr.Predictor`` stay light; so does building a
    Predictor for an engine other than Keras (nothing is opened before predict)."""
    script = (
        "import sys, deepcovidxr\n"
        "deepcovidxr.Predictor\n"
        f"deepcovidxr.Predictor({str(world['members'])!r}, weights={str(world['weights'])!r}, engine='onnxruntime')\n"
        "print(json.dumps(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + script], capture_output=True, text=True, encoding="utf-8", timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_authors_member_files_score_as_predict_py_scores_them(tmp_path: Path) -> None:
    """Members as the authors' Keras 2 code wrote them (full-model HDF5, legacy names, no sidecar):
    the API opens them as predict.py does and gives its rows on real films."""
    from deepcovidxr import Predictor
    from deepcovidxr.contract.layout import Member
    from tests.support.legacy_writers import write_legacy_member

    members = tmp_path / "members"
    members.mkdir()
    names = ("res_75_uncrop", "res_75_crop")
    for name in names:
        write_legacy_member("ResNet50", 75, members / Member.parse(name).legacy_filename)
    for extra in [*members.glob("*.npy")]:
        extra.unlink()  # the writer's probe files; a members folder holds members only
    weights = tmp_path / "ensemble_weights.json"
    weights.write_text(json.dumps({names[0]: 0.3, names[1]: 0.7}), encoding="utf-8")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    shutil.copy(shared("cxr", "Negative", "nih_00000310_001.png"), images / "b.png")
    out = tmp_path / "out"
    done = run_script("predict.py", "-w", members, "-e", weights, "-i", images, "-o", out, "--engine", "keras")
    assert done.returncode == 0, done.stderr[-3000:]
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    frame = Predictor(members, weights=weights, engine="keras").predict(images)
    assert list(frame.columns) == header
    assert _as_csv(frame) == rows
    assert {row[0] for row in rows} == {"a.png", "b.png"} and all(row[header.index("Scores")] for row in rows)
