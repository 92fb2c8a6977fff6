"""Extract each (dataset, category, backbone) once, as a Ray task, before any trial starts.

Without this stage every trial of a category would run the backbone on the same images (3 methods x
5 ratios x 3 seeds = 45 times per category); with it, trials only read the shared feature cache.
Each task returns how many backbone forwards it made, so a rerun can prove it made none.

It is also where every image and mask a trial will read is decoded once (funad.data.images.check_files):
listing a dataset reads headers only, so a file cut short after its header would otherwise end as a
`failed` row in every cell of its category. A file that does not decode stops the sweep here, before
any trial (`BadInput`: the driver prints its message and exits 2, like a bad spec). On a warm cache the
check still decodes every file, without the backbone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from funad.data.records import DatasetError
from harness.cells import FeatureJob


class BadInput(Exception):
    """An image or mask of the sweep does not decode: the driver ends the sweep with exit 2 before any
    trial, printing this message (`<job>: <file>: <problem>`)."""


@dataclass
class StageResult:
    """What the stage did: per-task forward counts (0 everywhere on a warm cache) and wall time."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def forwards(self) -> int:
        return sum(int(t["forwards"]) for t in self.tasks)


def extract_category(
    job: FeatureJob,
    cache_dir: str,
    num_threads: int = 1,
    data_cache: str | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run one task in this process (the body of the Ray task; also callable without Ray).

    Uses funad.run's own dataset/backbone helpers so the cache keys match what trials will look up.
    """
    import socket
    from pathlib import Path

    import torch

    from funad import features
    from funad.data.images import check_files
    from funad.run import open_dataset, resolve_device

    if workdir and os.path.isdir(workdir):  # relative dataset roots are relative to the driver's cwd
        os.chdir(workdir)
    torch.set_num_threads(max(1, num_threads))
    t0 = time.perf_counter()
    dataset = open_dataset(job.dataset, Path(data_cache) if data_cache else None)
    records = dataset.records(job.category)
    device = resolve_device(None)
    before = features.forward_count()
    bcfg = job.backbone
    # The backbone decodes the images it computes; check_files then decodes only the rest (cached
    # entries, or every image where only image methods read this category) and every mask, so no image
    # is decoded twice.
    if job.extract:
        features.extract_features(records, bcfg, Path(cache_dir), device=device, progress=False)
    decoded = check_files(records)
    return {
        "task": job.label,
        "images": len(records),
        "decoded": decoded,
        "forwards": features.forward_count() - before,
        "seconds": round(time.perf_counter() - t0, 3),
        "node": socket.gethostname(),
        "device": device,
    }


def run_stage(
    jobs: list[FeatureJob],
    cache_dir: str,
    *,
    cluster_gpus: float,
    want_gpu: bool,
    cpus_per_task: float = 1.0,
    data_cache: str | None = None,
    log: Callable[[str], None] = print,
) -> StageResult:
    """Submit one Ray task per job (cells.feature_jobs: unique already) and wait for all.

    An image or mask that does not decode (a DatasetError) stops the sweep: the other tasks are
    cancelled and `BadInput` is raised with the message `<job>: <file>: <problem>`. Any other failing
    task (a worker killed by the OOM killer, a lost node) does not: it is logged, and that category's
    trials extract in-trial and record the error in their own failed rows.

    A task gets a whole GPU when the trials ask for one or the cluster has any (an autoscaling cluster
    may show none until the first GPU node joins), else CPUs only.
    """
    import ray

    result = StageResult()
    if not jobs:
        return result
    os.makedirs(cache_dir, exist_ok=True)
    use_gpu = want_gpu or cluster_gpus > 0
    cpus = max(1.0, float(cpus_per_task))
    remote = ray.remote(extract_category).options(
        num_cpus=cpus, num_gpus=1 if use_gpu else 0, max_retries=1, retry_exceptions=False,
        name="funad.extract_features",
    )
    t0 = time.perf_counter()
    log(f"features: {len(jobs)} extraction task(s) on {'GPU' if use_gpu else 'CPU'} -> {cache_dir}")
    workdir = os.getcwd()
    refs = {remote.remote(j, cache_dir, int(cpus), data_cache, workdir): j for j in jobs}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                info = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # task error, worker crash (OOM), node lost
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, DatasetError):
                    # the message names the file; its first line is the whole problem
                    raise BadInput(f"{refs[done[0]].label}: {str(cause).strip().splitlines()[0]}") from None
                message = f"{type(cause).__name__}: {cause}".splitlines()[0]
                result.failures.append((refs[done[0]].label, message))
                log(f"  features {refs[done[0]].label}: FAILED ({message}); its trials will report it")
                continue
            result.tasks.append(info)
            log(
                f"  features {info['task']}: {info['images']} images, {info['forwards']} forwards, "
                f"{info['decoded']} decoded, {info['seconds']:.1f}s on {info['node']}"
            )
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    result.wall_s = time.perf_counter() - t0
    return result
