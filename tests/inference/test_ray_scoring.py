"""predict.py and evaluate.py with ``--backend ray`` (docs/distributed.md) on one local Ray for the
module (started by the package's own start: 127.0.0.1 only, 2 CPUs), against the local backend:

- the local Ray listens on the loopback interface only;
- a scoring worker killed by its PID mid-run is replaced: every file comes back exactly once and
  every row equals the local backend's (same columns and row order, |score difference| <= 1e-5 with
  the same engine, the bad file an error row), and run_config.json holds the same options;
- a driver killed with ``kill -9`` leaves no half-written file and its rerun continues from the
  journaled rows, no row twice;
- evaluate.py scores a tree the same way;
- without Ray installed, ``--backend ray`` is one line naming the extra (exit 2).

Two untrained ResNet-50 members at 32 px (crop and uncrop views) keep each run to seconds; both
backends run Keras at fp32.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deepcovidxr import cli
from tests.support.helpers import (
    REPO,
    local_ray,
    make_phantom_tree,
    save_random_members,
    shared,
    time_limit,
)

MEMBERS = ("res_32_uncrop", "res_32_crop")
COPIES = 4  # of each film: enough batches of one to kill a worker while most are still to come
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cluster():
    with local_ray(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def world(cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Members, a folder of films (each in COPIES copies) with one broken file, and the local
    backend's run on it (through the command line, so run_config.json is written too)."""
    root = tmp_path_factory.mktemp("ray")
    members = save_random_members(root / "members", MEMBERS, {MEMBERS[0]: 0.6, MEMBERS[1]: 0.4})
    images = root / "images"
    images.mkdir()
    films = [*sorted(shared("cxr", "Positive").glob("*.png"))[:2], *sorted(shared("cxr", "Negative").glob("*.png"))[:2]]
    for copy in range(COPIES):
        for film in films:
            shutil.copy(film, images / f"c{copy}_{film.name}")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    flags = ["-w", members, "-e", members / "ensemble_weights.json", "-i", images, "--engine", "keras"]
    flags = [str(f) for f in [*flags, "--precision", "fp32", "--batch-size", "1", "--workers", "1"]]
    assert cli.main("predict", [*flags, "-o", str(root / "local")]) == 1  # the broken file's error row
    return {"root": root, "members": members, "images": images, "flags": flags, "local": root / "local"}


