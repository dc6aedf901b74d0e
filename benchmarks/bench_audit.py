"""audit.py on real films: a site-confounded tree against a site-balanced control from the same folder.

Two trees are built from ``../shared/data/cxr`` (read in place; see ``../shared/data/README.md``),
each through the pipeline's own CLI, as a user would run it (one subprocess per stage):

- ``confounded``: every film of the folder, label from the manifest's ``class`` column, site from
  its ``dataset`` column (Hannover, NIH, ieee8023). Nearly every positive comes from Hannover and
  nearly every negative from NIH: the site alone tells the label.
- ``control``: only the NIH films of ``cxr/Negative``, Positive = the ChestX-ray14 finding lists
  Pneumonia (68), Negative = ``No Finding`` (118); one site, NIH.

For each: a labels table (file, label, patient_id, site), ``build_dataset.py`` at 224 px (the site
column travels into split_manifest.csv), ``train.py`` (one ResNet-50 uncrop member from random
weights, Adam, seeded; from random weights train.py skips the frozen-backbone phase, so
``--epochs`` (4) is the whole run) and ``audit.py`` on the Test split (the default),
with the sites read from split_manifest.csv. It prints, for both trees, the figures of each
``audit.json`` (the three AUCs with their 95% CIs, the Grad-CAM share inside the lungs against the
lungs' share, Cramér's V, site purity, the site probe, leakage, the flagged checks), the three AUCs
recomputed from ``scores.csv`` with scikit-learn beside them (they must agree), the wall time of
every step and the audit's peak resident memory (``/usr/bin/time -v``, else ``os.wait4``). The
summary goes to ``<workdir>/bench_audit.json``.

``audit.py`` runs without ``-e``: the members found get equal weights (here the one member).

Example (measured: 14 minutes on 2 CPU cores, 11 of them training; a rerun with the same --workdir
reuses the trees and members and only audits again, about 2 minutes):
    python benchmarks/bench_audit.py --workdir /tmp/bench_audit
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TIME = Path("/usr/bin/time")
SIZE = 224
BACKBONE = "ResNet-50"
MODES = ("as_is", "lungs_only", "lungs_removed")
SITE_NAMES = {"Hannover": "Hannover", "NIH": "NIH", "ieee8023": "ieee8023"}


def _short_site(dataset: str) -> str:
    """The manifest's dataset column shortened: its first word (Hannover, NIH, ieee8023)."""
    first = dataset.strip().split()[0] if dataset.strip() else "unknown"
    return SITE_NAMES.get(first, first)


def _tables(data: Path) -> dict[str, list[dict[str, str]]]:
    """tree -> labels table rows (file, label, patient_id, site) from cxr/manifest.csv."""
    with (data / "cxr" / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    confounded = [
        {"file": r["file"], "label": r["class"], "patient_id": r["patient_id"], "site": _short_site(r["dataset"])}
        for r in rows
    ]
    control = []
    for r in rows:
        if r["class"] != "Negative" or _short_site(r["dataset"]) != "NIH":
            continue
        findings = r["finding"].split("|")
        if "Pneumonia" in findings:
            label = "Positive"
        elif r["finding"] == "No Finding":
            label = "Negative"
        else:
            continue
        control.append({"file": r["file"], "label": label, "patient_id": r["patient_id"], "site": "NIH"})
    return {"confounded": confounded, "control": control}


def _write_table(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "patient_id", "site"])
        writer.writeheader()
        writer.writerows(rows)


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def _run(command: list[str], log: Path, timed: bool = False) -> dict:
    """Run one stage as a user would; stdout+stderr to ``log``. -> {seconds, exit, peak_rss_mb}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak_kb = None
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        if timed and TIME.exists():
            usage = log.with_suffix(".time")
            done = subprocess.run(
                [str(TIME), "-v", "-o", str(usage), *command], cwd=REPO, stdout=handle, stderr=handle, env=_env()
            )
            code = done.returncode
            found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", usage.read_text(encoding="utf-8"))
            peak_kb = int(found.group(1)) if found else None
        elif timed:
            process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=handle, env=_env())
            _, status, rusage = os.wait4(process.pid, 0)
            code, peak_kb = os.waitstatus_to_exitcode(status), rusage.ru_maxrss
        else:
            code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=handle, env=_env()).returncode
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "exit": code, "peak_rss_mb": None if peak_kb is None else peak_kb / 1024}


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _split_counts(dataset: Path) -> dict[str, dict[str, int]]:
    """split -> label -> films written, from split_manifest.csv."""
    counts: dict[str, dict[str, int]] = {}
    with (dataset / "split_manifest.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("split") and row.get("name"):
                counts.setdefault(row["split"], {}).setdefault(row["label"], 0)
                counts[row["split"]][row["label"]] += 1
    return counts


def _recomputed(scores_csv: Path) -> dict[str, float]:
    """The three AUCs from scores.csv with scikit-learn (rows without an error)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(scores_csv, keep_default_na=True)
    table = table[table["error"].isna() | (table["error"].astype(str) == "")]
    return {mode: float(roc_auc_score(table["y"], table[mode])) for mode in MODES}


