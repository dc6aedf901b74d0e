"""deepcovidxr.data.nih: NIH ChestX-ray14 table, official patient-wise splits, image layouts, the
archive download (against a fake server, never the network) and per-finding AUROC."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import random
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from deepcovidxr.data import nih, nih_download
from deepcovidxr.data.nih import (
    FINDINGS,
    find_images,
    find_labels_csv,
    load_splits,
    per_finding_auroc,
    read_table,
    write_auroc_csv,
)
from deepcovidxr.data.nih_download import ARCHIVE_URLS, NihDownloadError, download_nih
from tests.support.helpers import shared

CSV_NAME = "Data_Entry_2017_v2020.csv"


# --------------------------------------------------------------------------------------------------
# Shared fixtures: the real table is read once per module (it is 112k rows).


@pytest.fixture(scope="module")
def nih_root() -> Path:
    return shared("nih")


@pytest.fixture(scope="module")
def table(nih_root: Path) -> pd.DataFrame:
    return read_table(nih_root / CSV_NAME)


@pytest.fixture(scope="module")
def raw_rows(nih_root: Path) -> list[dict[str, str]]:
    """The CSV read with the csv module: the independent reference for read_table."""
    with (nih_root / CSV_NAME).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def all_splits(nih_root: Path) -> nih.NihSplits:
    return load_splits(nih_root, require_images=False)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _link_or_copy(source: Path, target: Path) -> None:
    """Symlink (the shared data is never duplicated); copy only where symlinks are not allowed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def _tiny_png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _write_mini_root(root: Path, rows: list[dict[str, str]], train_val: list[str], test: list[str]) -> Path:
    """A labels CSV in the NIH format plus the two official lists, built from real rows."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / CSV_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n", encoding="utf-8")
    (root / "test_list.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------------
# Labels table


def test_findings_are_the_14_sorted_chestxray14_labels() -> None:
    assert len(FINDINGS) == 14
    assert list(FINDINGS) == sorted(FINDINGS)
    assert "Hernia" in FINDINGS  # the original dropped it (< 1000 images)
    assert "No Finding" not in FINDINGS


def test_find_labels_csv_accepts_the_three_names_and_prefers_v2020(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        find_labels_csv(tmp_path)
    for name in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "NIH_Data_Entry.csv"):
        assert name in str(missing.value)

    (tmp_path / "NIH_Data_Entry.csv").write_text("x", encoding="utf-8")
    assert find_labels_csv(tmp_path).name == "NIH_Data_Entry.csv"
    (tmp_path / "Data_Entry_2017.csv").write_text("x", encoding="utf-8")
    assert find_labels_csv(tmp_path).name == "Data_Entry_2017.csv"
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("x", encoding="utf-8")
    assert find_labels_csv(tmp_path).name == "Data_Entry_2017_v2020.csv"


def test_real_table_has_every_row_and_14_int_columns(table: pd.DataFrame) -> None:
    assert len(table) == 112_120
    assert list(table.columns) == ["image", "patient_id", *FINDINGS]
    assert table["image"].is_unique
    targets = table[list(FINDINGS)]
    assert all(pd.api.types.is_integer_dtype(dtype) for dtype in targets.dtypes)
    assert set(np.unique(targets.to_numpy())) == {0, 1}
    assert all(isinstance(value, str) for value in table["patient_id"].head(100))
    assert table.loc[table["image"] == "00000001_000.png", "patient_id"].item() == "1"
    assert table["patient_id"].nunique() == 30_805  # the published patient count


def test_multi_hot_matches_an_independent_string_recount(table: pd.DataFrame, raw_rows: list[dict[str, str]]) -> None:
    by_image = table.set_index("image")
    # Column totals over all rows, counted with plain string operations.
    for finding in FINDINGS:
        expected = sum(finding in row["Finding Labels"].split("|") for row in raw_rows)
        assert int(table[finding].sum()) == expected, finding
    assert int(table["Hernia"].sum()) == 227
    # Row-by-row for a seeded sample, including multi-label rows.
    sample = random.Random(7).sample(raw_rows, 3000)
    assert any("|" in row["Finding Labels"] for row in sample)
    for row in sample:
        labels = set(row["Finding Labels"].split("|"))
        expected_row = [int(finding in labels) for finding in FINDINGS]
        assert by_image.loc[row["Image Index"], list(FINDINGS)].tolist() == expected_row, row["Image Index"]
        assert by_image.loc[row["Image Index"], "patient_id"] == row["Patient ID"]


def test_no_finding_rows_are_kept_as_all_zero(table: pd.DataFrame, raw_rows: list[dict[str, str]]) -> None:
    no_finding = {row["Image Index"] for row in raw_rows if row["Finding Labels"] == "No Finding"}
    assert len(no_finding) > 60_000
    zero = table[list(FINDINGS)].sum(axis=1) == 0
    assert set(table.loc[zero, "image"]) == no_finding


def test_unknown_labels_and_missing_columns_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(
        "Image Index,Finding Labels,Patient ID\n"
        "00000001_000.png,Cardiomegaly|Covid-19,1\n"
        "00000002_000.png,Atelectasis|Tuberculosis,2\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"Covid-19.*Tuberculosis"):
        read_table(path)
    path.write_text("Image Index,Labels\n00000001_000.png,Mass\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not an NIH ChestX-ray14 labels table"):
        read_table(path)


def test_the_2017_table_with_its_trailing_empty_column_reads(tmp_path: Path) -> None:
    # The original Data_Entry_2017.csv ends every line with a comma (an unnamed 12th column).
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        "00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
        "00000002_000.png,No Finding,0,2,081Y,M,PA,2500,2048,0.168,0.168,\n",
        encoding="utf-8",
    )
    frame = read_table(find_labels_csv(tmp_path))
    assert frame["image"].tolist() == ["00000001_000.png", "00000002_000.png"]
    assert frame["Cardiomegaly"].tolist() == [1, 0]
    assert frame[list(FINDINGS)].iloc[1].sum() == 0


# --------------------------------------------------------------------------------------------------
# Official splits


def test_official_lists_are_honoured(all_splits: nih.NihSplits, nih_root: Path) -> None:
    train_val = set(_lines(nih_root / "train_val_list.txt"))
    test = set(_lines(nih_root / "test_list.txt"))
    assert len(train_val) == 86_524 and len(test) == 25_596
    assert set(all_splits.test["image"]) == test
    assert set(all_splits.train["image"]) | set(all_splits.validation["image"]) == train_val
    assert not set(all_splits.train["image"]) & set(all_splits.validation["image"])
    # require_images=False keeps every row; these have no image here, so their path is None.
    assert sum(len(frame) for _, frame in all_splits.items()) == 112_120
    missing = all_splits.train["path"].isna()
    assert missing.sum() > 70_000
    assert all_splits.train.loc[missing, "path"].map(lambda value: value is None).all()


def test_validation_is_patient_wise_and_disjoint(all_splits: nih.NihSplits) -> None:
    patients = {name: set(frame["patient_id"]) for name, frame in all_splits.items()}
    assert not patients["train"] & patients["validation"]
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    fraction = len(patients["validation"]) / (len(patients["train"]) + len(patients["validation"]))
    assert fraction == pytest.approx(0.1, abs=0.002)
    summary = all_splits.summary()
    assert summary["validation"]["patients"] == len(patients["validation"])
    assert summary["test"]["images"] == 25_596
    total_hernia = sum(summary[name]["positives"]["Hernia"] for name in ("train", "validation", "test"))
    assert total_hernia == 227
    assert sum(summary[name]["no_finding"] for name in summary) > 60_000


def test_validation_split_is_seeded_and_reproducible(all_splits: nih.NihSplits, nih_root: Path) -> None:
    again = load_splits(nih_root, require_images=False)
    assert again.validation["image"].tolist() == all_splits.validation["image"].tolist()
    other = load_splits(nih_root, seed=1, validation_fraction=0.2, require_images=False)
    assert set(other.validation["patient_id"]) != set(all_splits.validation["patient_id"])
    n_patients = other.summary()["train"]["patients"] + other.summary()["validation"]["patients"]
    assert other.summary()["validation"]["patients"] / n_patients == pytest.approx(0.2, abs=0.002)
    assert set(other.test["image"]) == set(all_splits.test["image"])  # test never moves
    with pytest.raises(ValueError, match="validation_fraction"):
        load_splits(nih_root, validation_fraction=1.0)


def test_shared_images_only_and_their_official_split(
    nih_root: Path, all_splits: nih.NihSplits, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = pd.read_csv(nih_root / "images_manifest.csv")
    pairs = zip(manifest["file"], manifest["official_split"], strict=True)
    expected = {Path(file).name: split for file, split in pairs}
    with caplog.at_level(logging.WARNING, logger="deepcovidxr.data.nih"):
        splits = load_splits(nih_root)  # require_images=True
    assert "rows dropped" in caplog.text and "test" in caplog.text
    seen = {}
    for name, frame in splits.items():
        assert frame["path"].map(lambda p: Path(p).is_file()).all()
        seen.update(dict.fromkeys(frame["image"], "test" if name == "test" else "train_val"))
    assert seen == expected  # every shared image, on the side the manifest says
    # Same patient assignment as the full split: images do not move sides when files are missing.
    full_validation = set(all_splits.validation["image"])
    assert set(splits.validation["image"]) == full_validation & set(expected)


# --------------------------------------------------------------------------------------------------
# Image layouts


def test_find_images_flat_and_nested_layouts_agree(
    tmp_path: Path, nih_root: Path, raw_rows: list[dict[str, str]]
) -> None:
    names = [row["Image Index"] for row in raw_rows[:12]]
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    for i, name in enumerate(names):
        _tiny_png((flat / "images" if i % 2 else flat) / name, value=i)
        _tiny_png(nested / f"images_{1 + i // 6:03d}" / "images" / name, value=i)
    (flat / "images" / "notes.txt").write_text("not an image", encoding="utf-8")
    flat_found, nested_found = find_images(flat), find_images(nested)
    assert list(flat_found) == sorted(names) == list(nested_found)
    assert flat_found[names[0]] == flat / names[0]
    assert nested_found[names[7]] == nested / "images_002" / "images" / names[7]

    # The same rows and split come out of load_splits for either layout.
    official_test = set(_lines(nih_root / "test_list.txt"))
    test = [name for name in names if name in official_test]
    train_val = [name for name in names if name not in official_test]
    assert test and len(train_val) >= 3
    for root in (flat, nested):
        _write_mini_root(root, raw_rows[:12], train_val, test)
    a = load_splits(flat, validation_fraction=0.3, seed=3)
    b = load_splits(nested, validation_fraction=0.3, seed=3)
    for (name, frame_a), (_, frame_b) in zip(a.items(), b.items(), strict=True):
        assert frame_a["image"].tolist() == frame_b["image"].tolist(), name
    assert set(a.test["image"]) == set(test)
    assert len(a.validation) > 0 and len(a.train) > 0


def test_real_images_in_the_nested_layout(tmp_path: Path, nih_root: Path) -> None:
    real = sorted((nih_root / "images").glob("*.png"))
    assert len(real) == 21
    assert list(find_images(nih_root)) == [p.name for p in real]
    for i, source in enumerate(real):
        _link_or_copy(source, tmp_path / f"images_{1 + i % 3:03d}" / "images" / source.name)
    for name in (CSV_NAME, "train_val_list.txt", "test_list.txt"):
        _link_or_copy(nih_root / name, tmp_path / name)
    found = find_images(tmp_path)
    assert list(found) == [p.name for p in real]
    assert found[real[4].name].parent.parent.name == "images_002"
    nested, flat = load_splits(tmp_path), load_splits(nih_root)
    for (name, frame_n), (_, frame_f) in zip(nested.items(), flat.items(), strict=True):
        assert frame_n["image"].tolist() == frame_f["image"].tolist(), name
        assert frame_n[list(FINDINGS)].equals(frame_f[list(FINDINGS)])


def test_missing_lists_and_csv_are_clear_errors(tmp_path: Path, nih_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"NIH_Data_Entry\.csv"):
        load_splits(tmp_path)
    _link_or_copy(nih_root / CSV_NAME, tmp_path / CSV_NAME)
    with pytest.raises(FileNotFoundError, match=r"train_val_list\.txt"):
        load_splits(tmp_path)
    _link_or_copy(nih_root / "train_val_list.txt", tmp_path / "train_val_list.txt")
    with pytest.raises(FileNotFoundError, match=r"test_list\.txt"):
        load_splits(tmp_path)


def test_lists_that_leak_images_or_patients_are_rejected(tmp_path: Path, raw_rows: list[dict[str, str]]) -> None:
    rows = raw_rows[:6]  # patient 1 has images 000..002 here
    names = [row["Image Index"] for row in rows]
    assert rows[0]["Patient ID"] == rows[1]["Patient ID"]
    _write_mini_root(tmp_path / "image", rows, names[:4], names[3:])
    with pytest.raises(ValueError, match="in both"):
        load_splits(tmp_path / "image", require_images=False)
    _write_mini_root(tmp_path / "patient", rows, names[1:], names[:1])
    with pytest.raises(ValueError, match="patients have images in both"):
        load_splits(tmp_path / "patient", require_images=False)
    _write_mini_root(tmp_path / "unknown", rows, [*names[:4], "99999999_000.png"], names[4:])
    with pytest.raises(ValueError, match="not in the labels table"):
        load_splits(tmp_path / "unknown", require_images=False)


# --------------------------------------------------------------------------------------------------
# Download, against a fake server


def _tar_gz(members: dict[str, bytes], directory: str | None = "images") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if directory:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _png_bytes(seed: int) -> bytes:
    """A noise PNG (~1 kB, incompressible) so the archive is a few kB and a resume point lands inside it."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PNGS = {f"images/0000000{i}_000.png": _png_bytes(i) for i in range(1, 4)}
