"""The finished rows of a prediction on Ray, kept as they arrive, so a driver killed with
``kill -9`` loses at most the batches in flight and its rerun scores only the rest.

Rows arrive a batch at a time from the scoring actors, in no fixed order. Each batch is one
``rows-<n>.npz`` file written atomically (a temporary sibling renamed into place), so a file that
exists is whole, and a kill leaves at most a hidden temporary file, which is never read. The
folder is named by the run's fingerprint (the files with their sizes and modification times, the
ensemble, the engine and every option that shapes a score: predict's ``_fingerprint``, the one
the local backend's journal uses), so a rerun under other files or options starts afresh.
A row is kept once by its index, whichever batch brought it (a batch Ray ran again after a
worker died may come back twice).
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.inference.streaming import fingerprint_folder

log = logging.getLogger(__name__)

# The per-row fields a batch carries into the journal (the views are not kept: they are remade).
FIELDS = ("index", "status", "error", "check", "flagged", "score", "scores", "variance")


class RowJournal:
    """``rows()``: every row journaled by this or an interrupted run with the same fingerprint,
    by index; ``add(batch)``: one batch of rows (numpy columns named as ``FIELDS``); ``close()``:
    the outputs are written, nothing is left to resume."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = Path(root)
        self.folder = fingerprint_folder(self.root, fingerprint)
        self._files = len(self._batches())

    def _batches(self) -> list[Path]:
        return sorted(self.folder.glob("rows-*.npz"))  # never the hidden .part files a kill leaves

    def rows(self) -> dict[int, dict[str, np.ndarray]]:
        found: dict[int, dict[str, np.ndarray]] = {}
        for path in self._batches():
            try:
                with np.load(path, allow_pickle=False) as batch:
                    columns = {name: batch[name] for name in FIELDS}
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                log.warning("predict: %s unreadable (%s); its rows are scored again", path, error)
                continue
            for index, row in split_rows(columns).items():
                found.setdefault(index, row)
        return found

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self._files += 1
        with atomic_path(self.folder / f"rows-{self._files:06d}.npz") as tmp:
            np.savez(tmp, **{name: _plain(batch[name]) for name in FIELDS})

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def split_rows(columns: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """A batch's columns as rows keyed by their index (the fields of ``FIELDS`` only)."""
    indices = [int(i) for i in np.asarray(columns["index"]).tolist()]
    return {index: {name: columns[name][position] for name in FIELDS} for position, index in enumerate(indices)}


def _plain(values) -> np.ndarray:
    """Text as numpy strings: Ray hands text columns over as object arrays, which only a pickle
    could store (and the journal is read without unpickling)."""
    array = np.asarray(values)
    return array.astype(str) if array.dtype == object else array