def _tree(name: str, rows: list[dict[str, str]], args, work: Path) -> dict:
    """Build, train and audit one tree; -> its summary."""
    root = work / name
    labels, dataset, members, audit = root / "labels.csv", root / "dataset", root / "members", root / "audit"
    logs = root / "logs"
    _write_table(labels, rows)
    result: dict = {"tree": name, "films": len(rows), "steps": {}}
    py = sys.executable
    recorded = root / "step_times.json"  # the build and training times, kept for a rerun that reuses them
    earlier = json.loads(recorded.read_text(encoding="utf-8")) if recorded.is_file() else {}

    if not (dataset / "split_manifest.csv").is_file():
        command = [py, "build_dataset.py", "--images", str(args.data / "cxr"), "--labels", str(labels)]
        command += ["-o", str(dataset), "--sizes", str(SIZE), "--seed", str(args.seed)]
        step = _run(command, logs / "build.log")
        result["steps"]["build"] = step
        if step["exit"] != 0:
            raise SystemExit(f"{name}: build_dataset.py failed (exit {step['exit']}):\n{_tail(logs / 'build.log')}")
    else:
        result["steps"]["build"] = {**earlier.get("build", {"seconds": None, "exit": 0}), "reused": True}
    result["split_counts"] = _split_counts(dataset)

    member_file = members / "ResNet50_224_up_uncrop.h5"
    if not member_file.is_file():
        command = [py, "train.py", "-m", BACKBONE, "-s", str(SIZE), "-p", str(dataset / str(SIZE) / "uncrop")]
        command += ["-o", str(members), "-w", "none", "--epochs", str(args.epochs), "--optimizer", "adam"]
        command += ["--batch-size", "32", "--seed", str(args.seed)]
        step = _run(command, logs / "train.log")
        result["steps"]["train"] = step
        if step["exit"] != 0:
            raise SystemExit(f"{name}: train.py failed (exit {step['exit']}):\n{_tail(logs / 'train.log')}")
    else:
        result["steps"]["train"] = {**earlier.get("train", {"seconds": None, "exit": 0}), "reused": True}
    recorded.write_text(json.dumps({k: result["steps"][k] for k in ("build", "train")}, indent=1), encoding="utf-8")
    sidecar = json.loads(member_file.with_name(f"{member_file.stem}_config.json").read_text(encoding="utf-8"))
    history = sidecar.get("history", {})
    result["val_auc"] = {phase: values.get("val_auc") for phase, values in history.items() if isinstance(values, dict)}

    shutil.rmtree(audit, ignore_errors=True)  # measured afresh: no journal of an earlier run resumed
    command = [py, "audit.py", "-w", str(members), "-i", str(dataset), "-o", str(audit), "--engine", "keras"]
    command += ["--seed", str(args.seed)]
    step = _run(command, logs / "audit.log", timed=True)
    result["audit_command"] = " ".join(command)
    if step["exit"] != 0:
        raise SystemExit(f"{name}: audit.py failed (exit {step['exit']}):\n{_tail(logs / 'audit.log')}")
    result["steps"]["audit"] = step

    report = json.loads((audit / "audit.json").read_text(encoding="utf-8"))
    sites = report.get("sites") or {}
    probe = sites.get("probe")
    result.update(
        {
            "split": report["split"],
            "test_images": report["images"],
            "errors": len(report.get("errors") or {}),
            "modes": report["modes"],
            "sklearn_auc": _recomputed(audit / "scores.csv"),
            "attention": report["attention"],
            "contingency": sites.get("contingency"),
            "cramers_v": sites.get("cramers_v"),
            "site_purity": sites.get("site_purity"),
            "per_site_auc": sites.get("per_site_auc"),
            "probe": probe,
            "near_duplicates": len(report["leakage"].get("near_duplicates") or []),
            "patients_in_two_splits": report["leakage"].get("patients_in_two_splits"),
            "findings": report["findings"],
            "flagged": [f["check"] for f in report["findings"] if f["flagged"]],
            "page": str(audit / "audit.html"),
        }
    )
    return result


