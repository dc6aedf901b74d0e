"""predict.py with all 24 members at production sizes (random weights) on real chest X-rays, on
each engine and precision, against Keras fp32 in the same run.

Reports, per engine/precision (``--cases``, e.g. keras:fp32 openvino:bf16):
- the compute floor: for each member, its standalone forward time per image at the same batch
  size on already-prepared inputs through that engine's runner, summed over the 24 members;
- end-to-end images/s of predict.py (decode, crop, views, member opening, forward passes, CSV)
  in a fresh process at each folder size, its ratio to the floor (target >= 0.8) and to Keras fp32;
- peak resident memory (target: flat in the folder size, <= 6 GB);
- the largest |score - Keras fp32| over the images (random weights put scores near 0.5, so this
  and the AUC change say little about trained members: see bench_engines.py and the README);
- the time to first result: one image, 24 members, warm export cache (the first run fills it and
  is not counted), process start to predictions.csv (target <= 30 s).

Example (reusing members and their warm cache):
    python benchmarks/bench_predict.py --members /tmp/members --images 32 128 --cases keras:fp32 openvino:bf16
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _make_members(folder: Path) -> None:
    import keras

    from deepcovidxr.contract.layout import ensemble_members
    from deepcovidxr.networks.members import build_member, save_member

    folder.mkdir(parents=True, exist_ok=True)
    for member in ensemble_members():
        if not (folder / member.legacy_filename).is_file():
            save_member(build_member(member.backbone, member.size), folder / member.legacy_filename, member)
            keras.backend.clear_session()


def _floor(folder: Path, engine: str, precision: str, count: int, batch: int) -> float:
    """Seconds per image summed over members: forward passes only, inputs ready in memory."""
    from deepcovidxr.contract.layout import ensemble_members
    from deepcovidxr.inference.streaming import member_scores
    from deepcovidxr.runtime import load

    rng = np.random.default_rng(0)
    total = 0.0
    for member in ensemble_members():
        runner = load.open_member(member, folder / member.legacy_filename, engine, precision)
        images = rng.integers(0, 255, (count, member.size, member.size), dtype=np.uint8)
        member_scores(runner, images[:batch], batch)  # warm-up (trace, first-call allocations)
        start = time.perf_counter()
        member_scores(runner, images, batch)
        total += (time.perf_counter() - start) / count
        del runner
    return total


def _predict(weights: Path, images: Path, output: Path, batch: int, engine: str, precision: str) -> tuple[float, dict]:
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, str(REPO / "predict.py"), "-w", str(weights), "-i", str(images), "-o", str(output)),
            *("--batch-size", str(batch), "--engine", engine, "--precision", precision),
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-3000:])
    return wall, json.loads((output / "predictions_info.json").read_text(encoding="utf-8"))


def _scores(output: Path) -> dict[str, float]:
    with (output / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        return {row["Filenames"]: float(row["Scores"]) for row in csv.DictReader(handle) if row["Scores"]}


def _auc(scores: dict[str, float]) -> float:
    from sklearn.metrics import roc_auc_score

    names = sorted(scores)
    labels = [int("Positive" in name) for name in names]
    return float(roc_auc_score(labels, [scores[n] for n in names])) if len(set(labels)) == 2 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr")
    p.add_argument("--members", type=Path, default=None, help="member folder to reuse (default: made in a temp dir)")
    p.add_argument("--images", type=int, nargs="+", default=[32, 128], help="folder sizes to predict")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cases", nargs="+", default=["keras:fp32", "onnxruntime:fp32", "openvino:fp32", "openvino:bf16"])
    p.add_argument("--floor-images", type=int, default=32)
    p.add_argument("--no-floor", action="store_true", help="skip the compute floor (end-to-end only)")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cases = [tuple(case.split(":")) for case in args.cases]
    sources = sorted(f for f in args.data.rglob("*") if f.suffix.lower() in {".png", ".jpg", ".jpeg"})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.members or tmp / "weights"
        t0 = time.perf_counter()
        _make_members(weights)
        print(f"24 random-weight members ready in {time.perf_counter() - t0:.0f} s ({weights}); load {os.getloadavg()}")
        folders = {}
        for count in [1, *args.images]:
            folder = folders[count] = tmp / f"in{count}"
            for index in range(count):  # Positive/Negative kept in the name for the AUC
                source = sources[(index * 7) % len(sources)]
                (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, folder / source.parent.name / f"{index:04d}_{source.name}")
        results: dict = {}
        for engine, precision in cases:
            _predict(weights, folders[1], tmp / "warm", args.batch_size, engine, precision)  # fills the caches
            first, _ = _predict(weights, folders[1], tmp / "first", args.batch_size, engine, precision)
            floor = None if args.no_floor else _floor(weights, engine, precision, args.floor_images, args.batch_size)
            rows = {}
            for count in args.images:
                out = tmp / f"out_{engine}_{precision}_{count}"
                wall, info = _predict(weights, folders[count], out, args.batch_size, engine, precision)
                rows[count] = {"wall": wall, "rss_gb": info["peak_rss_mb"] / 1024, "scores": _scores(out)}
            results[(engine, precision)] = {"first": first, "floor": floor, "rows": rows}
            rate = f"{1 / floor:.2f}" if floor else "-"
            print(f"{engine}/{precision}: first result {first:.1f} s; floor {rate} img/s; load {os.getloadavg()}")
        reference = results.get(("keras", "fp32"))
        print(
            f"\n{'engine/precision':>18}{'images':>7}{'wall s':>8}{'img/s':>7}{'x keras':>8}{'of floor':>9}"
            f"{'RSS GB':>7}{'max|diff|':>10}{'dAUC':>7}{'first s':>8}"
        )
        for (engine, precision), result in results.items():
            for count, row in result["rows"].items():
                rate = count / row["wall"]
                ratio = diff = dauc = float("nan")
                if reference is not None:
                    ref = reference["rows"][count]
                    ratio = rate / (count / ref["wall"])
                    diff = max(abs(row["scores"][k] - ref["scores"][k]) for k in ref["scores"])
                    dauc = _auc(row["scores"]) - _auc(ref["scores"])
                of_floor = rate * result["floor"] if result["floor"] else float("nan")
                print(
                    f"{engine + '/' + precision:>18}{count:>7}{row['wall']:>8.1f}{rate:>7.2f}{ratio:>8.2f}"
                    f"{of_floor:>9.2f}{row['rss_gb']:>7.2f}{diff:>10.1e}{dauc:>7.3f}{result['first']:>8.1f}"
                )
    print(f"\n{os.cpu_count()} cores; load average at the end {os.getloadavg()}")
    print("targets: best reduced precision >= 1.5x keras fp32; >= 0.8 of the floor; RSS flat <= 6 GB; first <= 30 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