ARCHIVE = _tar_gz(PNGS)
SHA1 = {1: hashlib.sha1(ARCHIVE).hexdigest(), 2: hashlib.sha1(ARCHIVE).hexdigest()}
assert len(ARCHIVE) > 3000  # the resume and truncation tests cut it at 1000 bytes and at half


class _Response:
    def __init__(self, body: bytes, status: int, headers: dict[str, str], cut_after: int | None) -> None:
        self._body = io.BytesIO(body if cut_after is None else body[:cut_after])
        self.status = status
        self.headers = headers

    def getcode(self) -> int:
        return self.status

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self._body.close()


class FakeServer:
    """Serves ``body`` for any URL, honouring ``Range: bytes=N-`` like Box does (206 +
    Content-Range); ``cut_after`` drops the connection early, ``ignore_range`` answers 200."""

    def __init__(self, body: bytes, *, cut_after: int | None = None, ignore_range: bool = False) -> None:
        self.body, self.cut_after, self.ignore_range = body, cut_after, ignore_range
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, request: urllib.request.Request, timeout: float | None = None) -> _Response:
        range_header = request.get_header("Range")
        self.requests.append((request.full_url, range_header))
        start = int(range_header.split("=")[1].rstrip("-")) if range_header and not self.ignore_range else 0
        body = self.body[start:]
        headers = {"Content-Length": str(len(body))}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
        return _Response(body, 206 if start else 200, headers, self.cut_after)


