"""GPU benchmark of one FUN-AD category at full shapes, with a GPU-hours estimate for sweeps/full.yaml.

`python -m benchmarks.gpu_bench --device cuda` (about 5 minutes on one GPU): one MVTec-sized category
(pool 230 images, bank ~ half the candidates ~ 90k vectors... set by the data, batch 32 images,
D = 1536, 784 patches), a few timed iterations of the real FunAD iteration -> iterations/s, achieved
TFLOP/s (executed FLOPs from the shapes, see irmb_bench.flop_counts), peak device memory, and
  GPU-hours(full.yaml) = cells x epochs x floor(pool / 32) / (iterations/s) / 3600
with cells = (15 MVTec + 12 VisA categories) x 5 ratios x 3 seeds and 1500 epochs (FunAD only).
`--device cpu --tiny` runs the same code at tiny shapes so that the script itself is tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.irmb_bench import flop_counts, make_state, synthetic_features
from funad.search import PRECISIONS
from funad.search.operands import ranking_operands

FULL_SWEEP = {"categories": 15 + 12, "ratios": 5, "seeds": 3, "epochs": 1500, "batch": 32}


def gpu_hours_full(iter_s: float, pool: int, sweep: dict[str, int] = FULL_SWEEP) -> dict[str, float]:
    """GPU-hours for the FunAD cells of sweeps/full.yaml if every category had this pool size."""
    iters_per_epoch = pool // sweep["batch"]
    cells = sweep["categories"] * sweep["ratios"] * sweep["seeds"]
    iters = cells * sweep["epochs"] * iters_per_epoch
    return {"cells": cells, "iterations": iters, "gpu_hours": iters * iter_s / 3600.0}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_gpu_bench(
    *,
    device: str = "cuda",
    pool: int = 230,
    batch: int = 32,
    patches: int = 784,
    channels: int = 768,
    iterations: int = 5,
    precision: str = "tf32",
    budget_s: float = 240.0,
) -> dict[str, Any]:
    """Time `iterations` full FunAD iterations on `device` (after one warm-up); stops at budget_s."""
    dev = torch.device(device)
    cls, pat, labels = synthetic_features(pool, patches, channels)
    cls, pat, labels = cls.to(dev), pat.to(dev), labels.to(dev)
    st = make_state(cls, pat, labels, precision)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    perm_gen = torch.Generator().manual_seed(0)
    times, overlaps, band = [], [], []
    t_start = time.perf_counter()
    for i in range(iterations + 1):
        idx = torch.randperm(pool, generator=perm_gen)[:batch].to(dev)
        _sync(dev)
        t0 = time.perf_counter()
        out = st.iteration(idx)
        _sync(dev)
        if i > 0:
            times.append(time.perf_counter() - t0)
            chosen = st.chosen
            overlaps.append((int(chosen.numel()), int(torch.isin(chosen, idx).sum())))
            band.append(float(out["band_frac"]) * batch * patches)
        if time.perf_counter() - t_start > budget_s and times:
            break
    iter_s = statistics.median(times)
    dim = 2 * channels
    width = ranking_operands(torch.zeros(1, dim), torch.zeros(dim), precision)[0].shape[1]
    bank_images = round(statistics.median(o[0] for o in overlaps))
    fl = flop_counts(
        pool=pool,
        batch=batch,
        bank_images=bank_images,
        bank_in_batch=round(statistics.median(o[1] for o in overlaps)),
        patches=patches,
        dim=dim,
        width=width,
        band_rows=statistics.median(band),
    )
    peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": precision,
        "shapes": {
            "pool": pool,
            "batch": batch,
            "patches": patches,
            "dim": dim,
            "bank_rows": bank_images * patches,
        },
        "timed_iterations": len(times),
        "iter_s": iter_s,
        "iterations_per_s": 1.0 / iter_s,
        "achieved_tflops": fl["executed"]["total"] / iter_s / 1e12,
        "nominal_tflops": fl["nominal"]["total"] / iter_s / 1e12,
        "peak_memory_mb": peak_mb,
        "full_yaml_estimate": gpu_hours_full(iter_s, pool),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="tf32", choices=PRECISIONS)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (tests the script on a CPU)")
    args = p.parse_args(argv)
    shapes = {"pool": 12, "batch": 4, "patches": 16, "channels": 32} if args.tiny else {}
    res = run_gpu_bench(device=args.device, precision=args.precision, iterations=args.iterations, **shapes)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
