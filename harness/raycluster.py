"""Starting a local Ray or joining a cluster, and the storage rule that joining implies.

Only this module calls `ray.init`/`ray.shutdown`, so "always shut down the Ray we started" lives in
one context manager. Joining a cluster means trials may run on other machines and write the run
directory from there: that only works on a filesystem every node mounts, which the user declares
shared, so an undeclared path is refused before anything is started. (A URI never gets here: the
spec refuses it, see harness.spec.models.)
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.spec import SweepSpec

#: Set to 1/true to declare a local-looking storage path shared by every node (NFS, EFS, one machine).
SHARED_ENV = "FUNAD_STORAGE_SHARED"
_LOCAL_SCHEMES = ("file://", "local://")


class ClusterError(RuntimeError):
    """A Ray/storage configuration that cannot work; the message says what to change."""


@dataclass(frozen=True)
class RayHandle:
    """What the rest of the sweep needs to know about the Ray it runs on."""

    started_local: bool
    address: str | None
    dashboard_url: str | None
    num_gpus: float
    num_cpus: float


def is_uri(storage: str) -> bool:
    """True for a remote URI such as s3://, gs://, abfs:// (not file://): not a node's private disk."""
    return "://" in storage and not storage.startswith(_LOCAL_SCHEMES)


def resolve_address(cli_address: str | None, spec: SweepSpec) -> str | None:
    """--address beats the spec's ray.address, which beats $RAY_ADDRESS; None = start a local Ray."""
    if cli_address:
        return cli_address
    if spec.ray.address:
        return str(spec.ray.address)
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or None


def storage_is_shared(spec: SweepSpec) -> bool:
    """The spec's `storage_shared: true` or $FUNAD_STORAGE_SHARED marks a path as seen by all nodes."""
    if spec.storage_shared:
        return True
    return os.environ.get(SHARED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def check_storage(address: str | None, storage: str, spec: SweepSpec) -> None:
    """Refuse a cluster run whose results would land on one node's private disk."""
    if address is None or is_uri(storage) or storage_is_shared(spec):
        return
    raise ClusterError(
        f"storage {storage!r} is a local path, but this sweep joins the Ray cluster at {address!r}: "
        "trials on other nodes would write their results to their own disks. Use a path every node "
        "mounts (NFS/EFS; a bucket such as s3://... or gs://... once mounted on every node with "
        "mountpoint-s3 or gcsfuse) and declare it with `storage_shared: true` in the spec "
        f"(or {SHARED_ENV}=1)."
    )


def dashboard_installed() -> bool:
    """The dashboard needs ray[default]; without it ray.init(include_dashboard=True) fails."""
    needed = ("aiohttp", "aiohttp_cors", "prometheus_client")
    return all(importlib.util.find_spec(m) is not None for m in needed)


@contextmanager
def ray_session(spec: SweepSpec, address: str | None, *, quiet: bool = False) -> Iterator[RayHandle]:
    """Start (or join) Ray for the sweep and always shut it down again, also on errors and Ctrl-C."""
    import ray

    want_dashboard = spec.ray.dashboard and dashboard_installed()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        num_cpus, num_gpus = spec.ray.num_cpus, spec.ray.num_gpus
        ctx = ray.init(
            address="local",
            include_dashboard=want_dashboard,
            dashboard_host="127.0.0.1",
            num_cpus=int(num_cpus) if num_cpus is not None else None,
            num_gpus=int(num_gpus) if num_gpus is not None else None,
            logging_level="WARNING",
            log_to_driver=not quiet,
        )
    else:
        ctx = ray.init(address=address, logging_level="WARNING", log_to_driver=not quiet)
    try:
        url = getattr(ctx, "dashboard_url", None) or None
        if url and not url.startswith("http"):
            url = f"http://{url}"
        res = ray.cluster_resources()
        yield RayHandle(
            started_local=address is None,
            address=address,
            dashboard_url=url,
            num_gpus=float(res.get("GPU", 0.0)),
            num_cpus=float(res.get("CPU", 0.0)),
        )
    finally:
        # For a joined cluster this only disconnects the driver; the cluster keeps running.
        ray.shutdown()
