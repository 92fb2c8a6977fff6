"""Extract each (dataset, category, backbone) once, as a Ray task, before any trial starts.

Without this stage every trial of a category would run the backbone on the same images (3 methods x
5 ratios x 3 seeds = 45 times per category); with it, trials only read the shared feature cache.
Each task returns how many backbone forwards it made, so a rerun can prove it made none.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureTask:
    """One unit of the stage: every record (train + test) of one category through one backbone."""

    dataset: dict[str, Any]
    category: str
    backbone: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.dataset.get('kind')}/{self.category}/{self.backbone.get('name')}"


@dataclass
class StageResult:
    """What the stage did: per-task forward counts (0 everywhere on a warm cache) and wall time."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def forwards(self) -> int:
        return sum(int(t.get("forwards", 0)) for t in self.tasks)


def _field(job: Any, name: str) -> Any:
    if isinstance(job, dict):
        return job[name]
    return getattr(job, name)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if hasattr(value, "model_dump"):
        return dict(value.model_dump())
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    raise TypeError(f"cannot read {type(value).__name__} as a settings dict")


def to_tasks(jobs: Iterable[Any]) -> list[FeatureTask]:
    """Normalise cells.feature_jobs() items (objects, dicts or (dataset, category, backbone) tuples)."""
    tasks: dict[str, FeatureTask] = {}
    for job in jobs:
        if isinstance(job, tuple):
            dataset, category, backbone = job[0], job[1], job[2]
        else:
            dataset, category = _field(job, "dataset"), _field(job, "category")
            backbone = _field(job, "backbone")
        task = FeatureTask(_as_dict(dataset), str(category), _as_dict(backbone))
        key = json.dumps([task.dataset, task.category, task.backbone], sort_keys=True, default=str)
        tasks.setdefault(key, task)
    return list(tasks.values())


def extract_category(
    task: FeatureTask,
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
    from funad.run import backbone_config, open_dataset, resolve_device

    if workdir and os.path.isdir(workdir):  # relative dataset roots are relative to the driver's cwd
        os.chdir(workdir)
    torch.set_num_threads(max(1, num_threads))
    t0 = time.perf_counter()
    dataset = open_dataset(task.dataset, Path(data_cache) if data_cache else None)
    records = dataset.records(task.category)
    device = resolve_device(None)
    before = features.forward_count()
    bcfg = backbone_config(task.backbone)
    features.extract_features(records, bcfg, Path(cache_dir), device=device, progress=False)
    return {
        "task": task.label,
        "images": len(records),
        "forwards": features.forward_count() - before,
        "seconds": round(time.perf_counter() - t0, 3),
        "node": socket.gethostname(),
        "device": device,
    }


def run_stage(
    jobs: Iterable[Any],
    cache_dir: str,
    *,
    cluster_gpus: float,
    want_gpu: bool,
    cpus_per_task: float = 1.0,
    data_cache: str | None = None,
    log: Any = print,
) -> StageResult:
    """Submit one Ray task per unique job and wait for all.

    A failing task (say, one unreadable image) does not stop the sweep: it is logged, and that
    category's trials extract in-trial and record the error in their own failed rows.

    A task gets a whole GPU when the trials ask for one or the cluster has any (an autoscaling cluster
    may show none until the first GPU node joins), else CPUs only.
    """
    import ray

    tasks = to_tasks(jobs)
    result = StageResult()
    if not tasks:
        return result
    if "://" not in cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    use_gpu = want_gpu or cluster_gpus > 0
    cpus = max(1.0, float(cpus_per_task))
    remote = ray.remote(extract_category).options(
        num_cpus=cpus, num_gpus=1 if use_gpu else 0, max_retries=1, retry_exceptions=False,
        name="funad.extract_features",
    )
    t0 = time.perf_counter()
    log(f"features: {len(tasks)} extraction task(s) on {'GPU' if use_gpu else 'CPU'} -> {cache_dir}")
    workdir = os.getcwd()
    refs = {remote.remote(t, cache_dir, int(cpus), data_cache, workdir): t for t in tasks}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                info = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # task error, worker crash (OOM), node lost
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                message = f"{type(cause).__name__}: {cause}".splitlines()[0]
                result.failures.append((refs[done[0]].label, message))
                log(f"  features {refs[done[0]].label}: FAILED ({message}); its trials will report it")
                continue
            result.tasks.append(info)
            log(
                f"  features {info['task']}: {info['images']} images, {info['forwards']} forwards, "
                f"{info['seconds']:.1f}s on {info['node']}"
            )
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    result.wall_s = time.perf_counter() - t0
    return result
