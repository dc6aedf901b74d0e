"""Accuracy of the reduced-precision inference engines on members TRAINED on real chest X-rays
(issue 12: the best reduced-precision engine >= 1.5x Keras fp32, with max |score difference|
<= 0.02 and |delta AUC| <= 0.005 against Keras fp32).

Steps, each skipped on a rerun when its output already exists (``--work`` keeps them):
1. ``build_dataset.py`` on ``--data`` (labels from its ``manifest.csv``: ``class`` Positive/Negative,
   ``patient_id``; split by patient) at ``--sizes 224`` -> ``<work>/tree``;
2. ``train.py`` for each ``--members`` entry (BACKBONE:VIEW:EPOCHS) from random weights
   (``-w none``: ImageNet weights cannot be downloaded here), Adam -> ``<work>/members``;
3. an ensemble weights JSON over exactly those members (``--ensemble equal``: equal weights written
   by ``deepcovidxr.scoring.weights_file.save_weights``; ``fitted``: ``ensemble.py`` on the tree's Validation);
4. ``evaluate.py`` on the tree's Test split for each ``--cases`` entry, each in a fresh process; the
   first run fills the export cache and is not timed, the second is (process start to exit); int8
   is calibrated on the tree's Validation split (``--calibration <tree>``), never on Test.

Prints the training time and best validation AUC per member, the spread of the Keras fp32 scores
(members and ensemble), and one table per case: images, wall s, images/s, ratio to Keras fp32,
max |ensemble score - Keras fp32|, max |member score - Keras fp32 member score|, AUC (scikit-learn
on predictions.csv, and metrics.json's), delta AUC and whether each accuracy target is met; then
the per-member differences.

Example (about 25 minutes of training on 2 cores, then ~10 minutes of evaluation):
    python benchmarks/bench_engine_accuracy.py --work /tmp/bench_engine_accuracy \\
        --members ResNet-50:uncrop:4 DenseNet-121:crop:4 Xception:uncrop:4 EfficientNet-B2:uncrop:3 \\
        --cases keras:fp32 onnxruntime:fp32 openvino:fp32 openvino:bf16 openvino:int8 onnxruntime:int8
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCORE_TARGET = 0.02
AUC_TARGET = 0.005
SPEED_TARGET = 1.5
DEFAULT_MEMBERS = ["ResNet-50:uncrop:4", "DenseNet-121:crop:4", "Xception:uncrop:4", "EfficientNet-B2:uncrop:3"]
DEFAULT_CASES = ["keras:fp32", "onnxruntime:fp32", "openvino:fp32", "openvino:bf16", "openvino:int8"]


def _run(command: list[str], log: Path) -> float:
    """Run one stage in a fresh process, output to ``log``; wall seconds from start to exit."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}; end of {log}:\n{tail}")
    return wall


def _script(name: str) -> list[str]:
    return [sys.executable, str(REPO / name)]


# ---- 1. dataset tree ------------------------------------------------------------------------


def build_tree(data: Path, work: Path, sizes: list[int], seed: int) -> Path:
    tree = work / "tree"
    if (tree / "split_manifest.csv").is_file():
        print(f"dataset tree: reusing {tree}")
        return tree
    labels = work / "labels.csv"
    with (
        (data / "manifest.csv").open(newline="", encoding="utf-8") as source,
        labels.open("w", newline="", encoding="utf-8") as out,
    ):
        table = csv.writer(out)
        table.writerow(["file", "label", "patient_id"])
        for row in csv.DictReader(source):
            table.writerow([row["file"], row["class"], row["patient_id"]])
    command = [*_script("build_dataset.py"), "--images", str(data), "--labels", str(labels), "-o", str(tree)]
    wall = _run([*command, "--sizes", *map(str, sizes), "--seed", str(seed)], work / "build_dataset.log")
    print(f"dataset tree: built {tree} in {wall:.0f} s")
    return tree


def split_counts(tree: Path, size: int) -> dict[str, dict[str, int]]:
    view = tree / str(size) / "crop"
    return {
        split.name: {c.name: sum(1 for f in c.iterdir() if f.is_file()) for c in sorted(split.iterdir())}
        for split in sorted(view.iterdir())
        if split.is_dir()
    }


# ---- 2. members -----------------------------------------------------------------------------


def parse_member(text: str, size: int):
    from deepcovidxr.contract.layout import CropMode, Member

    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise SystemExit(f"--members entries are BACKBONE:VIEW:EPOCHS (e.g. ResNet-50:uncrop:4), got {text!r}")
    from deepcovidxr.contract import backbones

    return Member(backbones.get(parts[0]).name, size, CropMode(parts[1])), int(parts[2])


