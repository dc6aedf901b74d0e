"""A user's first run, cold caches: memory of the whole process tree and time to the first result.

Cases (``--cases``):
- ``predict``: ``predict.py`` on one real chest X-ray with all 24 members at production sizes
  (random weights, saved in the member format) and an empty engine cache, on the default engine:
  every member is exported once (one process per export) before scoring. Targets: the process
  tree stays below 6 GB; ``predictions.csv`` within 5 minutes of process start.
- ``demo``: ``demo.py`` (the README's first command) into an empty folder. Target: below 4 GB.

Memory is the peak of the summed proportional set size (PSS, /proc/<pid>/smaps_rollup) of the
command and all its descendants (the export workers included), sampled every 0.2 s, and the
largest single process's resident memory. PSS, not RSS: a child forked before it execs shares
its parent's pages, and summing RSS would count them twice (a 3 GB parent starting two export
workers read as 8 GB).

Example:
    python benchmarks/bench_first_run.py --cases predict demo --members /tmp/members24
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PAGE = os.sysconf("SC_PAGE_SIZE")


def _make_members(folder: Path) -> None:
    """The 24 members at production sizes with random weights (built once, reused)."""
    import keras

    from deepcovidxr.contract.layout import ensemble_members
    from deepcovidxr.networks.members import build_member, save_member

    folder.mkdir(parents=True, exist_ok=True)
    for member in ensemble_members():
        if not (folder / member.legacy_filename).is_file():
            save_member(
                build_member(member.backbone, member.size, weights=None), folder / member.legacy_filename, member
            )
            keras.backend.clear_session()


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_rss(root: int) -> tuple[int, int]:
    """(summed PSS, largest RSS) in bytes of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry), int(fields[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += _pss(pid) if pid in rss else 0
        largest = max(largest, rss.get(pid, 0))
        stack.extend(children.get(pid, []))
    return total, largest


def measure(command: list[str], watch: Path | None = None) -> dict:
    """Run ``command``; its wall time, exit code, peak tree/largest RSS, and when ``watch`` appeared."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_total = peak_single = 0
    appeared = None
    stderr_chunks: list[str] = []
    while process.poll() is None:
        total, largest = _tree_rss(process.pid)
        peak_total, peak_single = max(peak_total, total), max(peak_single, largest)
        if watch is not None and appeared is None and watch.exists():
            appeared = time.perf_counter() - started
        time.sleep(0.2)
    stderr_chunks.append(process.stderr.read() if process.stderr else "")
    if watch is not None and appeared is None and watch.exists():
        appeared = time.perf_counter() - started
    return {
        "exit": process.returncode,
        "wall_s": time.perf_counter() - started,
        "first_result_s": appeared,
        "peak_tree_gb": peak_total / 1e9,
        "peak_process_gb": peak_single / 1e9,
        "stderr_tail": "".join(stderr_chunks)[-1500:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["predict", "demo"], choices=["predict", "demo"])
    parser.add_argument("--members", type=Path, default=Path(tempfile.gettempdir()) / "deepcovidxr-members24")
    parser.add_argument("--image", type=Path, default=SHARED / "cxr" / "Positive" / "hannover_006f3a8a.png")
    args = parser.parse_args(argv)
    python = sys.executable
    results = {}
    with tempfile.TemporaryDirectory(prefix="first-run-") as scratch:
        scratch = Path(scratch)
        if "predict" in args.cases:
            _make_members(args.members)
            images = scratch / "images"
            images.mkdir()
            (images / args.image.name).write_bytes(args.image.read_bytes())
            output = scratch / "predict"
            command = [python, "predict.py", "-w", str(args.members), "-i", str(images), "-o", str(output)]
            command += ["-e", str(_weights(args.members, scratch)), "--engine-cache", str(scratch / "cache")]
            results["predict (24 members, cold cache)"] = measure(command, output / "predictions.csv")
        if "demo" in args.cases:
            results["demo (cold)"] = measure([python, "demo.py", "-o", str(scratch / "demo")])
    print(f"{'case':36} {'exit':>4} {'wall s':>8} {'first result s':>15} {'peak PSS GB':>12} {'largest GB':>11}")
    for name, r in results.items():
        first = f"{r['first_result_s']:.1f}" if r["first_result_s"] is not None else "-"
        print(
            f"{name:36} {r['exit']:>4} {r['wall_s']:>8.1f} {first:>15} {r['peak_tree_gb']:>12.2f} "
            f"{r['peak_process_gb']:>11.2f}"
        )
        if r["exit"]:
            print(r["stderr_tail"], file=sys.stderr)
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1


def _weights(members: Path, scratch: Path) -> Path:
    """Equal weights over the 24 (the published file's weights would do as well; this keeps the
    benchmark independent of them)."""
    import json

    from deepcovidxr.contract.layout import ensemble_members

    path = scratch / "ensemble_weights.json"
    members_24 = ensemble_members()
    path.write_text(json.dumps({m.short_name: 1 / len(members_24) for m in members_24}), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