def _no_network(request: urllib.request.Request, timeout: float | None = None) -> None:
    raise AssertionError(f"unexpected download of {request.full_url}")


def _extracted(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "images").glob("*.png"))}


EXPECTED = {Path(name).name: data for name, data in PNGS.items()}


def test_fresh_download_verifies_extracts_flat_and_then_skips(tmp_path: Path) -> None:
    server = FakeServer(ARCHIVE)
    result = download_nih(tmp_path, archives=[1], opener=server, chunk_size=97, sha1=SHA1)
    assert result == [tmp_path / "images_01.tar.gz"]
    assert server.requests == [(ARCHIVE_URLS[1], None)]
    assert (tmp_path / "images_01.tar.gz").read_bytes() == ARCHIVE
    assert not (tmp_path / "images_01.tar.gz.part").exists()
    assert _extracted(tmp_path) == EXPECTED
    assert not [p for p in (tmp_path / "images").iterdir() if p.is_dir() or p.name.startswith(".")]
    # The marker makes a rerun a no-op, even after the archive is deleted to save disk.
    (tmp_path / "images_01.tar.gz").unlink()
    assert download_nih(tmp_path, archives=[1], opener=_no_network) == [tmp_path / "images_01.tar.gz"]


def test_the_real_links_and_checksums_are_complete() -> None:
    assert sorted(ARCHIVE_URLS) == list(range(1, 13)) == sorted(nih_download.ARCHIVE_SHA1)
    assert all(url.startswith("https://nihcc.box.com/shared/static/") for url in ARCHIVE_URLS.values())
    assert len(set(ARCHIVE_URLS.values())) == 12
    assert all(len(value) == 40 for value in nih_download.ARCHIVE_SHA1.values())


