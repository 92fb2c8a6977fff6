"""Section 4, `sweep`: a 4-cell Ray Tune sweep through `python -m harness.sweep` (two trials per GPU)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.check import Check
from benchmarks.gpu_check.device import device_label

SWEEP_CATEGORIES = ("brick", "grass")
SWEEP_SEEDS = (0, 1)
SWEEP_METHOD = ("patchcore", {"coreset_ratio": 0.1})
SWEEP_NAME = "gpucheck"


def sweep_weights() -> str:
    """The bundled EfficientNet-Lite0 weights where their package is installed, else random weights."""
    from funad.features.backbone import BackboneError, bundled_weights_path

    try:
        bundled_weights_path()
    except BackboneError:
        return "random"
    return "bundled"


def sweep_spec(storage: Path, dev: torch.device, tiny: bool) -> dict[str, Any]:
    """2 synthetic categories x 2 seeds x PatchCore: half a GPU per trial on CUDA (two trials share it),
    one CPU of two on the CPU."""
    from funad.features import BUNDLED_BACKBONE

    gpu = dev.type == "cuda"
    name, settings = SWEEP_METHOD
    size = {"resize": 64, "crop": 64} if tiny else {"resize": 256, "crop": 224}
    return {
        "name": SWEEP_NAME,
        "storage": str(storage),
        "ray": {"address": None, "dashboard": False, **({} if gpu else {"num_cpus": 2})},
        "resources": {"cpu": 1, "gpu": 0.5} if gpu else {"cpu": 1},
        "max_failures": 0,
        "datasets": [{"kind": "synthetic", "categories": list(SWEEP_CATEGORIES)}],
        "backbone": {"name": BUNDLED_BACKBONE, "weights": sweep_weights(), **size},
        "contamination": {"ratios": [0.1], "overlap": False, "shortfall": "cap"},
        "seeds": list(SWEEP_SEEDS),
        "methods": {name: settings},
        "eval_every": 0,
        "report": False,
    }


def max_concurrent(intervals: Sequence[tuple[Any, Any]]) -> int:
    """The most intervals [start, end] that hold one instant in common (0 for none)."""
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], -ev[1])
    )
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


def section_sweep(check: Check) -> dict[str, Any]:
    import yaml

    from benchmarks.sweep_bench import read_results, run_sweep

    dev = check.device
    with tempfile.TemporaryDirectory(prefix="gpu-check-sweep-") as tmp:
        spec = sweep_spec(Path(tmp) / "runs", dev, check.tiny)
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        r = run_sweep(path, fresh=False, timeout_s=max(60.0, check.left_s()))
        run_dir = r["run_dir"] or str(Path(spec["storage"]) / SWEEP_NAME)
        try:
            df = read_results(run_dir)
        except FileNotFoundError as exc:
            raise RuntimeError(
                f"harness.sweep rc={r['rc']}, no results: {' | '.join(r['tail'][-5:])}"
            ) from exc
    intervals = list(zip(df["started_at"], df["finished_at"], strict=True))
    expected = len(SWEEP_CATEGORIES) * len(SWEEP_SEEDS)
    devices = sorted(set(df["device"].astype(str)))
    want = device_label(dev)
    gpu_mb = df["peak_gpu_mb"].dropna()
    return {
        "returncode": r["rc"],
        "driver_s": r["wall_s"],
        "spec": {k: spec[k] for k in ("ray", "resources", "datasets", "backbone", "seeds", "methods")},
        "cells": len(df),
        "expected_cells": expected,
        "statuses": df["status"].tolist(),
        "all_ok": len(df) == expected and bool((df["status"] == "ok").all()),
        "intervals": [[s.isoformat(), e.isoformat()] for s, e in intervals],
        "max_concurrent_cells": max_concurrent(intervals),
        "overlapping": max_concurrent(intervals) >= 2,
        "device_column": devices,
        "expected_device": want,
        "device_ok": devices == [want],
        "peak_gpu_mb": float(gpu_mb.max()) if len(gpu_mb) else None,
        "tail": r["tail"][-5:] if r["rc"] != 0 else [],
    }
