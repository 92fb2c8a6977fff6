"""Sweep-harness benchmark: feature reuse, sweep overhead, per-trial and per-extra-trial memory.

Runs sweeps through the real CLI (`python -m harness.sweep`, a subprocess) on one feature cache:
1. a tiny sweep, cold cache, one trial at a time: the features stage must run the backbone;
2. the same, warm cache, a fresh run directory, two trials at a time: the stage must make 0 forwards;
3. the smoke sweep (`sweeps/smoke.yaml`: 36 cells) with its storage and cache moved to the work
   folder: `sweep_overhead` is measured there, as the issue defines it (a 2-cell sweep would mostly
   measure Ray's start-up). `smoke=False` skips it and reports the tiny sweep's overhead instead.
It reads the run directories' results/*.parquet (feature_s, fit_s, wall_s, peak_rss_mb) and the
driver's "features: N backbone forwards" line (harness.sweep prints the stage's forward count).
The whole process tree (driver, raylet, workers) is sampled for RSS after the features line, so the
second run minus the first gives the memory one more concurrent trial costs.
Every value is a ratio or a same-run difference; when the harness cannot run, the keys are None
and "reason" says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KEYS = ("feature_reuse", "sweep_overhead", "trial_peak_rss_mb", "rss_per_extra_concurrent_trial_mb")
_FORWARDS = re.compile(r"features:\s+(\d+)\s+backbone forwards")
_RUN_DIR = re.compile(r"run directory:\s+(\S+)")

SPEC = """name: benchsweep
storage: {storage}
feature_cache: {cache}
ray: {{address: null, dashboard: false}}
resources: {{cpu: 1, gpu: 0}}
max_concurrent: {concurrent}
max_failures: 0
datasets:
  - {{kind: synthetic, categories: [brick]}}
backbone: {{name: tf_efficientnet_lite0, weights: bundled, resize: 256, crop: 224}}
contamination: {{ratios: [0.1], overlap: false, shortfall: cap}}
seeds: [0, 1]
methods:
  funad: {{epochs: 2}}
eval_every: 0
report: false
"""


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process and all its descendants, in MB; zeros when it is gone.

    RSS counts a memory-mapped feature pack once in EVERY process that touched it; PSS splits shared
    pages between the processes mapping them, so the PSS sum is the memory the tree really costs
    (PSS equals RSS where /proc/<pid>/smaps_rollup cannot be read).
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return rss / 2**20, pss / 2**20


def run_sweep(
    spec_path: Path, *, fresh: bool, timeout_s: float, overrides: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One `python -m harness.sweep` run: forwards, run dir, driver wall, peak tree RSS of the trial phase."""
    cmd = [sys.executable, "-m", "harness.sweep", str(spec_path), "-q", "--no-report"]
    if fresh:
        cmd.append("--fresh")
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    state: dict[str, Any] = {"sampling": False, "peak_mb": 0.0, "peak_pss_mb": 0.0, "lines": []}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if state["sampling"]:
                rss, pss = _tree_memory_mb(proc.pid)
                state["peak_mb"] = max(state["peak_mb"], rss)
                state["peak_pss_mb"] = max(state["peak_pss_mb"], pss)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            state["lines"].append(line.rstrip())
            if m := _FORWARDS.search(line):
                state["forwards"] = int(m.group(1))
                state["sampling"] = True
            if m := _RUN_DIR.search(line):
                state["run_dir"] = m.group(1)
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                raise TimeoutError(f"harness.sweep ran past {timeout_s:.0f}s")
        rc = proc.wait()
    finally:
        stop.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
    return {
        "rc": rc,
        "wall_s": time.perf_counter() - t0,
        "forwards": state.get("forwards"),
        "run_dir": state.get("run_dir"),
        "trial_phase_peak_rss_mb": state["peak_mb"],
        "trial_phase_peak_pss_mb": state["peak_pss_mb"],
        "tail": state["lines"][-15:],
    }


def _features_mb(cache: Path) -> float:
    """Size of the per-image feature entries in the cache (one copy of every extracted image)."""
    return sum(f.stat().st_size for f in cache.glob("*/entries/**/*.npy")) / 2**20


def read_results(run_dir: str) -> Any:
    """The run directory's results table (pandas), one row per cell."""
    from rundir import RESULTS_DIR, read_folder

    table = read_folder(Path(run_dir) / RESULTS_DIR, strict=True).table
    if table.num_rows == 0:
        raise FileNotFoundError(f"no results/*.parquet under {run_dir}")
    return table.to_pandas()


