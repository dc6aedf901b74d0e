"""Per-file batch bookkeeping shared by the file-processing stages.

A stage writes one row per input file into a report CSV in its output folder. Rows are also
appended, as they finish, to a hidden journal next to the report, so an interrupted run keeps
what it did; the next run merges journal and report, skips finished files (unless
``--overwrite``) and writes the report again atomically. Errors go to the report and to stderr
and make the stage's exit code non-zero.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deepcovidxr.atomic import write_text

log = logging.getLogger(__name__)

ERROR = "error"


@dataclass
class BatchReport:
    path: Path
    columns: list[str]
    overwrite: bool = False
    rows: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._journal = self.path.with_name(f".{self.path.name}.journal")
        self._previous: dict[str, dict] = {} if self.overwrite else self._load_previous()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._journal_handle = self._journal.open("a", encoding="utf-8")

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

    def finished(self, file: str, *outputs: Path) -> bool:
        """True when a previous run handled ``file`` without error and its outputs exist.
        The previous row is carried over into this run's report."""
        row = self._previous.get(file)
        if row is None or row.get("status") == ERROR or not all(Path(o).is_file() for o in outputs):
            return False
        self.rows[file] = {c: row.get(c, "") for c in self.columns}
        return True

    def add(self, row: dict) -> None:
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
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows[k] for k in sorted(self.rows))
        write_text(self.path, buffer.getvalue())
        self._journal.unlink(missing_ok=True)
        return self.path


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