def test_a_partial_download_resumes_with_a_range_request(tmp_path: Path) -> None:
    (tmp_path / "images_01.tar.gz.part").write_bytes(ARCHIVE[:1000])
    server = FakeServer(ARCHIVE)
    download_nih(tmp_path, archives=[1], opener=server, sha1=SHA1)
    assert server.requests == [(ARCHIVE_URLS[1], "bytes=1000-")]
    assert (tmp_path / "images_01.tar.gz").read_bytes() == ARCHIVE
    assert _extracted(tmp_path) == EXPECTED


def test_a_server_that_ignores_range_restarts_from_zero(tmp_path: Path) -> None:
    (tmp_path / "images_01.tar.gz.part").write_bytes(b"x" * 500)  # would corrupt the file if appended to
    download_nih(tmp_path, archives=[1], opener=FakeServer(ARCHIVE, ignore_range=True), sha1=SHA1)
    assert (tmp_path / "images_01.tar.gz").read_bytes() == ARCHIVE


def test_a_truncated_transfer_is_rejected_then_resumed(tmp_path: Path) -> None:
    cut = len(ARCHIVE) // 2
    with pytest.raises(NihDownloadError, match=f"{cut} of {len(ARCHIVE)} bytes"):
        download_nih(tmp_path, archives=[1], opener=FakeServer(ARCHIVE, cut_after=cut), sha1=SHA1)
    assert not (tmp_path / "images_01.tar.gz").exists()
    assert (tmp_path / "images_01.tar.gz.part").stat().st_size == cut  # kept for the resume
    assert not list(tmp_path.glob(".*.extracted")) and _extracted(tmp_path) == {}
    server = FakeServer(ARCHIVE)
    download_nih(tmp_path, archives=[1], opener=server, sha1=SHA1)
    assert server.requests[0][1] == f"bytes={cut}-"
    assert _extracted(tmp_path) == EXPECTED


