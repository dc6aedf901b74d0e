"""NIH ChestX-ray14 for backbone pretraining: labels table, official patient-wise splits, archive
download and per-finding AUROC. Pure Python (pandas/numpy/scikit-learn), no TensorFlow.

What changes from the original ``pretrain.py`` + ``utils/NIH_util.py`` (SPEC section 7):

- all 14 findings are targets (the original kept labels with > 1000 images, dropping Hernia), and
  "No Finding" images stay in as all-zero targets (Keras silently dropped ~60k of them);
- the split is the NIH's official patient-wise ``train_val_list.txt`` / ``test_list.txt``, and
  validation is carved out of train_val by patient, not by image (the original's image-level 80/20
  split put follow-ups of one patient on both sides);
- the labels CSV may be named as the NIH ships it (``Data_Entry_2017.csv`` or the 2020 revision),
  and images are found in the flat layout and in the nested Kaggle layout;
- downloads resume, are checked (length, gzip/tar integrity, published SHA-1) and are extracted
  without path traversal; offline, the error says how to place the archives by hand.

Example::

    splits = load_splits(Path("/data/nih"), validation_fraction=0.1, seed=0)
    splits.train[["path", *FINDINGS]]   # multi-hot targets for a 14-unit sigmoid head
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from deepcovidxr.atomic import write_text
from deepcovidxr.errors import DeepcovidxrError, MissingInputError, OfflineError, UsageError

log = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"

# Preference order: the 2020 revision fixes label errors of the 2017 table, so it wins when both exist.
LABEL_CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "NIH_Data_Entry.csv")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
BOX_FOLDER = "https://nihcc.app.box.com/v/ChestXray-NIHCC"

# The NIH's static Box links, as listed in its batch_download_zips.py and hard-coded in the original
# DeepCovidXR utils/NIH_util.py (IVPLatNU/DeepCovidXR); index i is images_{i:02d}.tar.gz.
ARCHIVE_URLS: Mapping[int, str] = {
    1: "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz",
    2: "https://nihcc.box.com/shared/static/i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz",
    3: "https://nihcc.box.com/shared/static/f1t00wrtdk94satdfb9olcolqx20z2jp.gz",
    4: "https://nihcc.box.com/shared/static/0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz",
    5: "https://nihcc.box.com/shared/static/v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz",
    6: "https://nihcc.box.com/shared/static/asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz",
    7: "https://nihcc.box.com/shared/static/jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz",
    8: "https://nihcc.box.com/shared/static/tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz",
    9: "https://nihcc.box.com/shared/static/upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz",
    10: "https://nihcc.box.com/shared/static/l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz",
    11: "https://nihcc.box.com/shared/static/hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz",
    12: "https://nihcc.box.com/shared/static/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz",
}

# SHA-1 of each archive as published with the Box folder, copied from the docstring of
# hpca-uji/PyDTNN pydtnn/datasets/chestxray.py. No MD5s or byte sizes are published next to the links,
# so the SHA-1 is the content check; the length check uses the server's Content-Length/Content-Range.
ARCHIVE_SHA1: Mapping[int, str] = {
    1: "fef95a7a789bcb0013fbf966cb92c4d92c90becd",
    2: "23d2f2cd62d0271b16869abcdd8a00a1fd2492b5",
    3: "69935ac7886c18246446899cb2b75443195847c4",
    4: "fb86b3adaad0e9ff1405154cf6521e180063af10",
    5: "baa8155f0285edb4a07e717f79682713416eb205",
    6: "3a4252d82143757600885121bb57b0ef4e482532",
    7: "cd3cd855acb4e12ca11608be6aae99414d4bc22b",
    8: "d8891e0079e88fc04dab45253b86a2214ff499b6",
    9: "84661300d777e07be9ae7d5f37fb82721202f0bc",
    10: "30216f59778f259db91d77bcd3d0495c8fce88ef",
    11: "97985118ba36f18c27d62371d28c1698478cecfa",
    12: "cb2865369f434a9deea11e2d5222b8472890681b",
}

Opener = Callable[..., Any]


# --------------------------------------------------------------------------------------------------
# Labels table and images


def find_labels_csv(root: Path) -> Path:
    """The labels table in ``root``: ``Data_Entry_2017_v2020.csv`` if present, else
    ``Data_Entry_2017.csv``, else the original code's ``NIH_Data_Entry.csv``."""
    root = Path(root)
    for name in LABEL_CSV_NAMES:
        candidate = root / name
        if candidate.is_file():
            return candidate
    raise MissingInputError(
        f"no NIH ChestX-ray14 labels table in {root}: expected one of {', '.join(LABEL_CSV_NAMES)} "
        f"(download Data_Entry_2017_v2020.csv from {BOX_FOLDER})"
    )


