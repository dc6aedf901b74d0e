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
  is not counted), process start to predictions.csv (target <= 30 s);
- ``--backend ray`` (``--ray-workers 1 2``: one and two scoring actors; skipped when Ray is not installed): the same
  folders through predict.py's Ray Data dataflow, each in a fresh local Ray, against the local
  backend in the same run: images/s, the ratio and the overhead in seconds. On one machine the
  workers share its cores with the crop, so this figure is the Ray backend's overhead (start-up:
  the cluster, each actor's imports and members), not its scaling (docs/distributed.md).

``--subset`` runs a few members instead of the 24 (predict.py ``--members``, weights renormalised).

Example (reusing members and their warm cache):
    python benchmarks/bench_predict.py --members /tmp/members --images 32 128 --cases keras:fp32 openvino:bf16
    python benchmarks/bench_predict.py --subset res_224_crop dense_331_uncrop --images 32 --cases keras:fp32 \
        --ray-workers 1 2 --no-floor
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


def _chosen(subset: list[str]) -> list:
    from deepcovidxr.contract.layout import Member, ensemble_members

    return [Member.parse(name) for name in subset] if subset else list(ensemble_members())


def _make_members(folder: Path, subset: list[str]) -> None:
    import keras

    from deepcovidxr.networks.members import build_member, save_member

    folder.mkdir(parents=True, exist_ok=True)
    for member in _chosen(subset):
        if not (folder / member.legacy_filename).is_file():
            save_member(build_member(member.backbone, member.size), folder / member.legacy_filename, member)
            keras.backend.clear_session()


def _floor(folder: Path, engine: str, precision: str, count: int, batch: int, subset: list[str]) -> float:
    """Seconds per image summed over members: forward passes only, inputs ready in memory."""
    from deepcovidxr.inference.streaming import member_scores
    from deepcovidxr.runtime import load

    rng = np.random.default_rng(0)
    total = 0.0
    for member in _chosen(subset):
        runner = load.open_member(member, folder / member.legacy_filename, engine, precision)
        images = rng.integers(0, 255, (count, member.size, member.size), dtype=np.uint8)
        member_scores(runner, images[:batch], batch)  # warm-up (trace, first-call allocations)
        start = time.perf_counter()
        member_scores(runner, images, batch)
        total += (time.perf_counter() - start) / count
        del runner
    return total


def _predict(
    weights: Path, images: Path, output: Path, batch: int, engine: str, precision: str, extra: tuple = ()
) -> tuple[float, dict]:
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, str(REPO / "predict.py"), "-w", str(weights), "-i", str(images), "-o", str(output)),
            *("--batch-size", str(batch), "--engine", engine, "--precision", precision, *extra),
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


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _folders(tmp: Path, sources: list[Path], counts: list[int]) -> dict[int, Path]:
    folders = {}
    for count in [1, *counts]:
        folder = folders[count] = tmp / f"in{count}"
        for index in range(count):  # Positive/Negative kept in the name for the AUC
            source = sources[(index * 7) % len(sources)]
            (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, folder / source.parent.name / f"{index:04d}_{source.name}")
    return folders


def _run_case(args, weights: Path, tmp: Path, folders: dict, engine: str, precision: str, extra: tuple) -> dict:
    """One engine/precision: first result, floor, each folder locally and with each --ray-workers."""
    batch = args.batch_size
    _predict(weights, folders[1], tmp / "warm", batch, engine, precision, extra)  # fills the caches
    first, _ = _predict(weights, folders[1], tmp / "first", batch, engine, precision, extra)
    floor = None if args.no_floor else _floor(weights, engine, precision, args.floor_images, batch, args.subset)
    rows, ray_rows = {}, {}
    for count in args.images:
        out = tmp / f"out_{engine}_{precision}_{count}"
        wall, info = _predict(weights, folders[count], out, batch, engine, precision, extra)
        rows[count] = {"wall": wall, "rss_gb": info["peak_rss_mb"] / 1024, "scores": _scores(out)}
        for workers in args.ray_workers:
            out = tmp / f"out_{engine}_{precision}_{count}_ray{workers}"
            ray_flags = (*extra, "--backend", "ray", "--ray-workers", str(workers))
            wall, _ = _predict(weights, folders[count], out, batch, engine, precision, ray_flags)
            ray_rows[(count, workers)] = {"wall": wall, "scores": _scores(out)}
    rate = f"{1 / floor:.2f}" if floor else "-"
    print(f"{engine}/{precision}: first result {first:.1f} s; floor {rate} img/s; load {os.getloadavg()}")
    return {"first": first, "floor": floor, "rows": rows, "ray": ray_rows}