def _overhead(run: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """(sweep wall - sum of trial walls / concurrency) / sweep wall, with its parts."""
    res = run["results"]
    trial_sum = float(res["wall_s"].sum())
    ideal_s = trial_sum / concurrency
    return {
        "sweep_overhead": (run["wall_s"] - ideal_s) / max(1e-9, run["wall_s"]),
        "wall_over_ideal": run["wall_s"] / max(1e-9, ideal_s),
        "fit_share_of_trial_wall": float(res["fit_s"].sum()) / max(1e-9, trial_sum),
        "driver_wall_s": run["wall_s"],
        "trial_wall_sum_s": trial_sum,
        "concurrency": concurrency,
        "cells": len(res),
        "failed_cells": int((res["status"] != "ok").sum()) if "status" in res else None,
    }


def run_smoke_overhead(tmp: Path, *, timeout_s: float) -> dict[str, Any]:
    """The smoke sweep as shipped, storage and cache redirected: its sweep_overhead and parts."""
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"
    sets = (
        f"storage={tmp / 'runs'}",
        f"feature_cache={tmp / 'features'}",
        "ray.dashboard=false",
        "report=false",
    )
    r = run_sweep(spec, fresh=True, timeout_s=timeout_s, overrides=sets)
    if r["rc"] != 0 or r["run_dir"] is None:
        raise RuntimeError(f"smoke sweep rc={r['rc']}: {' | '.join(r['tail'][-5:])}")
    r["results"] = read_results(r["run_dir"])
    return _overhead(r, os.cpu_count() or 1)


def run_sweep_bench(
    *, timeout_s: float = 900.0, workdir: str | None = None, smoke: bool = True
) -> dict[str, Any]:
    """The sweep keys of the benchmark JSON; None values plus a "reason" when the harness fails."""
    try:
        import harness.sweep  # noqa: F401
    except Exception as exc:  # the harness is being finished by a colleague
        return {**dict.fromkeys(KEYS), "reason": f"harness.sweep not importable: {exc!r}"}
    tmp = Path(workdir or tempfile.mkdtemp(prefix="funad-sweepbench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for concurrent, fresh in ((1, False), (2, True)):
            spec = tmp / f"spec{concurrent}.yaml"
            spec.write_text(SPEC.format(storage=tmp / "runs", cache=tmp / "features", concurrent=concurrent))
            r = run_sweep(spec, fresh=fresh, timeout_s=timeout_s)
            if r["rc"] != 0 or r["run_dir"] is None:
                tail = " | ".join(r["tail"][-5:])
                return {**dict.fromkeys(KEYS), "reason": f"sweep run {len(runs) + 1} rc={r['rc']}: {tail}"}
            r["results"] = read_results(r["run_dir"])
            runs.append(r)
    except Exception as exc:
        return {**dict.fromkeys(KEYS), "reason": f"sweep benchmark failed: {exc!r}"}
    cold, warm = runs
    res = warm["results"]
    cold_f, warm_f = cold["forwards"], warm["forwards"]
    tiny = _overhead(warm, 2)  # two trials at once on this machine
    out: dict[str, Any] = {
        # the definitions: forwards of the rerun / forwards of the first run (must be 0), and
        # (sweep wall - sum of trial times / concurrency) / sweep wall (target <= 0.15, smoke sweep)
        "feature_reuse": (warm_f / cold_f) if cold_f and warm_f is not None else None,
        "sweep_overhead": tiny["sweep_overhead"],
        "feature_reuse_detail": {
            "cold_forwards": cold_f,
            "warm_forwards": warm_f,
            "warm_feature_s_over_cold": float(res["feature_s"].sum())
            / max(1e-9, float(cold["results"]["feature_s"].sum())),
        },
        "sweep_overhead_detail": {"sweep": "tiny (2 cells)", **tiny},
        "trial_peak_rss_mb": float(res["peak_rss_mb"].max()),
        "rss_per_extra_concurrent_trial_mb": warm["trial_phase_peak_rss_mb"]
        - cold["trial_phase_peak_rss_mb"],
        "memory_detail": {
            # PSS: shared (memory-mapped) pages split between the processes that map them
            "pss_per_extra_concurrent_trial_mb": warm["trial_phase_peak_pss_mb"]
            - cold["trial_phase_peak_pss_mb"],
            **{
                f"tree_peak_{m}_mb": {
                    "one_trial": cold[f"trial_phase_peak_{m}_mb"],
                    "two": warm[f"trial_phase_peak_{m}_mb"],
                }
                for m in ("rss", "pss")
            },
            "category_features_mb": _features_mb(tmp / "features"),
        },
    }
    if smoke:
        try:
            detail = run_smoke_overhead(tmp, timeout_s=2 * timeout_s)
            out["sweep_overhead"] = detail["sweep_overhead"]
            out["sweep_overhead_detail"] = {"sweep": "sweeps/smoke.yaml", **detail, "tiny_sweep": tiny}
        except Exception as exc:
            out["sweep_overhead_detail"]["smoke_error"] = repr(exc)
    return out
