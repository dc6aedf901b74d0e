"""The journal of predict's rows on Ray: whole batches only, each row once, never a stale journal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepcovidxr.inference.row_journal import RowJournal


def _batch(indices: list[int], *, score: float = 0.5) -> dict[str, np.ndarray]:
    count = len(indices)
    return {
        "index": np.array(indices),
        "name": np.array([f"{i}.png" for i in indices], dtype=object),  # not journaled
        "status": np.array(["ok"] * count, dtype=object),  # text as Ray hands it over
        "error": np.array([""] * count, dtype=object),
        "check": np.array(["ok"] * count, dtype=object),
        "flagged": np.zeros(count, bool),
        "score": np.ones(count, bool),
        "scores": np.full((count, 2), score),
        "variance": np.zeros((count, 2)),
    }


def test_rows_come_back_by_index_once_whichever_batch_brought_them(tmp_path: Path) -> None:
    journal = RowJournal(tmp_path / "rows", "abc")
    journal.add(_batch([0, 1]))
    journal.add(_batch([1, 2], score=0.9))  # a batch Ray ran again after a worker died
    rows = RowJournal(tmp_path / "rows", "abc").rows()  # a rerun
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["scores"].tolist() == [0.5, 0.5] and str(rows[2]["status"]) == "ok"
    assert set(rows[0]) == {"index", "status", "error", "check", "flagged", "score", "scores", "variance"}


def test_a_kill_leaves_at_most_a_hidden_part_file_which_is_never_read(tmp_path: Path) -> None:
    journal = RowJournal(tmp_path / "rows", "abc")
    journal.add(_batch([0]))
    (journal.folder / ".rows-000002.x.part.npz").write_bytes(b"PK\x03\x04 half written")
    again = RowJournal(tmp_path / "rows", "abc")
    assert sorted(again.rows()) == [0]
    again.add(_batch([1]))  # numbered after the whole batches already there
    assert sorted(p.name for p in again.folder.glob("rows-*.npz")) == ["rows-000001.npz", "rows-000002.npz"]


def test_a_journal_of_other_files_or_options_is_removed_not_trusted(tmp_path: Path) -> None:
    RowJournal(tmp_path / "rows", "old").add(_batch([0, 1]))
    fresh = RowJournal(tmp_path / "rows", "new")
    assert fresh.rows() == {} and [p.name for p in (tmp_path / "rows").iterdir()] == ["new"]
    fresh.close()
    assert not (tmp_path / "rows").exists()
