"""Per-file batch bookkeeping shared by the file-processing stages.

A stage writes one row per input file into a report CSV in its output folder. Rows are also
appended, as they finish, to a hidden journal next to the report, so an interrupted run keeps
what it did; the next run merges journal and report, skips finished files (unless
``--overwrite``) and writes the report again atomically. Errors go to the report and to stderr
and make the stage's exit code non-zero.

A finished row is trusted only when it was made from the same input and the same options: every
row carries a ``fingerprint`` (the stage's options that shape the outputs, with the size and
modification time of every file among them, plus the input file's size and modification time and
what the stage adds per row, e.g. a dataset image's split). A rerun redoes every row whose
fingerprint differs, so an output folder written under other options is redone, never reused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from deepcovidxr.contract.atomic import write_json, write_text

log = logging.getLogger(__name__)

ERROR = "error"
FINGERPRINT = "fingerprint"  # the report column a rerun compares (see the module docstring)


def file_stamp(path: Path | str) -> str:
    """``size:mtime_ns`` of a file, "" when it does not exist: enough to see that an input was
    replaced or rewritten, without reading it (a content hash of every film would cost a pass
    over the whole input on each rerun)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def stamped(value: object) -> object:
    """An option value as JSON, with every file it names stamped (:func:`file_stamp`) and every
    folder it names listed with its files' stamps, so a retrained member or another U-Net at the
    same path counts as another option."""
    if isinstance(value, Path):
        if value.is_dir():
            files = {p.name: file_stamp(p) for p in sorted(value.iterdir()) if p.is_file()}
            return {"folder": str(value), "files": files}
        return {"file": str(value), "stamp": file_stamp(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): stamped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stamped(v) for v in value]
    return value


def digest(value: object) -> str:
    """A short hash of a JSON-able value (keys sorted): the fingerprints' one hash."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


@dataclass
class BatchReport:
    """``options``: what shapes this stage's outputs besides the input file (``None``: nothing
    does; every row is then keyed by its input alone)."""

    path: Path
    columns: list[str]
    overwrite: bool = False
    options: Mapping[str, object] | None = None
    rows: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if FINGERPRINT not in self.columns:
            self.columns = [*self.columns, FINGERPRINT]
        self._journal = self.path.with_name(f".{self.path.name}.journal")
        self._options_file = self.path.with_name(f".{self.path.name}.options.json")
        self._options = stamped(dict(self.options or {}))
        self._options_digest = digest(self._options)
        self._fingerprints: dict[str, str] = {}
        self.redone = 0  # rows a previous run finished from other options or other input content
        self._previous: dict[str, dict] = {} if self.overwrite else self._load_previous()
        self.previous_options: dict | None = self._load_previous_options() if self._previous or self.overwrite else None
        if self.previous_options is not None and self.previous_options != self._options:
            log.warning(
                "%s was written with other options (%s): its outputs are redone, not reused",
                self.path,
                _changed(self.previous_options, self._options),
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self._options_file, self._options)
        self._journal_handle = self._journal.open("a", encoding="utf-8")

    def _load_previous_options(self) -> dict | None:
        try:
            return json.loads(self._options_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _load_previous(self) -> dict[str, dict]:
        previous: dict[str, dict] = {}
        if self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    previous[row["file"]] = row
        if self._journal.is_file():
            for line in self._journal.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run may be cut short
                    continue
                previous[row["file"]] = row
        return previous

    def fingerprint(self, file: str, source: Path | None = None, extra: object = None) -> str:
        """The fingerprint of ``file``'s row: the options, the input ``source``'s stamp and ``extra``
        (what else decides this row's outputs). Rows added later for ``file`` carry it."""
        value = digest([self._options_digest, file_stamp(source) if source is not None else None, stamped(extra)])
        self._fingerprints[file] = value
        return value

    def finished(self, file: str, *outputs: Path, source: Path | None = None, extra: object = None) -> bool:
        """True when a previous run handled ``file`` without error, from the same input content
        (``source``'s size and modification time) and the same options and ``extra``, and its
        outputs exist. The previous row is carried over into this run's report."""
        fingerprint = self.fingerprint(file, source, extra)
        row = self._previous.get(file)
        if row is None or row.get("status") == ERROR or not all(Path(o).is_file() for o in outputs):
            return False
        if row.get(FINGERPRINT) != fingerprint:
            self.redone += 1
            return False
        self.rows[file] = {c: row.get(c, "") for c in self.columns}
        return True

    def recorded_rows(self) -> dict[str, dict]:
        """The rows the previous run left (report and journal), also under ``--overwrite``: what an
        earlier run wrote, for a stage that must clear away what this run will not write again."""
        return self._load_previous() if self.overwrite else dict(self._previous)

    def add(self, row: dict) -> None:
        known = self._fingerprints.get(row["file"]) or self.fingerprint(row["file"])
        row = {**row, FINGERPRINT: row.get(FINGERPRINT) or known}
        row = {c: row.get(c, "") for c in self.columns}
        self.rows[row["file"]] = row
        if row.get("status") == ERROR:
            log.error("%s: %s", row["file"], row.get("error", "failed"))
        self._journal_handle.write(json.dumps(row, default=str) + "\n")
        self._journal_handle.flush()

    @property
    def error_count(self) -> int:
        return sum(1 for r in self.rows.values() if r.get("status") == ERROR)

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def close(self) -> Path:
        """Write the report (sorted by file) atomically and drop the journal."""
        self._journal_handle.close()
        if self.redone:
            log.warning(
                "%s: %d file(s) done before from another input content or other options were redone",
                self.path.name,
                self.redone,
            )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows[k] for k in sorted(self.rows))
        write_text(self.path, buffer.getvalue())
        self._journal.unlink(missing_ok=True)
        return self.path


def _changed(before: dict, after: dict) -> str:
    """A short account of the options that differ: ``size 224 -> 331``."""
    keys = sorted(set(before) | set(after), key=str)
    parts = [f"{k} {_short(before.get(k))} -> {_short(after.get(k))}" for k in keys if before.get(k) != after.get(k)]
    return "; ".join(parts) or "unknown difference"


def _short(value: object) -> str:
    if isinstance(value, dict) and "stamp" in value:
        return f"{value.get('file')} ({value['stamp'] or 'missing'})"
    if isinstance(value, dict) and "files" in value:
        return f"{value.get('folder')} ({len(value['files'])} files)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


UNREADABLE_COLUMNS = ("split", "Filenames", "error")


def write_unreadable(path: Path, rows: list[tuple[str, str, str]]) -> int:
    """``path`` listing the dataset-tree files a stage could not read (``split, Filenames,
    error``), or no file when every one was read (a stale list from an earlier run is removed);
    returns their number, which makes the stage's exit code non-zero."""
    if not rows:
        Path(path).unlink(missing_ok=True)
        return 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(UNREADABLE_COLUMNS)
    writer.writerows(rows)
    write_text(Path(path), buffer.getvalue())
    log.error("%d unreadable file(s) left out; see %s", len(rows), path)
    return len(rows)


def count_unreadable(path: Path) -> int:
    """The files :func:`write_unreadable` listed in ``path`` (0 when there is no list)."""
    if not Path(path).is_file():
        return 0
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))