def train_members(specs, tree: Path, work: Path, args) -> tuple[Path, dict[str, dict]]:
    folder = work / "members"
    folder.mkdir(parents=True, exist_ok=True)
    times_file = work / "training_times.json"
    times = json.loads(times_file.read_text(encoding="utf-8")) if times_file.is_file() else {}
    for member, epochs in specs:
        if (folder / member.legacy_filename).is_file():
            print(f"{member.short_name}: reusing {folder / member.legacy_filename}")
            continue
        command = [
            *_script("train.py"),
            *("-m", member.backbone, "-s", str(member.size)),
            *("-p", str(tree / str(member.size) / member.crop.value), "-o", str(folder)),
            *("-w", "none", "--optimizer", "adam", "--epochs", str(epochs)),
            *("--batch-size", str(args.train_batch_size), "--precision", args.train_precision),
            *("--seed", str(args.seed)),
        ]
        wall = _run(command, work / f"train_{member.short_name}.log")
        times[member.short_name] = {"seconds": wall, "epochs": epochs, "precision": args.train_precision}
        times_file.write_text(json.dumps(times, indent=1), encoding="utf-8")
        print(f"{member.short_name}: trained {epochs} epochs in {wall:.0f} s")
    info = {}
    for member, _epochs in specs:
        stem = Path(member.legacy_filename).stem
        with (folder / f"{stem}_log.csv").open(newline="", encoding="utf-8") as handle:
            log = list(csv.DictReader(handle))
        info[member.short_name] = {
            "backbone": member.backbone,
            "view": member.crop.value,
            "epochs": len(log),
            "val_auc": [float(r["val_auc"]) for r in log],
            "seconds": times.get(member.short_name, {}).get("seconds", float("nan")),
        }
    return folder, info


# ---- 3. ensemble weights --------------------------------------------------------------------


def write_weights(specs, members: Path, tree: Path, work: Path, how: str, seed: int) -> Path:
    from deepcovidxr.scoring import weights_file

    names = [member.short_name for member, _ in specs]
    folder = work / f"ensemble_{how}"
    path = folder / weights_file.WEIGHTS_JSON
    if path.is_file() and set(weights_file.load_weights(path)) == set(names):
        print(f"ensemble weights: reusing {path}")
        return path
    if how == "equal":
        folder.mkdir(parents=True, exist_ok=True)
        weights_file.save_weights({name: 1.0 / len(names) for name in names}, folder)
    else:
        command = [*_script("ensemble.py"), "-w", str(members), "-d", str(tree), "-o", str(folder)]
        command += ["--members", *names, "--engine", "keras", "--precision", "fp32", "--seed", str(seed)]
        _run(command, work / "ensemble.log")
        path = folder / "Ensemble_Results" / weights_file.WEIGHTS_JSON
    print(f"ensemble weights ({how}): {path}: {json.loads(path.read_text(encoding='utf-8'))['weights']}")
    return path


# ---- 4. evaluation per engine/precision ------------------------------------------------------


def evaluate(members: Path, tree: Path, weights: Path, out: Path, engine: str, precision: str, args) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *_script("evaluate.py"),
        *("-w", str(members), "-i", str(tree), "-o", str(out), "-e", str(weights)),
        *("--engine", engine, "--precision", precision, "--batch-size", str(args.batch_size)),
        *("--seed", str(args.seed)),
    ]
    if precision == "int8":
        command += ["--calibration", str(tree)]  # evaluate.py calibrates on its Validation split
    return _run(command, out.parent / f"{out.name}.log")


def read_results(out: Path, names: list[str]) -> dict:
    from sklearn.metrics import roc_auc_score

    with (out / "Results" / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["Filenames"])
    metrics = json.loads((out / "Results" / "metrics.json").read_text(encoding="utf-8"))
    labels = np.array([int(r["Actual"]) for r in rows])
    scores = np.array([float(r["Scores"]) for r in rows])
    return {
        "names": [r["Filenames"] for r in rows],
        "labels": labels,
        "scores": scores,
        "members": {n: np.array([float(r[n]) for r in rows]) for n in names},
        "auc": float(roc_auc_score(labels, scores)),
        "auc_json": float(metrics["auc"]),
        "member_auc": {n: float(roc_auc_score(labels, [float(r[n]) for r in rows])) for n in names},
    }


