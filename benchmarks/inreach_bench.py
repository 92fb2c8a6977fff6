"""InReaCh cost at MVTec-hazelnut shapes: fit and score time, and the association's GEMM efficiency.

`python -m benchmarks.inreach_bench [--tiny]` prints one JSON object. Keys:
- `inreach_fit_s`: one fit on a pool of `pool` images (ratio 0.1 of hazelnut's 391 normals plus the
  injected images: about 430), `grid` x `grid` patches of width `dim` (ViT-B/8: 28 x 28 x 768).
- `inreach_score_s`: scoring `n_test` test images (4 by default, for the CPU: one image costs
  2 * P * M * D FLOPs against a memory of M patches, M up to N * P; on a GPU pass hazelnut's 110).
- `inreach_assoc_efficiency`: achieved FLOP/s of the association (2 * P * P * D per (seed, image)
  pair; K * N - K (K + 1) / 2 pairs) over the FLOP/s of a plain fp32 matmul of the association's block
  shape [B * P, D] @ [D, P] (median of samples taken before, between association blocks throughout,
  and after the fit; the samples' time is not counted as association time). Sampling through the
  fit exposes both to the same load on a shared machine: a reference taken only before or after the
  fit compares a quiet moment with a contended one.
Features are random but structured (a prototype per cell plus low-rank noise) so that channels form
and survive the spread trim, as on real images; isotropic noise would empty the memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

import funad.methods.inreach as inreach_mod
from funad.features import FeatureSet
from funad.methods import create_method
from funad.methods.base import FitContext
from rundir import EXIT_OK

KEYS = ("inreach_fit_s", "inreach_score_s", "inreach_assoc_efficiency")
#: MVTec hazelnut at ratio 0.1 with ViT-B/8 features
FULL_SHAPES: dict[str, int] = {"pool": 430, "grid": 28, "dim": 768, "n_test": 4}
#: a smoke test of the benchmark (`--tiny`, the test suite)
TINY_SHAPES: dict[str, int] = {"pool": 12, "grid": 4, "dim": 16, "n_test": 2}
#: rank and scale of the per-image variation around each cell's prototype
NOISE_RANK, NOISE_SCALE = 8, 0.3


def structured_features(n: int, grid: int, dim: int, seed: int) -> FeatureSet:
    """[n, grid, grid, dim] fp16 patches: a prototype per cell plus noise in a NOISE_RANK-dim subspace."""
    g = torch.Generator().manual_seed(seed)
    p = grid * grid
    protos = torch.randn(p, dim, generator=g)
    basis = torch.linalg.qr(torch.randn(dim, min(NOISE_RANK, dim), generator=g)).Q
    x = np.empty((n, grid, grid, dim), np.float16)
    for i in range(n):  # image by image: one float32 image at a time
        noise = NOISE_SCALE * torch.randn(p, basis.shape[1], generator=g) @ basis.T
        x[i] = (protos + noise).reshape(grid, grid, dim).numpy()
    return FeatureSet([f"b{i}" for i in range(n)], np.zeros((n, dim), np.float16), x, np.zeros(n, np.int8))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _AssociationClock:
    """Wraps the method's `associate` and `cross_nearest` for one fit: association wall time, and a plain
    matmul of the block shape sampled every `every` blocks (its time subtracted from the association's)."""

    def __init__(self, block_rows: int, dim: int, p: int, every: int, device: str) -> None:
        self.a = torch.randn(block_rows, dim, device=device)
        self.b = torch.randn(dim, p, device=device)
        self.c = torch.empty(block_rows, p, device=device)  # preallocated, as the association's block
        self.every, self.device = every, device
        self.calls, self.sample_s, self.assoc_s = 0, 0.0, 0.0
        self.samples: list[float] = []
        self.originals = (inreach_mod.associate, inreach_mod.cross_nearest)

    def sample(self) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        _sync(self.device)
        dt = time.perf_counter() - t0
        self.sample_s += dt
        self.samples.append(2.0 * self.a.shape[0] * self.a.shape[1] * self.b.shape[1] / dt)

    def _cross(self, *args: Any, **kwargs: Any) -> Any:
        out = self.originals[1](*args, **kwargs)
        self.calls += 1
        if self.calls % self.every == 0:
            self.sample()
        return out

    def _associate(self, *args: Any, **kwargs: Any) -> Any:
        _sync(self.device)
        t0, before = time.perf_counter(), self.sample_s
        out = self.originals[0](*args, **kwargs)
        _sync(self.device)
        self.assoc_s += time.perf_counter() - t0 - (self.sample_s - before)
        return out

    def run(self, fn: Callable[[], Any]) -> Any:
        inreach_mod.associate, inreach_mod.cross_nearest = self._associate, self._cross
        try:
            return fn()
        finally:
            inreach_mod.associate, inreach_mod.cross_nearest = self.originals


def run_inreach_bench(
    pool: int = FULL_SHAPES["pool"],
    grid: int = FULL_SHAPES["grid"],
    dim: int = FULL_SHAPES["dim"],
    n_test: int = FULL_SHAPES["n_test"],
    *,
    chunk_images: int = 64,
    samples: int = 10,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Fit + score once; the association is timed inside the fit (no second run), fit_s excludes the
    reference samples taken during it."""
    p = grid * grid
    train = structured_features(pool, grid, dim, seed)
    test = structured_features(n_test, grid, dim, seed + 1)
    method = create_method("inreach", {"chunk_images": chunk_images})
    k = min(method.settings.assoc_depth, pool)  # type: ignore[attr-defined]
    blocks = sum(-(-(pool - 1 - s) // chunk_images) for s in range(k))
    clock = _AssociationClock(
        min(chunk_images, max(pool - 1, 1)) * p, dim, p, max(1, blocks // samples), device
    )
    clock.sample()  # warm-up, not kept
    clock.samples.clear()
    clock.sample()
    ctx = FitContext(seed=seed, device=device)
    _sync(device)
    t0, before = time.perf_counter(), clock.sample_s
    clock.run(lambda: method.fit(train, ctx))
    _sync(device)
    fit_s = time.perf_counter() - t0 - (clock.sample_s - before)
    t0 = time.perf_counter()
    method.score(test, ctx)
    _sync(device)
    score_s = time.perf_counter() - t0
    clock.sample()
    peak = statistics.median(clock.samples)
    pairs = k * pool - k * (k + 1) // 2
    assoc_flops = 2.0 * p * p * dim * pairs
    return {
        "inreach_fit_s": fit_s,
        "inreach_score_s": score_s,
        "inreach_assoc_efficiency": assoc_flops / clock.assoc_s / peak,
        "inreach_shapes": {
            "pool": pool,
            "grid": grid,
            "dim": dim,
            "n_test": n_test,
            "seeds": k,
            "pairs": pairs,
            "chunk_images": chunk_images,
            "device": device,
        },
        "inreach_detail": {
            "assoc_s": clock.assoc_s,
            "assoc_gflops": assoc_flops / clock.assoc_s / 1e9,
            "matmul_gflops_median": peak / 1e9,
            "matmul_gflops_range": [min(clock.samples) / 1e9, max(clock.samples) / 1e9],
            "matmul_samples": len(clock.samples),
            "memory_size": method.diagnostics["memory_size"],
            "channels_kept": method.diagnostics["channels_kept"],
            "trim_frac": method.diagnostics["trim_frac"],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.inreach_bench", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-test", type=int, default=None, help="test images to score")
    args = ap.parse_args(argv)
    shapes = dict(TINY_SHAPES if args.tiny else FULL_SHAPES)
    if args.n_test is not None:
        shapes["n_test"] = args.n_test
    print(json.dumps(run_inreach_bench(**shapes, device=args.device), default=float))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
