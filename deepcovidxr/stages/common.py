"""What every stage shares: its result, the relative name of an input, and the refusal of outputs
that would overwrite each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepcovidxr import layout
from deepcovidxr.batch import ERROR, BatchReport


@dataclass(frozen=True)
class StageResult:
    report: Path
    counts: dict[str, int]

    @property
    def exit_code(self) -> int:
        return 1 if self.counts.get(ERROR, 0) else 0


def relative_name(path: Path, root: Path) -> Path:
    return Path(path.name) if root.is_file() else path.relative_to(root)


def refuse_collisions(report: BatchReport, outputs: dict[str, list[Path]]) -> dict[str, str]:
    """Error rows for the inputs whose outputs would overwrite another input's (never written)."""
    clashes = layout.collisions(outputs)
    for name, reason in clashes.items():
        report.add({"file": name, "status": ERROR, "error": reason})
    return clashes