def _table(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def assert_same_rows(output: Path, reference: Path, name: str = "predictions.csv") -> None:
    """Same columns, same rows in the same order (each file once), text equal, numbers within
    TOLERANCE."""
    header, rows = _table(output / name)
    expected_header, expected = _table(reference / name)
    assert header == expected_header
    assert [r["Filenames"] for r in rows] == [r["Filenames"] for r in expected]
    assert len({r["Filenames"] for r in rows}) == len(rows)
    for row, want in zip(rows, expected, strict=True):
        for column in header:
            if row[column] == want[column]:
                continue
            try:
                difference = abs(float(row[column]) - float(want[column]))
            except ValueError:
                raise AssertionError(f"{row['Filenames']} {column}: {row[column]!r} != {want[column]!r}") from None
            assert difference <= TOLERANCE, f"{row['Filenames']} {column}: {row[column]} vs {want[column]}"


# ---- the processes of this module's cluster --------------------------------------------------------


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    return int(stat.rsplit(")", 1)[1].split()[1])


def cluster_pids() -> list[int]:
    """This process's descendants: the Ray processes this module started (and nothing else's)."""
    found, me = [], os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            while pid > 1:
                pid = _parent(pid)
                if pid == me:
                    found.append(int(entry.name))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


def worker_pids(title: str) -> list[int]:
    """This cluster's Ray workers whose process title holds ``title`` (e.g. the scoring actors)."""
    pids = []
    for pid in cluster_pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if command.startswith("ray::") and title in command:
            pids.append(pid)
    return pids


def listening_hosts(pids: list[int]) -> set[str]:
    """The local addresses of the TCP sockets ``pids`` listen on (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    hosts = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text(encoding="utf-8").splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address = fields[1].split(":")[0]
                hosts.add(_host(address, width))
    return hosts


def _host(hex_address: str, width: int) -> str:
    if width == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, 32, 8)]
    raw = b"".join(words)
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # an IPv4 address mapped into IPv6
        return ".".join(str(b) for b in raw[12:])
    return "::1" if raw == b"\0" * 15 + b"\1" else raw.hex()


class WorkerKiller(threading.Thread):
    """Kills one Ray worker titled ``title`` with SIGKILL once the first batch of rows is journaled
    under ``journal``, and notes how many rows were journaled at that moment."""

    def __init__(self, journal: Path, title: str) -> None:
        super().__init__(daemon=True)
        self.journal, self.title = journal, title
        self.killed: int | None = None
        self.journaled_at_kill = -1

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.killed is None:
            batches = list(self.journal.glob("*/rows-*.npz"))
            pids = worker_pids(self.title) if batches else []
            if pids:
                self.journaled_at_kill = len(batches)
                os.kill(pids[0], signal.SIGKILL)
                self.killed = pids[0]
            time.sleep(0.05)


def _journaled(journal: Path) -> int:
    return sum(len(np.load(path)["index"]) for path in journal.glob("*/rows-*.npz"))


# ---- tests ------------------------------------------------------------------------------------------


def test_the_local_ray_listens_on_loopback_only(cluster) -> None:
    assert cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in cluster.nodes()} == {"127.0.0.1"}
    hosts = listening_hosts(cluster_pids())
    assert hosts and hosts <= {"127.0.0.1", "::1"}, hosts


def test_a_worker_killed_mid_run_is_replaced_and_every_row_equals_the_local_backends(world, tmp_path: Path) -> None:
    output = tmp_path / "ray"
    killer = WorkerKiller(output / ".predict_rows", "ScoreViews")
    killer.start()
    with time_limit(300):
        code = cli.main("predict", [*world["flags"], "-o", str(output), "--backend", "ray", "--ray-workers", "2"])
    killer.join(5)
    assert code == 1  # the broken file, as locally
    files = len(list(world["images"].iterdir()))
    assert killer.killed is not None and killer.journaled_at_kill < files, "no scoring worker was killed mid-run"
    assert_same_rows(output, world["local"])
    assert (output / "report.html").is_file() and not (output / ".predict_rows").exists()
    ours = json.loads((output / "run_config.json").read_text(encoding="utf-8"))["predict"]
    theirs = json.loads((world["local"] / "run_config.json").read_text(encoding="utf-8"))["predict"]
    assert set(ours) == set(theirs)
    differ = {key for key in ours if ours[key] != theirs[key]}
    assert differ == {"output", "backend", "ray_workers"}, differ


# 22 s alone, up to 48 s beside the rest of the suite (a second driver's actors start, then the
# rerun's); in the default suite all the same: resuming after kill -9 is what the journal is for
def test_a_driver_killed_leaves_no_half_written_file_and_its_rerun_continues(
    cluster, world, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "ray"
    address = cluster.get_runtime_context().gcs_address
    flags = [*world["flags"], "-o", str(output), "--backend", "ray"]
    with (tmp_path / "driver.log").open("w", encoding="utf-8") as log:
        driver = subprocess.Popen(
            [sys.executable, str(REPO / "predict.py"), *flags, "--ray-address", address],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and driver.poll() is None:
                if list((output / ".predict_rows").glob("*/rows-*.npz")):
                    break
                time.sleep(0.05)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text(encoding="utf-8")[-3000:]
        finally:
            driver.kill()  # SIGKILL: nothing of the driver's own runs after this
            driver.wait(30)
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == ["run_config.json"]
    journaled = _journaled(output / ".predict_rows")
    files = len(list(world["images"].iterdir()))
    assert 0 < journaled < files
    capsys.readouterr()
    with time_limit(300):
        assert cli.main("predict", flags) == 1
    resumed = [line for line in capsys.readouterr().err.splitlines() if "finished by an interrupted run" in line]
    assert resumed and int(resumed[0].split("predict: ")[1].split()[0]) >= journaled
    assert_same_rows(output, world["local"])


@pytest.mark.slow  # 20-25 s here: the dataflow's actors start again
def test_evaluate_scores_a_tree_as_the_local_backend_does(world, tmp_path: Path) -> None:
    view = make_phantom_tree(tmp_path / "tree", 12, 32, seed=5)
    shutil.copytree(view, view.parent / "crop")
    for folder in (view, view.parent / "crop"):  # unreadable in every view: left out, listed
        (folder / "Test" / "Negative" / "zz_broken.png").write_bytes(b"not an image")
    flags = ["-w", str(world["members"]), "-e", str(world["members"] / "ensemble_weights.json")]
    flags += ["-i", str(tmp_path / "tree"), "--engine", "keras", "--precision", "fp32", "--bootstrap", "10"]
    assert cli.main("evaluate", [*flags, "-o", str(tmp_path / "local")]) == 1
    with time_limit(300):
        assert cli.main("evaluate", [*flags, "-o", str(tmp_path / "ray"), "--backend", "ray"]) == 1
    assert_same_rows(tmp_path / "ray" / "Results", tmp_path / "local" / "Results")
    ours, theirs = (tmp_path / side / "Results" for side in ("ray", "local"))
    listed = [(side / "unreadable.csv").read_text(encoding="utf-8") for side in (ours, theirs)]
    assert listed[0] == listed[1] and "zz_broken.png" in listed[0]
    auc = [json.loads((side / "metrics.json").read_text(encoding="utf-8"))["auc"] for side in (ours, theirs)]
    assert auc[0] == pytest.approx(auc[1], abs=TOLERANCE)


def test_without_ray_the_backend_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """Ray hidden from the interpreter (``sys.modules['ray'] = None`` makes its import fail)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "members").mkdir()
    flags = ["-w", str(tmp_path / "members"), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    flags += ["--backend", "ray"]
    hide = f"import sys; sys.modules['ray'] = None; import predict; sys.exit(predict.main({flags!r}))"
    done = subprocess.run(
        [sys.executable, "-c", hide], cwd=REPO, capture_output=True, text=True, encoding="utf-8", timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install deepcovidxr[ray]" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
