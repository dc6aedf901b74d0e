"""deepcovidxr.reports.plots: every matplotlib figure is drawn in one module, headless, and freed after saving."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.support.helpers import REPO

# Plot code still living in modules other helpers own; the lead moves it (then this set empties).
NOT_MOVED_YET: set[str] = set()


def _imports_matplotlib(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        if any(name == "matplotlib" or name.startswith("matplotlib.") for name in names):
            return True
    return False


def test_matplotlib_is_used_only_by_the_plots_module() -> None:
    users = {p.relative_to(REPO).as_posix() for p in (REPO / "deepcovidxr").rglob("*.py") if _imports_matplotlib(p)}
    assert users - NOT_MOVED_YET == {"deepcovidxr/reports/plots.py"}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_plot_writes_a_png_and_leaves_no_figure_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from deepcovidxr.reports import plots

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = np.clip(0.5 * labels + 0.5 * rng.random(60), 0, 1)
    written = plots.evaluation_plots(tmp_path / "eval", labels, scores, 0.5, "Test")
    assert [p.name for p in written] == [
        "ROC_Curve.png",
        "PrecisionRecall_Curve.png",
        "Calibration.png",
        "ConfusionMatrix.png",
    ]
    history = {"loss": [0.9, 0.7], "val_loss": [1.0, 0.8], "auc": [0.5, 0.6], "val_auc": [0.5, 0.55]}
    curves = plots.plot_training_curves(tmp_path / "curves.png", {"initial": history, "final": history}, "m")
    for path in (*written, curves):
        width, height = _png_size(path)
        assert width >= 400 and height >= 300, path
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        p.name for p in (*written, curves)
    )  # no temporaries left behind
    assert plt.get_fignums() == []  # nothing kept alive in pyplot's registry


def test_plots_refuse_a_one_class_roc(tmp_path: Path) -> None:
    from deepcovidxr.reports import plots

    with pytest.raises(ValueError, match="both classes"):
        plots.plot_roc(np.zeros(5), np.linspace(0, 1, 5), tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()