def _print_engines(results: dict) -> None:
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


def _print_ray(results: dict) -> None:
    """The Ray backend against the local one, same engine, folder and run: throughput, the ratio,
    the overhead (extra wall seconds) and the largest score difference."""
    if not any(result["ray"] for result in results.values()):
        return
    print(
        f"\n{'engine/precision':>18}{'images':>7}{'backend':>10}{'wall s':>8}{'img/s':>7}{'x local':>8}"
        f"{'overhead s':>11}{'max|diff|':>10}"
    )
    for (engine, precision), result in results.items():
        for count, local in result["rows"].items():
            name = f"{engine}/{precision}"
            print(f"{name:>18}{count:>7}{'local':>10}{local['wall']:>8.1f}{count / local['wall']:>7.2f}")
            for (images, workers), row in sorted(result["ray"].items()):
                if images != count:
                    continue
                diff = max(abs(row["scores"][k] - local["scores"][k]) for k in local["scores"])
                print(
                    f"{name:>18}{count:>7}{f'ray x{workers}':>10}{row['wall']:>8.1f}{count / row['wall']:>7.2f}"
                    f"{local['wall'] / row['wall']:>8.2f}{row['wall'] - local['wall']:>11.1f}{diff:>10.1e}"
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr")
    p.add_argument("--members", type=Path, default=None, help="member folder to reuse (default: made in a temp dir)")
    p.add_argument("--subset", nargs="+", default=[], help="these members only (default: the 24)")
    p.add_argument("--images", type=int, nargs="+", default=[32, 128], help="folder sizes to predict")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cases", nargs="+", default=["keras:fp32", "onnxruntime:fp32", "openvino:fp32", "openvino:bf16"])
    p.add_argument("--floor-images", type=int, default=32)
    p.add_argument("--no-floor", action="store_true", help="skip the compute floor (end-to-end only)")
    p.add_argument(
        "--ray-workers", type=int, nargs="*", default=[], help="--backend ray runs with these actor counts, e.g. 1 2"
    )
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    if args.ray_workers and not _ray_installed():
        print("ray is not installed (pip install deepcovidxr[ray]): the Ray backend is not measured", file=sys.stderr)
        args.ray_workers = []
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    extra = ("--members", *args.subset) if args.subset else ()
    sources = sorted(f for f in args.data.rglob("*") if f.suffix.lower() in {".png", ".jpg", ".jpeg"})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.members or tmp / "weights"
        t0 = time.perf_counter()
        _make_members(weights, args.subset)
        ready = f"{len(_chosen(args.subset))} random-weight members ready in {time.perf_counter() - t0:.0f} s"
        print(f"{ready} ({weights}); load {os.getloadavg()}")
        folders = _folders(tmp, sources, args.images)
        results = {
            (engine, precision): _run_case(args, weights, tmp, folders, engine, precision, extra)
            for engine, precision in (tuple(case.split(":")) for case in args.cases)
        }
        _print_engines(results)
        _print_ray(results)
    print(f"\n{os.cpu_count()} cores; load average at the end {os.getloadavg()}")
    print("targets: best reduced precision >= 1.5x keras fp32; >= 0.8 of the floor; RSS flat <= 6 GB; first <= 30 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
