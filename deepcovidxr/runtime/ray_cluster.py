"""Ray for ``--backend ray``, started or joined safely: the one place that imports Ray.

Ray is an optional extra (``pip install deepcovidxr[ray]``), imported only here and only when a
stage runs on it; without it the stage stops with one line naming the extra (exit 2).

A local Ray that a stage starts (no ``--ray-address``) listens on the loopback interface only,
with the dashboard off unless ``--ray-dashboard``: any process that reaches a Ray port can run
code on the cluster, and Ray otherwise binds every interface at the machine's network address.
Ray 2.x has no switch for this on Linux; its single-machine mode (the one it uses on macOS and
Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) puts every server on the loopback address, so the
start turns that mode on for the processes it launches and checks the node's address afterwards.
Joining a cluster (``--ray-address auto`` or ``host:port``) leaves its network to whoever started
it (docs/distributed.md says how to start one safely).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from deepcovidxr.errors import UsageError

log = logging.getLogger(__name__)

EXTRA = "pip install deepcovidxr[ray]"
LOOPBACK = "127.0.0.1"
PROBE_SECONDS = 5.0  # a cluster's head answers at once; a wrong address is told in seconds, not minutes
# Ray's own variable for its single-machine mode (read by ray._private.ray_constants at import).
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# The workers' environment: TensorFlow's start-up chatter and per-batch progress bars off (the
# driver logs what runs); the caller's own settings of these win.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_DISABLE": "1"}


def _runtime_env() -> dict:
    return {"env_vars": {name: os.environ.get(name, value) for name, value in WORKER_ENV.items()}}


def import_ray():
    """The ``ray`` module, or a UsageError naming the extra (exit 2, one line)."""
    try:
        import ray
        import ray.data  # noqa: F401 (the scoring pipeline needs the data extra too)
    except ImportError:
        raise UsageError(f"--backend ray needs Ray, an optional extra: {EXTRA}") from None
    return ray


@dataclass(frozen=True)
class RayCluster:
    """Where a stage runs on Ray: ``address`` None starts a local Ray on this machine (loopback
    only, ``num_cpus`` when given, else Ray's count of the cores); ``auto`` joins the cluster
    started on this machine with ``ray start``; ``host:port`` joins that cluster."""

    address: str | None = None
    dashboard: bool = False
    num_cpus: int | None = None

    @classmethod
    def of(cls, config) -> RayCluster:
        """The cluster a stage config names (``--ray-address``, ``--ray-dashboard``)."""
        return cls(config.ray_address, config.ray_dashboard)


@contextlib.contextmanager
def connected(cluster: RayCluster) -> Iterator[object]:
    """The ``ray`` module, connected to ``cluster`` for the ``with`` block. A process already
    connected (a test's cluster, a caller's notebook) keeps its connection and nothing is shut
    down here; otherwise the Ray this block started or joined is let go when it ends (a local one
    stops with it)."""
    ray = import_ray()
    if ray.is_initialized():
        log.info("ray: using this process's connection to %s", ray.get_runtime_context().gcs_address)
        yield ray
        return
    if cluster.address is None:
        _start_local(ray, cluster)
    else:
        _join(ray, cluster)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode for the ``ray.init`` inside: its address lookups give the
    loopback address, and the processes it launches inherit the mode."""
    from ray._private import ray_constants  # the mode is read from here at each address lookup

    saved = os.environ.get(SINGLE_MACHINE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _on_loopback(address: str) -> bool:
    """Whether ``address`` (``auto``: the cluster ``ray start`` recorded on this machine) is a
    loopback one: a driver joining it must look for its node there too, or it waits forever."""
    if address == "auto":
        from ray._private.services import get_ray_address_from_environment

        try:
            address = get_ray_address_from_environment("auto", None) or ""
        except ConnectionError:  # no cluster recorded: ray.init says so below
            return False
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in {"localhost", "::1"} or host.startswith("127.")


def _probe(address: str) -> None:
    """A HOST:PORT nobody listens on is refused at once (Ray itself would keep retrying)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--ray-address {address}: no Ray cluster answers there ({error}); start one first (docs/distributed.md)"
        ) from None


def _join(ray, cluster: RayCluster) -> None:
    if cluster.address != "auto":
        _probe(cluster.address)
    try:
        with _single_machine() if _on_loopback(cluster.address) else contextlib.nullcontext():
            ray.init(address=cluster.address, runtime_env=_runtime_env(), log_to_driver=True, configure_logging=False)
    except ConnectionError as error:
        raise UsageError(f"--ray-address {cluster.address}: {error}") from None
    log.info("ray: joined %s (%s)", cluster.address, _resources(ray))


def _start_local(ray, cluster: RayCluster) -> None:
    """A new Ray on this machine whose every server listens on the loopback address."""
    with _single_machine():
        context = ray.init(
            address="local",  # never a cluster RAY_ADDRESS or an earlier `ray start` points at
            num_cpus=cluster.num_cpus,
            include_dashboard=cluster.dashboard,
            dashboard_host=LOOPBACK,
            runtime_env=_runtime_env(),
            log_to_driver=True,
            configure_logging=False,
        )
    address = ray.get_runtime_context().gcs_address
    if not address.startswith(f"{LOOPBACK}:"):
        ray.shutdown()
        raise RuntimeError(f"the local Ray started at {address}, not on {LOOPBACK}; stopped it")
    dashboard = getattr(context, "dashboard_url", None) if cluster.dashboard else None
    log.info(
        "ray: started a local Ray at %s (loopback only; %s); dashboard %s",
        address,
        _resources(ray),
        f"at http://{dashboard}" if dashboard else "off (--ray-dashboard turns it on)",
    )


def _resources(ray) -> str:
    found = ray.cluster_resources()
    return f"{found.get('CPU', 0):g} CPUs, {found.get('GPU', 0):g} GPUs"


def default_gpus(ray, asked: float | None) -> float:
    """``--gpus-per-worker`` / ``--gpus-per-member``: as asked, else 1 when the cluster has GPUs,
    else 0."""
    if asked is not None:
        return asked
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