def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _auc(entry: dict) -> str:
    ci = entry.get("auc_ci95")
    return _f(entry["auc"]) + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _print(results: list[dict]) -> None:
    names = [r["tree"] for r in results]
    width = 28

    def line(label: str, cells: list[str]) -> None:
        print(f"{label:<34}" + "".join(f"{c:<{width}}" for c in cells), flush=True)

    line("", names)
    line("films in the labels table", [str(r["films"]) for r in results])
    line(
        "Train/Validation/Test films",
        [
            "/".join(str(sum(r["split_counts"].get(s, {}).values())) for s in ("Train", "Validation", "Test"))
            for r in results
        ],
    )
    line(
        "Test films (Neg/Pos)",
        [
            f"{r['test_images']} ({r['split_counts'].get('Test', {}).get('Negative', 0)}/"
            f"{r['split_counts'].get('Test', {}).get('Positive', 0)})"
            for r in results
        ],
    )
    line("audited split", [r["split"] for r in results])
    line(
        "val AUC per epoch (last phase)",
        [" ".join(_f(a, 2) for a in list(r["val_auc"].values())[-1] or []) for r in results],
    )
    for mode in MODES:
        line(f"AUC {mode} (95% CI)", [_auc(r["modes"][mode]) for r in results])
        line(
            "  sklearn on scores.csv",
            [f"{r['sklearn_auc'][mode]:.4f} (json {r['modes'][mode]['auc']:.4f})" for r in results],
        )
    line("Grad-CAM share in lungs", [_f(r["attention"]["cam_in_lungs_mean"]) for r in results])
    line("lungs' share of the film", [_f(r["attention"]["lung_share_mean"]) for r in results])
    line("ratio (chance = 1)", [_f(r["attention"]["ratio"], 2) for r in results])
    line("films above chance", [_f(r["attention"]["above_chance_share"], 2) for r in results])
    line("Cramér's V (label, site)", [_f(r["cramers_v"], 2) for r in results])
    line("site purity", [_f(r["site_purity"], 2) for r in results])
    line(
        "site probe bal. acc. / chance",
        [
            f"{_f(r['probe']['balanced_accuracy'], 2)} / {_f(r['probe']['chance'], 2)}"
            if r["probe"]
            else "not computed"
            for r in results
        ],
    )
    line(
        "per-site AUC",
        [
            ", ".join(f"{k} {v['auc']:.2f} (n={v['n']})" for k, v in (r["per_site_auc"] or {}).items()) or "-"
            for r in results
        ],
    )
    line("near-duplicates across splits", [str(r["near_duplicates"]) for r in results])
    line(
        "patients in two splits",
        [
            "not checked" if r["patients_in_two_splits"] is None else str(len(r["patients_in_two_splits"]))
            for r in results
        ],
    )
    line("checks flagged", [str(len(r["flagged"])) + f" of {len(r['findings'])}" for r in results])
    for r in results:
        print(f"\n{r['tree']}: label x site counts {json.dumps(r['contingency'])}")
        for f in r["findings"]:
            print(
                f"  {'FLAGGED' if f['flagged'] else 'ok':<8}{f['check']:<32}{_f(f['value'])}"
                f"  (threshold {f['threshold']})"
            )
    print("\nwall time (s) and peak RSS of the audit:")
    for r in results:
        steps = r["steps"]
        cells = [f"{k} {s['seconds']}" + (" (earlier run)" if s.get("reused") else "") for k, s in steps.items()]
        print(
            f"  {r['tree']:<12}"
            + "   ".join(cells)
            + f"   audit peak RSS {_f(steps['audit'].get('peak_rss_mb'), 0)} MB"
        )
        print(f"  {'':<12}{r['audit_command']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (holding cxr/)")
    p.add_argument("--trees", nargs="+", default=["confounded", "control"], choices=["confounded", "control"])
    p.add_argument("--epochs", type=int, default=4, help="most epochs per training phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the trees, members and audits here (trees and members found are reused)",
    )
    args = p.parse_args(argv)
    if not (args.data / "cxr" / "manifest.csv").is_file():
        print(
            f"{args.data}: no cxr/manifest.csv; this benchmark needs the shared real data "
            "(../shared/data, see its README.md)",
            file=sys.stderr,
        )
        return 2
    readme = args.data / "README.md"
    if readme.is_file():
        caveat = [line for line in readme.read_text(encoding="utf-8").splitlines() if "site confound" in line]
        print(f"{readme}: {caveat[0].strip() if caveat else 'read'}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_audit_"))
    work.mkdir(parents=True, exist_ok=True)
    tables = _tables(args.data)
    for name in args.trees:
        labels = [r["label"] for r in tables[name]]
        sites = sorted({r["site"] for r in tables[name]})
        print(
            f"{name}: {len(labels)} films, {labels.count('Positive')} Positive / "
            f"{labels.count('Negative')} Negative, sites {sites}",
            flush=True,
        )
    results = []
    for name in args.trees:
        print(f"{name}: build, train, audit ...", flush=True)
        results.append(_tree(name, tables[name], args, work))
    print()
    _print(results)
    disagree = [
        (r["tree"], m) for r in results for m in MODES if abs(r["sklearn_auc"][m] - r["modes"][m]["auc"]) > 1e-3
    ]
    if disagree:
        print(f"\nAUC from scores.csv differs from audit.json for {disagree}")
    summary = work / "bench_audit.json"
    summary.write_text(json.dumps({"workdir": str(work), "results": results}, indent=1) + "\n", encoding="utf-8")
    print(f"\nsummary: {summary}")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