def _images_in(folder: Path) -> list[Path]:
    """PNG files directly in ``folder`` (scandir: an order of magnitude faster than glob on 112k files)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return [
            Path(entry.path)
            for entry in entries
            if entry.name.lower().endswith(".png") and not entry.name.startswith(".") and entry.is_file()
        ]


def find_images(root: Path) -> dict[str, Path]:
    """Image index (``00000001_000.png``) -> path, sorted by index.

    Looks in ``root``, ``root/images`` (the flat layout this module's download writes) and
    ``root/images_*/images`` (the nested Kaggle/Box layout, e.g. ``images_001/images``). When one
    name occurs in several folders the first in that order (folders sorted) wins, and the count of
    such duplicates is logged.
    """
    root = Path(root)
    folders = [root, root / "images"]
    # Nested layout: images_001/images/*.png (Kaggle); also images_01/images (some re-packs).
    folders += sorted(p / "images" for p in root.glob("images_*") if p.is_dir())
    found: dict[str, Path] = {}
    duplicates = 0
    for folder in folders:
        for path in sorted(_images_in(folder)):
            if path.name in found:
                duplicates += 1
                continue
            found[path.name] = path
    if duplicates:
        log.warning("%d image names occur in more than one folder under %s; kept the first of each", duplicates, root)
    return dict(sorted(found.items()))


def _multi_hot(labels: pd.Series, source: Path) -> np.ndarray:
    """(n, 14) uint8 multi-hot from pipe-separated label strings. Only the ~800 distinct strings are
    parsed, then broadcast by their codes: ~50x faster than ``str.get_dummies`` on 112k rows."""
    if labels.isna().any():
        first = labels.index[labels.isna()][0]
        raise UsageError(f"{source}: empty 'Finding Labels' (first at data row {first})")
    codes, uniques = pd.factorize(labels, sort=False)
    column = {finding: i for i, finding in enumerate(FINDINGS)}
    table = np.zeros((len(uniques), len(FINDINGS)), dtype=np.uint8)
    unknown: set[str] = set()
    for row, text in enumerate(uniques):
        for name in (part.strip() for part in str(text).split("|")):
            if name == NO_FINDING:
                continue
            if name in column:
                table[row, column[name]] = 1
            else:
                unknown.add(name)
    if unknown:
        raise UsageError(f"{source}: unknown finding labels {sorted(unknown)}; known: {', '.join(FINDINGS)}")
    return table[codes]


def read_table(csv_path: Path) -> pd.DataFrame:
    """The NIH labels CSV as ``image``, ``patient_id`` (string) and one 0/1 int column per finding.

    "No Finding" rows are kept, with all 14 columns zero. Only the three columns needed are parsed,
    which also makes the 2017 table's trailing empty column harmless.
    """
    csv_path = Path(csv_path)
    wanted = ["Image Index", "Finding Labels", "Patient ID"]
    try:
        raw = pd.read_csv(csv_path, usecols=wanted, dtype=str, keep_default_na=False, na_values=[""])
    except ValueError as error:  # pandas names the missing columns in its message
        raise UsageError(f"{csv_path}: not an NIH ChestX-ray14 labels table ({error})") from None
    if raw["Image Index"].isna().any() or raw["Patient ID"].isna().any():
        raise UsageError(f"{csv_path}: rows with an empty 'Image Index' or 'Patient ID'")
    duplicated = raw["Image Index"][raw["Image Index"].duplicated()]
    if len(duplicated):
        raise UsageError(f"{csv_path}: images listed more than once: {duplicated.head(5).tolist()}")
    hot = _multi_hot(raw["Finding Labels"], csv_path)
    table = pd.DataFrame(
        {
            "image": raw["Image Index"].str.strip().to_numpy(),
            # Kept as text: an id is a name, and pandas would otherwise make it an int column.
            "patient_id": raw["Patient ID"].str.strip().to_numpy(),
        }
    )
    findings = pd.DataFrame(hot.astype(np.int64), columns=list(FINDINGS))
    return pd.concat([table, findings], axis=1)


# --------------------------------------------------------------------------------------------------
# Official splits


@dataclass(frozen=True, eq=False)  # DataFrames have no single truth value to compare by
class NihSplits:
    """Train / validation / test tables; each has ``path``, ``image``, ``patient_id`` and the 14
    finding columns. Test is the NIH's official test list; train and validation partition the
    official train_val list by patient."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        """(name, table) in the order train, validation, test."""
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per split: ``images``, ``patients``, ``no_finding`` (all-zero rows) and ``positives``
        (finding -> count)."""
        out: dict[str, dict[str, Any]] = {}
        for name, frame in self.items():
            targets = frame[list(FINDINGS)]
            out[name] = {
                "images": len(frame),
                "patients": int(frame["patient_id"].nunique()),
                "no_finding": int((targets.sum(axis=1) == 0).sum()),
                "positives": {finding: int(targets[finding].sum()) for finding in FINDINGS},
            }
        return out


def _read_list(root: Path, name: str) -> list[str]:
    path = root / name
    if not path.is_file():
        raise MissingInputError(
            f"official split list {path} not found: put {TRAIN_VAL_LIST} and {TEST_LIST} from {BOX_FOLDER} "
            f"next to the labels table (the patient-wise split depends on them)"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UsageError(f"{path} lists no images")
    return names


def _patient_split(patients: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The validation patients: ``round(fraction * n)`` of them, chosen by a seeded permutation of
    the sorted ids, so the choice depends only on (ids, fraction, seed), never on input order."""
    ordered = np.array(sorted(set(patients)), dtype=object)
    count = round(fraction * len(ordered))
    if fraction > 0 and count == 0 and len(ordered) > 1:
        count = 1  # a requested validation set should not vanish on tiny inputs
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return set(ordered[chosen].tolist())


def load_splits(root: Path, validation_fraction: float = 0.1, seed: int = 0, require_images: bool = True) -> NihSplits:
    """Official patient-wise NIH splits with a seeded patient-wise validation carve-out.

    The validation patients are chosen from the whole official train_val list before images are
    looked up, so a partial download keeps every patient on the same side as the full one. With
    ``require_images`` rows whose PNG is absent are dropped (counted per split in a warning);
    without it every row is kept and missing paths are None.
    """
    root = Path(root)
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    table = read_table(find_labels_csv(root))
    train_val = _read_list(root, TRAIN_VAL_LIST)
    test = _read_list(root, TEST_LIST)

    both = set(train_val) & set(test)
    if both:
        raise UsageError(f"{len(both)} images are in both {TRAIN_VAL_LIST} and {TEST_LIST}, e.g. {sorted(both)[:3]}")
    indexed = table.set_index("image", drop=False)
    listed = pd.Index(train_val + test)
    unknown = listed.difference(indexed.index)
    if len(unknown):
        raise UsageError(f"{len(unknown)} listed images are not in the labels table, e.g. {unknown[:3].tolist()}")
    unlisted = len(indexed) - len(listed)
    if unlisted:
        log.warning("%d images of the labels table are in neither official list; they are left out", unlisted)

    train_val_rows = indexed.loc[train_val].reset_index(drop=True)
    test_rows = indexed.loc[test].reset_index(drop=True)
    # The official lists are patient-wise; verify rather than trust, since a leak would inflate test AUROC.
    leaked = set(train_val_rows["patient_id"]) & set(test_rows["patient_id"])
    if leaked:
        raise UsageError(f"{len(leaked)} patients have images in both official lists, e.g. {sorted(leaked)[:3]}")

    validation_patients = _patient_split(train_val_rows["patient_id"].tolist(), validation_fraction, seed)
    in_validation = train_val_rows["patient_id"].isin(validation_patients)
    parts = {
        "train": train_val_rows[~in_validation],
        "validation": train_val_rows[in_validation],
        "test": test_rows,
    }

    images = {name: str(path) for name, path in find_images(root).items()}
    columns = ["path", "image", "patient_id", *FINDINGS]
    out: dict[str, pd.DataFrame] = {}
    dropped: dict[str, int] = {}
    for name, frame in parts.items():
        frame = frame.assign(path=frame["image"].map(images))
        if require_images:
            present = frame["path"].notna()
            dropped[name] = int((~present).sum())
            frame = frame[present]
        else:
            frame = frame.assign(path=frame["path"].astype(object).where(frame["path"].notna(), None))
        out[name] = frame[columns].reset_index(drop=True)
    if require_images and any(dropped.values()):
        log.warning(
            "images missing under %s, rows dropped: train %d, validation %d, test %d",
            root,
            dropped["train"],
            dropped["validation"],
            dropped["test"],
        )
    return NihSplits(train=out["train"], validation=out["validation"], test=out["test"])


# --------------------------------------------------------------------------------------------------
# Download


class NihDownloadError(DeepcovidxrError, RuntimeError):
    """An archive that arrived incomplete or damaged, or that holds unsafe member names."""


def archive_name(number: int) -> str:
    """``images_01.tar.gz`` .. ``images_12.tar.gz``: the names the NIH's download script writes."""
    return f"images_{number:02d}.tar.gz"


def _marker(root: Path, number: int) -> Path:
    return root / f".{archive_name(number)}.extracted"


def _placed_archive(root: Path, number: int) -> Path | None:
    """An archive the user put in ``root``: ``images_01.tar.gz`` (script name) or ``images_001.tar.gz``
    (the name the Box web page gives it)."""
    for name in (archive_name(number), f"images_{number:03d}.tar.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _offline_error(root: Path, number: int, url: str, reason: object) -> OfflineError:
    return OfflineError(
        f"cannot download {archive_name(number)} from {url}: the network is unreachable ({reason}). "
        f"Download the archives images_01.tar.gz .. images_12.tar.gz by hand from {BOX_FOLDER} "
        f"(folder 'images') into {root}; the next run verifies and extracts them without downloading."
    )


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _expected_total(response: Any, offset: int) -> tuple[int, int | None]:
    """(start, total) from a response to a request for bytes ``offset-``. A 200 means the server
    ignored the Range header and sends everything from byte 0."""
    status = getattr(response, "status", None) or response.getcode()
    headers = response.headers
    length = headers.get("Content-Length")
    if status == 206:
        match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise NihDownloadError(f"server answered a resume from byte {offset} with {headers.get('Content-Range')!r}")
        total = None if match.group(3) == "*" else int(match.group(3))
        if length is not None:
            if total is not None and offset + int(length) != total:
                raise NihDownloadError(
                    f"Content-Length {length} disagrees with Content-Range {headers['Content-Range']}"
                )
            total = offset + int(length)
        return offset, total
    return 0, None if length is None else int(length)


def _fetch(root: Path, number: int, url: str, part: Path, opener: Opener, chunk_size: int, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing from its current size; raise unless the part file
    ends up exactly as long as the server announced."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deepcovidxr-nih/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            log.info("%s: server has nothing past byte %d; checking the part file as complete", part.name, offset)
            return
        raise OfflineError(
            f"cannot download {archive_name(number)}: {url} answered HTTP {error.code} {error.reason}. "
            f"The NIH's static Box links may have moved; download images_01.tar.gz .. images_12.tar.gz by hand "
            f"from {BOX_FOLDER} into {root} and rerun."
        ) from error
    except OSError as error:  # URLError, refused/reset connections, DNS failures and timeouts
        raise _offline_error(root, number, url, getattr(error, "reason", error)) from error

    with response:
        start, total = _expected_total(response, offset)
        if start == 0 and offset:
            log.info("%s: server ignored the resume request; starting again from byte 0", part.name)
        mode = "ab" if start else "wb"
        written = start
        with part.open(mode) as handle:
            try:
                while chunk := response.read(chunk_size):
                    handle.write(chunk)
                    written += len(chunk)
            except (OSError, http.client.HTTPException) as error:  # IncompleteRead is not an OSError
                raise OfflineError(
                    f"connection lost while downloading {archive_name(number)} after {written} bytes ({error}); "
                    f"rerun to resume from {part}"
                ) from error
    if total is not None and written != total:
        # Keep the part: the bytes that arrived are good, and the next call resumes after them.
        raise NihDownloadError(
            f"{archive_name(number)} is incomplete: {written} of {total} bytes arrived; rerun to resume from {part}"
        )


class _HashingReader:
    """A read-only file wrapper that feeds every byte read into a hash, so the SHA-1 and the tar
    listing come from one pass over a multi-GB archive."""

    def __init__(self, handle: BinaryIO, digest: Any) -> None:
        self._handle = handle
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._digest.update(data)
        return data


def _safe_member_name(member: tarfile.TarInfo, archive: Path) -> str | None:
    """The flat file name a member extracts to, or None for entries that are not files (folders).
    Rejects absolute names, ``..`` components and links: an archive that tries to write outside
    the images folder is not an NIH archive."""
    posix = PurePosixPath(member.name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or re.match(r"^[A-Za-z]:", member.name):
        raise NihDownloadError(f"{archive}: unsafe member name {member.name!r} (path traversal)")
    if member.isdir():
        return None
    if not member.isfile():
        raise NihDownloadError(f"{archive}: member {member.name!r} is a link or device, not a file")
    if not posix.name or posix.name.startswith("."):
        return None
    return posix.name


def verify_archive(archive: Path, sha1: str | None = None) -> int:
    """Check that ``archive`` is a complete gzip'd tar (every member readable, safe names) and, when
    ``sha1`` is given, that its SHA-1 matches. Returns the number of files in it."""
    digest = hashlib.sha1(usedforsecurity=False)
    files = 0
    try:
        with archive.open("rb") as raw:
            reader = _HashingReader(raw, digest)
            # gzip is unwrapped here rather than by tarfile ("r|gz"): tarfile stops at the tar
            # end-of-archive blocks and never checks the gzip trailer, so an archive missing its
            # last bytes would pass. Draining GzipFile to its end checks the CRC and the length.
            with gzip.GzipFile(fileobj=reader, mode="rb") as unzipped:
                with tarfile.open(fileobj=unzipped, mode="r|") as tar:
                    for member in tar:
                        if _safe_member_name(member, archive) is not None:
                            files += 1
                while unzipped.read(1 << 20):  # tar record padding after the end-of-archive blocks
                    pass
            while reader.read(1 << 20):  # anything after the gzip member still counts for the SHA-1
                pass
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as error:
        raise NihDownloadError(f"{archive} is not a readable tar.gz archive ({error})") from error
    if files == 0:
        raise NihDownloadError(f"{archive} holds no files")
    if sha1 is not None and digest.hexdigest() != sha1.lower():
        raise NihDownloadError(f"{archive}: SHA-1 {digest.hexdigest()} does not match the published {sha1}")
    return files


def _extract_flat(archive: Path, destination: Path) -> int:
    """Extract every file of ``archive`` into ``destination`` under its base name (as the original
    did, so all 112,120 PNGs land in one folder); each file is written to a temporary name and
    renamed, so an interrupted extraction never leaves a truncated PNG."""
    destination.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            name = _safe_member_name(member, archive)
            if name is None:
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=destination)
            try:
                with os.fdopen(fd, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
                os.replace(tmp_name, destination / name)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
            count += 1
    return count


def download_nih(
    root: Path,
    archives: Iterable[int] = range(1, 13),
    opener: Opener = urllib.request.urlopen,
    chunk_size: int = 1 << 20,
    *,
    urls: Mapping[int, str] = ARCHIVE_URLS,
    sha1: Mapping[int, str] = ARCHIVE_SHA1,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch, verify and extract the ChestX-ray14 image archives into ``root/images``.

    Per archive number: skipped if its marker ``root/.images_NN.tar.gz.extracted`` exists; an
    archive already in ``root`` (``images_NN.tar.gz`` or the Box web name ``images_NNN.tar.gz``) is
    used as is; otherwise it is downloaded into ``images_NN.tar.gz.part``, resuming from the part's
    size with an HTTP Range request, and renamed once complete. Each archive is then verified
    (announced length, whole gzip/tar stream, safe member names, published SHA-1 from ``sha1``) and
    extracted flat. A damaged archive is deleted and raises :class:`NihDownloadError`; the first
    network failure raises :class:`ConnectionError` explaining how to download by hand.

    ``opener(request, timeout=...)`` is ``urllib.request.urlopen`` by default; tests pass a fake.
    Returns the archive paths, in the order requested (an archive already extracted in an earlier
    run may since have been deleted by the user; its path is returned all the same).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = list(archives)
    bad = [n for n in numbers if n not in urls]
    if bad:
        raise UsageError(f"unknown archive numbers {bad}; ChestX-ray14 has archives {min(urls)}..{max(urls)}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    images = root / "images"
    done: list[Path] = []
    for number in numbers:
        marker = _marker(root, number)
        archive = _placed_archive(root, number) or root / archive_name(number)
        if marker.is_file():
            log.info("%s already extracted (%s); skipping", archive.name, marker.name)
            done.append(archive)
            continue
        expected_sha1 = sha1.get(number)
        if not archive.is_file():
            part = root / f"{archive_name(number)}.part"
            log.info("downloading %s from %s", archive.name, urls[number])
            _fetch(root, number, urls[number], part, opener, chunk_size, timeout)
            try:
                verify_archive(part, expected_sha1)
            except NihDownloadError:
                # Complete length but bad content: resuming would only append to garbage.
                part.unlink(missing_ok=True)
                raise
            os.replace(part, archive)
        else:
            log.info("using %s found in %s", archive.name, root)
            verify_archive(archive, expected_sha1)  # a hand-placed file is left alone when it fails
        count = _extract_flat(archive, images)
        write_text(marker, f"{archive.name}\t{count} files\n")
        log.info("extracted %d files from %s into %s", count, archive.name, images)
        done.append(archive)
    return done


# --------------------------------------------------------------------------------------------------
# Evaluation


def per_finding_auroc(y_true: np.ndarray, y_score: np.ndarray, findings: Sequence[str] = FINDINGS) -> pd.DataFrame:
    """AUROC per finding (columns ``finding, auroc, positives, negatives``), NaN where ``y_true``
    holds one class only, plus a final ``mean`` row averaging the defined AUROCs (its counts are
    the totals)."""
    # Imported here: scikit-learn costs about a second to import, and only evaluation needs it.
    from deepcovidxr.metrics import auc_or_nan

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[1] != len(findings):
        raise ValueError(
            f"y_true {y_true.shape} and y_score {y_score.shape} must both be (n, {len(findings)}) for {len(findings)} "
            f"findings"
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    rows = []
    for j, finding in enumerate(findings):
        column = y_true[:, j].astype(np.int64)
        positives = int(column.sum())
        negatives = len(column) - positives
        auroc = auc_or_nan(column, y_score[:, j])
        rows.append({"finding": finding, "auroc": auroc, "positives": positives, "negatives": negatives})
    frame = pd.DataFrame(rows, columns=["finding", "auroc", "positives", "negatives"])
    defined = frame["auroc"].dropna()
    mean = float(defined.mean()) if len(defined) else float("nan")
    total = {
        "finding": "mean",
        "auroc": mean,
        "positives": int(frame["positives"].sum()),
        "negatives": int(frame["negatives"].sum()),
    }
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def write_auroc_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a :func:`per_finding_auroc` table as CSV, atomically (temporary file + rename)."""
    path = Path(path)
    write_text(path, frame.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return path
