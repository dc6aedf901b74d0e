"""Peak memory and time of exporting the largest member (issue 19: below 4 GB RSS for ONNX,
OpenVINO and TFLite, parity <= 1e-4 against Keras).

The member is Inception-ResNet-V2 at 331 px (the largest graph and the largest input of the 24),
built with random weights (``weights=None``: the weights' values do not change the conversion's
memory) and saved in the member format. Each case runs in a fresh process under ``/usr/bin/time -v``
(its "Maximum resident set size"; without that program, the same figure from ``os.wait4``):

- ``onnx`` / ``openvino`` / ``tflite``: ``python -m deepcovidxr.runtime.export_worker`` (what export.py and
  the engine cache run for one member): load, convert, check every output column against Keras;
- ``cache:openvino`` / ``cache:onnxruntime``: a process that fills an empty engine cache for the member
  with ``load.export_missing`` and scores a batch with ``load.open_member``, as predict.py does
  on a cold cache (the peak is that of the largest process, the caller or its export worker).

Prints one row per case: peak RSS (GB), wall seconds of the process, the conversion's own seconds,
max |exported - Keras| and whether the 4 GB and 1e-4 targets are met.

Example (about 5 minutes on 2 cores; never run beside another heavy job):
    python benchmarks/bench_export_memory.py --work /tmp/bench_export_memory
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_GB = 4.0
PARITY = 1e-4
CASES = ("onnx", "openvino", "tflite", "cache:openvino")
BACKBONE, SIZE, CROP = "Inception-ResNet-V2", 331, "uncrop"
TIME = Path("/usr/bin/time")

MAKE_MEMBER = """
import sys
from pathlib import Path
import keras
from deepcovidxr.contract.layout import CropMode, Member
from deepcovidxr.networks.members import build_member, save_member
member = Member({backbone!r}, {size}, CropMode({crop!r}))
keras.utils.set_random_seed(0)
model = build_member(member.backbone, member.size, weights=None)
save_member(model, Path(sys.argv[1]) / member.legacy_filename, member)
"""

COLD_CACHE = """
import json, sys, time
from pathlib import Path
import numpy as np
from deepcovidxr.runtime import load
from deepcovidxr.contract.layout import CropMode, Member
path, engine, cache = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
member = Member({backbone!r}, {size}, CropMode({crop!r}))
start = time.perf_counter()
load.export_missing([(member, path)], engine, "fp32", cache)
seconds = time.perf_counter() - start
runner = load.open_member(member, path, engine, "fp32", cache)
batch = np.random.default_rng(0).normal(size=(2, {size}, {size}, 3)).astype(np.float32)
scores = runner.predict(batch)
sys.stdout.write(json.dumps({{"seconds": seconds, "parity_max_abs_diff": None, "scores": scores.tolist()}}) + "\\n")
"""


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def measure(command: list[str], log: Path) -> tuple[float, float, dict]:
    """Run ``command`` in a fresh process: (peak RSS in GB, wall seconds, its last stdout line as JSON or {})."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as errors:
        if TIME.exists():
            done = subprocess.run(
                [str(TIME), "-v", *command], stdout=subprocess.PIPE, stderr=errors, text=True, env=_env(), check=False
            )
            stdout, code = done.stdout, done.returncode
            peak_kb = None
        else:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=_env())
            stdout = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            code, peak_kb = os.waitstatus_to_exitcode(status), usage.ru_maxrss
    wall = time.perf_counter() - start
    text = log.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed (exit {code}); log {log}:\n{text[-3000:]}")
    if peak_kb is None:
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    lines = stdout.strip().splitlines()
    return peak_kb / 1024**2, wall, json.loads(lines[-1]) if lines else {}


def keras_scores(path: Path, log: Path) -> list[float]:
    """The member's Keras scores on the batch the cold-cache case scores (for its parity)."""
    script = (
        "import json, sys\nimport numpy as np\nfrom pathlib import Path\n"
        "from deepcovidxr.networks.members import load_member\n"
        f"model = load_member(Path(sys.argv[1]))\nbatch = np.random.default_rng(0).normal(size=(2, {SIZE}, {SIZE}, 3))"
        ".astype(np.float32)\nsys.stdout.write(json.dumps(np.asarray(model(batch, training=False))[:, 0].tolist()))\n"
    )
    return measure([sys.executable, "-c", script, str(path)], log)[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_export_memory"))
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args()

    from deepcovidxr.contract.layout import CropMode, Member
    from deepcovidxr.runtime import convert, exports

    member = Member(BACKBONE, SIZE, CropMode(CROP))
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / member.legacy_filename
    if not path.is_file():
        script = MAKE_MEMBER.format(backbone=BACKBONE, size=SIZE, crop=CROP)
        measure([sys.executable, "-c", script, str(args.work)], args.work / "make_member.log")
    print(f"member: {path.name} ({path.stat().st_size / 1e6:.0f} MB), Python {sys.version.split()[0]}")
    print(f"{'case':<18} {'peak RSS GB':>11} {'wall s':>7} {'convert s':>9} {'max |diff|':>10}  targets")
    reference = None
    for case in args.cases:
        out = args.work / "out" / case.replace(":", "_")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        log = args.work / f"{case.replace(':', '_')}.log"
        if case.startswith("cache:"):
            engine = case.split(":", 1)[1]
            script = COLD_CACHE.format(backbone=BACKBONE, size=SIZE, crop=CROP)
            peak, wall, result = measure([sys.executable, "-c", script, str(path), engine, str(out)], log)
            if reference is None:
                reference = keras_scores(path, args.work / "keras_scores.log")
            result["parity_max_abs_diff"] = max(abs(a - b) for a, b in zip(result["scores"], reference, strict=True))
        else:
            suffix = convert.EXPORT_FORMATS[case][0]
            request = exports.member_request(member, path, case, out / f"member{suffix}", parity=True)
            command = [sys.executable, "-m", exports.WORKER_MODULE, json.dumps(request)]
            peak, wall, result = measure(command, log)
        difference = result["parity_max_abs_diff"]
        met = f"memory {'ok' if peak < TARGET_GB else 'MISSED'}, parity " + (
            "not checked" if difference is None else ("ok" if difference <= PARITY else "MISSED")
        )
        shown = "-" if difference is None else f"{difference:.1e}"
        print(f"{case:<18} {peak:>11.2f} {wall:>7.1f} {result['seconds']:>9.1f} {shown:>10}  {met}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