@pytest.mark.parametrize(
    ("body", "sha1", "message"),
    [
        (b"\x1f\x8b" + bytes(range(256)) * 8, {}, "not a readable tar.gz"),  # gzip magic, garbage after
        (ARCHIVE[: len(ARCHIVE) - 40], {}, "not a readable tar.gz"),  # complete length, truncated stream
        (ARCHIVE[:-8], {}, "not a readable tar.gz"),  # only the gzip CRC/length trailer missing
        (_tar_gz({"images/00000009_000.png": b"png"}), SHA1, "SHA-1"),  # valid archive, not the published one
        (_tar_gz({"../00000009_000.png": b"png"}, directory=None), {}, "path traversal"),
        (_tar_gz({}, directory="images"), {}, "holds no files"),
    ],
    # Named ids: the archives' gzip headers carry the time they were made, so byte ids would differ
    # between two xdist workers collecting a second apart (and xdist refuses different collections).
    ids=[
        "gzip-magic-then-garbage",
        "truncated-stream",
        "no-gzip-trailer",
        "not-the-published-sha1",
        "path-traversal",
        "empty",
    ],
)
def test_a_corrupt_archive_is_rejected_and_deleted(
    tmp_path: Path, body: bytes, sha1: dict[int, str], message: str
) -> None:
    root = tmp_path / "root"
    with pytest.raises(NihDownloadError, match=message):
        download_nih(root, archives=[1], opener=FakeServer(body), sha1=sha1)
    assert sorted(p.name for p in root.iterdir()) == []  # no part, no archive, no marker, no images
    assert not (tmp_path / "00000009_000.png").exists()


