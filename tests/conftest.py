"""Shared fixtures and the tiers: ``-m quick`` (the edit loop, under 3 minutes on two workers
here), the default suite (everything not ``slow``), ``-m integration`` (tests/integration/: the
wheel, the browser, multi-worker, phantom learning, the demo page, the docs) and ``-m slow``
(long runs a benchmark covers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.helpers import UNET_WEIGHTS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def lung_cropper():
    """One U-Net for the whole session: the weights shipped in unet/."""
    from deepcovidxr.lungs.cropper import LungCropper

    assert UNET_WEIGHTS.is_file(), f"shipped U-Net weights missing: {UNET_WEIGHTS}"
    return LungCropper(UNET_WEIGHTS, batch_size=8)


TESTS = Path(__file__).resolve().parent

# The quick tier: modules of seconds each that import no training loop (measured on the full
# suite's --durations; together about two minutes of test time). Every entry must exist (tested).
QUICK = frozenset(
    {
        "test_architecture.py",
        "config/test_schema.py",
        "contract/test_classes.py",
        "contract/test_file_report.py",
        "contract/test_layout.py",
        "contract/test_output_names.py",
        "imaging/test_dicom.py",
        "imaging/test_masking.py",
        "imaging/test_perceptual_hash.py",
        "imaging/test_reader.py",
        "imaging/test_reader_bit_depths.py",
        "explain/test_gradcam.py",
        "inference/test_reliability.py",
        "inference/test_row_journal.py",
        "training/test_pretraining.py",
        "integration/test_docs.py",
        "integration/test_text_encoding.py",
        "lungs/test_augment.py",
        "lungs/test_segment.py",
        "data/test_nih.py",
        "audit/test_findings.py",
        "audit/test_inputs.py",
        "audit/test_masked_scoring.py",
        "reports/test_model_card_audit.py",
        "reports/test_page.py",
        "reports/test_plots.py",
        "runtime/test_precision.py",
        "scoring/test_calibration.py",
        "scoring/test_combination.py",
        "scoring/test_metrics.py",
        "scoring/test_multiclass_calibration.py",
        "scoring/test_site.py",
        "scoring/test_task.py",
        "scoring/test_uncertainty.py",
        "stages/test_resize.py",
        "synthetic/test_phantoms.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tier markers from where a test lives (``QUICK``, tests/integration/); then the longest
    module first: under xdist (``--dist loadfile --no-loadscope-reorder``, pyproject.toml; xdist
    would otherwise put the modules with most tests first and this 2-test module last) one worker
    trains test_phantom_learning's member while the other takes the rest."""
    for item in items:
        relative = Path(item.path).resolve().relative_to(TESTS).as_posix()
        if relative in QUICK:
            item.add_marker(pytest.mark.quick)
        if relative.startswith("integration/"):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: not item.module.__name__.endswith("test_phantom_learning"))
