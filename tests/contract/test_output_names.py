"""Output names never lose part of the input name, and a clash is an error row, not an overwrite
(issue 10, defect 1)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr.contract import layout
from deepcovidxr.imaging.reader import read_gray
from tests.support.helpers import shared

UIDS = ("1.2.840.113619.2.55", "1.2.840.113619.2.56")


def _report(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize(
    ("relative", "output", "png", "stem"),
    [
        ("1.2.840.113619.2.55", "1.2.840.113619.2.55.png", "1.2.840.113619.2.55.png", "1.2.840.113619.2.55"),
        ("ward/a.dcm", "ward/a.png", "ward/a.png", "ward__a"),
        ("a.png", "a.png", "a.png", "a"),
        ("x.v2.JPG", "x.v2.JPG", "x.v2.png", "x.v2"),
        ("IM0001", "IM0001.png", "IM0001.png", "IM0001"),
    ],
)
def test_names_keep_the_whole_input_name(relative: str, output: str, png: str, stem: str) -> None:
    assert layout.output_name(Path(relative)) == Path(output)
    assert layout.png_name(Path(relative)) == Path(png)
    assert layout.image_stem(Path(relative)) == stem
    figure, raw, small = layout.gradcam_names(Path(relative))
    assert figure == Path(layout.GRADCAM_FOLDER) / f"{stem}_gradCAM.png"
    assert raw.name == f"{stem}_heatmap.npy" and small.name == f"{stem}_heatmap.png"


def test_uid_named_dicoms_get_distinct_grad_cam_names() -> None:
    assert len({layout.gradcam_names(Path(u))[0] for u in UIDS}) == 2


def test_collisions_name_every_input_involved() -> None:
    clashes = layout.collisions({"a.dcm": [Path("o/a.png")], "a.png": [Path("o/a.png")], "b.png": [Path("o/b.png")]})
    assert set(clashes) == {"a.dcm", "a.png"}
    assert "a.png" in clashes["a.dcm"] and "a.dcm" in clashes["a.png"]


@pytest.fixture(scope="module")
def uid_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two PACS exports named by UID, without a suffix (found by the DICM magic), and a clash."""
    root = tmp_path_factory.mktemp("pacs") / "in"
    root.mkdir()
    dicoms = [
        shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm"),
        shared("dicom", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"),
    ]
    for uid, source in zip(UIDS, dicoms, strict=True):
        shutil.copy(source, root / uid)
    clash = root / "clash"
    clash.mkdir()
    shutil.copy(dicoms[0], clash / "a.dcm")
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), clash / "a.png")
    return root


def test_crop_masks_of_uid_named_dicoms_do_not_overwrite_each_other(
    uid_folder: Path, tmp_path: Path, lung_cropper
) -> None:
    from deepcovidxr.config.data_stages import CropConfig
    from deepcovidxr.stages.crop import run as run_crop

    result = run_crop(
        CropConfig(input=uid_folder, output=tmp_path / "crops", save_masks=tmp_path / "masks", qc_montage=False),
        lung_cropper,
    )
    rows = _report(result.report)
    for uid in UIDS:
        assert rows[uid]["status"] != "error", rows[uid]
        assert (tmp_path / "crops" / f"{uid}.png").is_file()
        assert (tmp_path / "masks" / f"{uid}.png").is_file()
    masks = [read_gray(tmp_path / "masks" / f"{uid}.png") for uid in UIDS]
    assert masks[0].shape != masks[1].shape or not np.array_equal(*masks)  # two different films' masks
    # a.dcm and a.png would both be written as a.png: both are error rows naming the other, nothing written
    assert rows["clash/a.dcm"]["status"] == "error" and "clash/a.png" in rows["clash/a.dcm"]["error"]
    assert rows["clash/a.png"]["status"] == "error" and "clash/a.dcm" in rows["clash/a.png"]["error"]
    assert not (tmp_path / "crops" / "clash" / "a.png").exists()
    assert result.exit_code == 1
    # a rerun resumes: the UID crops are kept, the clash is reported again
    again = _report(
        run_crop(
            CropConfig(input=uid_folder, output=tmp_path / "crops", save_masks=tmp_path / "masks", qc_montage=False),
            lung_cropper,
        ).report
    )
    assert again == rows


def test_resize_refuses_the_clash_too(uid_folder: Path, tmp_path: Path) -> None:
    from deepcovidxr.config.data_stages import ResizeConfig
    from deepcovidxr.stages.resize import run as run_resize

    rows = _report(run_resize(ResizeConfig(input=uid_folder, output=tmp_path / "r", size=64)).report)
    assert {n for n, r in rows.items() if r["status"] == "error"} == {"clash/a.dcm", "clash/a.png"}
    assert all((tmp_path / "r" / f"{uid}.png").is_file() for uid in UIDS)