def test_offline_raises_a_clear_connection_error_on_the_first_failure(tmp_path: Path) -> None:
    calls: list[str] = []

    def offline(request: urllib.request.Request, timeout: float | None = None) -> None:
        calls.append(request.full_url)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    with pytest.raises(ConnectionError) as error:
        download_nih(tmp_path, archives=[1, 2, 3], opener=offline)
    assert calls == [ARCHIVE_URLS[1]]  # stops at the first failure
    text = str(error.value)
    assert "network is unreachable" in text and "by hand" in text and str(tmp_path) in text
    assert "images_01.tar.gz" in text


def test_an_http_error_says_what_the_server_answered(tmp_path: Path) -> None:
    def gone(request: urllib.request.Request, timeout: float | None = None) -> None:
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    with pytest.raises(ConnectionError, match=r"HTTP 404.*by hand"):
        download_nih(tmp_path, archives=[1], opener=gone)


@pytest.mark.parametrize("name", ["images_02.tar.gz", "images_002.tar.gz"])
def test_archives_placed_by_hand_are_used_without_downloading(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(ARCHIVE)
    assert download_nih(tmp_path, archives=[2], opener=_no_network, sha1=SHA1) == [tmp_path / name]
    assert _extracted(tmp_path) == EXPECTED
    assert (tmp_path / name).exists()


def test_a_damaged_archive_placed_by_hand_is_reported_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "images_03.tar.gz").write_bytes(ARCHIVE[:200])
    with pytest.raises(NihDownloadError, match=r"images_03\.tar\.gz"):
        download_nih(tmp_path, archives=[3], opener=_no_network, sha1={})
    assert (tmp_path / "images_03.tar.gz").stat().st_size == 200


def test_unknown_archive_numbers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="13"):
        download_nih(tmp_path, archives=[13], opener=_no_network)


# --------------------------------------------------------------------------------------------------
# Per-finding AUROC


def test_per_finding_auroc_matches_sklearn_and_writes_atomically(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y_true = (rng.random((300, 14)) < 0.2).astype(int)
    y_true[:, 7] = 0  # Hernia absent: undefined AUROC
    y_score = np.clip(y_true * 0.3 + rng.random((300, 14)), 0, 1)
    frame = per_finding_auroc(y_true, y_score)

    assert list(frame.columns) == ["finding", "auroc", "positives", "negatives"]
    assert frame["finding"].tolist() == [*FINDINGS, "mean"]
    expected = []
    for j in range(14):
        if j == 7:
            expected.append(np.nan)
            continue
        expected.append(roc_auc_score(y_true[:, j], y_score[:, j]))
    np.testing.assert_allclose(frame["auroc"].iloc[:14].to_numpy(), expected, rtol=1e-12)
    assert np.isnan(frame.loc[7, "auroc"])
    assert frame["auroc"].iloc[-1] == pytest.approx(np.nanmean(expected))
    assert frame["positives"].iloc[:14].tolist() == y_true.sum(axis=0).tolist()
    assert (frame["positives"] + frame["negatives"]).iloc[:14].eq(300).all()

    out = write_auroc_csv(frame, tmp_path / "reports" / "nih_auroc.csv")
    back = pd.read_csv(out)
    assert back["finding"].tolist() == frame["finding"].tolist()
    np.testing.assert_allclose(back["auroc"], frame["auroc"], atol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["nih_auroc.csv"]  # no temporary left behind


def test_per_finding_auroc_rejects_bad_shapes_and_values() -> None:
    with pytest.raises(ValueError, match="14"):
        per_finding_auroc(np.zeros((4, 13)), np.zeros((4, 13)))
    with pytest.raises(ValueError, match="0 and 1"):
        per_finding_auroc(np.full((4, 14), 2), np.zeros((4, 14)))
    one = per_finding_auroc(np.array([[0, 1], [1, 1]]), np.array([[0.1, 0.5], [0.9, 0.2]]), findings=["A", "B"])
    assert one["auroc"].iloc[0] == 1.0 and np.isnan(one["auroc"].iloc[1])
    assert one["auroc"].iloc[-1] == 1.0
