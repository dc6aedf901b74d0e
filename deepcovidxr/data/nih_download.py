"""Download of the NIH ChestX-ray14 image archives (``pretrain.py --download``): the NIH's 12 Box
links, resumable transfers (HTTP Range), checks of length, gzip/tar integrity and the published
SHA-1, extraction into ``<root>/images`` without path traversal. Offline, the error says how to
place the archives by hand. The labels table and splits are ``nih``.
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from deepcovidxr.contract.atomic import write_text
from deepcovidxr.data.nih import BOX_FOLDER
from deepcovidxr.errors import DeepcovidxrError, OfflineError, UsageError

log = logging.getLogger(__name__)

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