def spread(values: np.ndarray) -> str:
    q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    return " ".join(f"{v:.3f}" for v in q)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_engine_accuracy"), help="work folder (reused)")
    p.add_argument("--size", type=int, default=224, help="member and tree size (default: 224)")
    p.add_argument("--members", nargs="+", default=DEFAULT_MEMBERS, help="BACKBONE:VIEW:EPOCHS to train")
    p.add_argument("--train-batch-size", type=int, default=16)
    p.add_argument("--train-precision", choices=["float32", "mixed"], default="float32")
    p.add_argument("--ensemble", choices=["equal", "fitted"], default="equal", help="how members are weighted")
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="ENGINE:PRECISION (keras:fp32 first)")
    p.add_argument("--batch-size", type=int, default=16, help="evaluate.py batch size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        print(f"no manifest.csv in {args.data}", file=sys.stderr)
        return 2
    cases = [tuple(case.split(":")) for case in args.cases]
    if ("keras", "fp32") not in cases:
        cases.insert(0, ("keras", "fp32"))
    cases.sort(key=lambda case: case != ("keras", "fp32"))
    args.work.mkdir(parents=True, exist_ok=True)
    specs = [parse_member(text, args.size) for text in args.members]

    tree = build_tree(args.data, args.work, [args.size], args.seed)
    print(f"splits ({args.size}/crop): {split_counts(tree, args.size)}")
    members, info = train_members(specs, tree, args.work, args)
    weights = write_weights(specs, members, tree, args.work, args.ensemble, args.seed)
    names = [member.short_name for member, _ in specs]

    results, walls = {}, {}
    for engine, precision in cases:
        tag = f"{engine}_{precision}"
        warm = evaluate(members, tree, weights, args.work / "eval" / f"warm_{tag}", engine, precision, args)
        walls[(engine, precision)] = wall = evaluate(
            members, tree, weights, args.work / "eval" / tag, engine, precision, args
        )
        results[(engine, precision)] = read_results(args.work / "eval" / tag, names)
        print(f"{engine}/{precision}: warm-up run {warm:.1f} s, timed run {wall:.1f} s; load {os.getloadavg()}")

    reference = results[("keras", "fp32")]
    total_train = sum(i["seconds"] for i in info.values())
    print(f"\nmembers (trained from random weights, Adam, {args.train_precision}; {total_train:.0f} s in all):")
    print(f"{'member':>22}{'epochs':>7}{'train s':>9}{'best val AUC':>13}{'Test AUC':>9}  val AUC per epoch")
    for name in names:
        i = info[name]
        print(
            f"{name:>22}{i['epochs']:>7}{i['seconds']:>9.0f}{max(i['val_auc']):>13.3f}"
            f"{reference['member_auc'][name]:>9.3f}  {' '.join(f'{v:.3f}' for v in i['val_auc'])}"
        )
    print("\nKeras fp32 scores on Test (min, q1, median, q3, max):")
    print(f"{'ensemble':>22}  {spread(reference['scores'])}")
    for name in names:
        print(f"{name:>22}  {spread(reference['members'][name])}")

    count = len(reference["names"])
    print(
        f"\n{'engine/precision':>18}{'images':>7}{'wall s':>8}{'img/s':>7}{'x keras':>8}{'max|ens diff|':>14}"
        f"{'max|member diff|':>17}{'AUC':>7}{'AUC json':>9}{'dAUC':>8}{'<=0.02':>7}{'<=0.005':>8}"
    )
    best = None
    for case, result in results.items():
        if result["names"] != reference["names"]:
            raise RuntimeError(f"{case}: scored other images than keras/fp32")
        ratio = walls[("keras", "fp32")] / walls[case]
        diff = float(np.max(np.abs(result["scores"] - reference["scores"])))
        member_diff = max(float(np.max(np.abs(result["members"][n] - reference["members"][n]))) for n in names)
        dauc = result["auc"] - reference["auc"]
        meets = diff <= SCORE_TARGET, abs(dauc) <= AUC_TARGET
        print(
            f"{'/'.join(case):>18}{count:>7}{walls[case]:>8.1f}{count / walls[case]:>7.2f}{ratio:>8.2f}"
            f"{diff:>14.2e}{member_diff:>17.2e}{result['auc']:>7.4f}{result['auc_json']:>9.4f}{dauc:>+8.4f}"
            f"{'yes' if meets[0] else 'NO':>7}{'yes' if meets[1] else 'NO':>8}"
        )
        if case[1] != "fp32" and all(meets) and (best is None or ratio > best[1]):
            best = (case, ratio)

    print("\nmax |member score - keras fp32 member score| per member (Test AUC change in brackets):")
    print(f"{'engine/precision':>18}" + "".join(f"{n:>28}" for n in names))
    for case, result in results.items():
        cells = []
        for n in names:
            d = float(np.max(np.abs(result["members"][n] - reference["members"][n])))
            cells.append(f"{d:.2e} ({result['member_auc'][n] - reference['member_auc'][n]:+.4f})")
        print(f"{'/'.join(case):>18}" + "".join(f"{c:>28}" for c in cells))

    if best is None:
        print("\nno reduced-precision case meets both accuracy targets")
    else:
        verdict = "met" if best[1] >= SPEED_TARGET else "NOT met"
        print(
            f"\nbest reduced precision meeting both accuracy targets: {'/'.join(best[0])} at {best[1]:.2f}x keras fp32 "
            f"(whole evaluate.py process, {count} images, {len(names)} members; >= {SPEED_TARGET}x: {verdict})"
        )
    print(f"{os.cpu_count()} cores; load average at the end {os.getloadavg()}; work folder {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
