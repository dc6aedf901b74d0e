"""An installed wheel carries the shipped weights (defect 8: the default U-Net and ensemble weights
were found through the repository root, which an installed package does not have)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import REPO

# What a wheel is built from: the package and the project metadata (symlinks kept as symlinks, so a
# file reached through a link out of the package is missing here, as it would be in the wheel).
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "deepcovidxr")

PROBE = """
import json, sys
from pathlib import Path
import deepcovidxr
from deepcovidxr.scoring import combination
from deepcovidxr.scoring import weights_file
from deepcovidxr.inference import ensemble as inference
from deepcovidxr.lungs import cropper
from deepcovidxr.lungs.unet import load_unet

unet_path = cropper.default_unet_path()
model, meta = load_unet(unet_path)
weights = weights_file.load_weights(inference.DEFAULT_ENSEMBLE_WEIGHTS)
json_weights = weights_file.load_weights(inference.DEFAULT_ENSEMBLE_WEIGHTS.with_name("ensemble_weights.json"))
print(json.dumps({
    "package": deepcovidxr.__file__,
    "modules": [m.__file__ for m in (combination, inference, cropper)],
    "unet": str(unet_path.resolve()),
    "unet_outputs": list(model.output_shape),
    "ensemble": str(Path(inference.DEFAULT_ENSEMBLE_WEIGHTS).resolve()),
    "weights": weights,
    "json_weights": json_weights,
    "rule": weights_file.load_rule(inference.DEFAULT_ENSEMBLE_WEIGHTS),
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built into a wheel and unpacked into a bare site folder, as pip installs it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(root / "dist")],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list((root / "dist").glob("deepcovidxr-*.whl"))
    assert len(wheels) == 1, wheels
    site = root / "site"
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheels[0])],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return site


def test_installed_wheel_finds_and_loads_the_shipped_weights(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # a working directory with no checkout above it
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPCOVIDXR_")}
    # PYTHONPATH comes before the editable install's finder, so the wheel's copy is imported.
    env.update(PYTHONPATH=str(installed), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    site = installed.resolve()
    for path in (found["package"], *found["modules"], found["unet"], found["ensemble"]):
        assert Path(path).resolve().is_relative_to(site), f"{path} is not from the installed wheel in {site}"
    assert found["unet_outputs"][1:] == [256, 256, 1]
    from deepcovidxr.scoring import combination

    assert found["weights"] == combination.published_weights() == found["json_weights"]
    assert found["rule"] == "weighted"


def test_installed_entry_point_crops_with_the_shipped_unet(installed: Path, tmp_path: Path) -> None:
    """The one console command the wheel installs (``deepcovidxr STAGE``) runs the crop stage by
    its script's stem outside the checkout; the per-stage commands of earlier versions are gone."""
    from tests.support.helpers import shared

    command = installed / "bin" / "deepcovidxr"
    assert command.is_file(), sorted(p.name for p in (installed / "bin").iterdir())
    assert not list((installed / "bin").glob("deepcovidxr-*"))
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(shared("cxr", "Positive", "hannover_006f3a8a.png"), images / "a.png")
    shutil.copy(shared("dicom", "c64d5667-a776-4f95-9e21-bfabafb07740.dcm"), images / "1.2.840.113619.2.55")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPCOVIDXR_")}
    env.update(PYTHONPATH=str(installed), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [str(command), "crop_img", "-f", str(images), "-o", str(tmp_path / "out"), "--no-qc"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("crop_report.csv")
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "1.2.840.113619.2.55.png").is_file()
    record = json.loads((tmp_path / "out" / "run_config.json").read_text(encoding="utf-8"))
    assert record["crop_img"]["input"] == str(images) and record["_run"]["input"]["files"] == 2
    assert f"lung U-Net: {installed}" in done.stderr  # the shipped U-Net, from the installed package
