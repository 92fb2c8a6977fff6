"""Section 2, `funad`: FUN-AD's iteration at MVTec-bottle shapes in every precision configuration."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from benchmarks.gpu_check.check import BANK_EVERY, BANK_EVERY_MODES, GPU_MODES, Check, progress, time_call
from benchmarks.gpu_check.device import (
    count_sync_points,
    cuda_sync_count,
    free_device_memory,
    peak_memory_mb,
    reset_peak_memory,
    torch_search_ops,
)
from benchmarks.irmb_bench import (
    State,
    device_matmul_peak,
    ideal_seconds,
    labels_and_pairs,
    make_state,
    precision_agreement,
    time_iterations,
    timed_flops,
)


def bank_share(executed: dict[str, float]) -> float:
    """Share of the fused search's executed FLOPs that is the bank search (the rest: the pair search)."""
    total = executed["bank_search"] + executed["mutual_pairs"]
    return executed["bank_search"] / total if total > 0 else 0.0


def rebuild_cost(timing: dict[str, Any], executed: dict[str, float], pool: int) -> dict[str, float]:
    """An iteration that rebuilds the bank as fixed + pool-proportional seconds: pool scoring and the bank
    search (its share of the fused search by executed FLOPs) grow with the pool, the rest is the batch's."""
    parts = timing["parts_s"]
    per_pool = parts["pool_scoring"] + parts["bank_and_pair_search"] * bank_share(executed)
    return {"fixed_s": max(0.0, timing["iter_s"] - per_pool), "pool_s": per_pool, "ref_pool": pool}


def _query_and_bank(st: State, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch` images' adapted rows and the current bank's rows, [rows, D] each."""
    z = st.train.z_buf
    dim = z.shape[2]
    return z[:batch].reshape(-1, dim), z[st.chosen].reshape(-1, dim)


def _first_batch(st: State, batch: int) -> torch.Tensor:
    return torch.arange(batch, device=st.train.z_buf.device)


def time_mode(
    check: Check,
    cls: torch.Tensor,
    pat: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    peaks: dict[str, float],
) -> tuple[dict[str, Any], State]:
    """One configuration: timed iterations, FLOP/s, efficiency, peak memory, the pool-scaling model."""
    sh, dev = check.shapes, check.device
    precision, extra = GPU_MODES[mode]
    reset_peak_memory(dev)
    st = make_state(cls, pat, labels, precision, **extra)
    r = time_iterations(st, sh.batch, sh.repeats, sync=check.sync)
    fl = timed_flops(
        r, pool=sh.pool, batch=sh.batch, patches=sh.patches, dim=2 * sh.channels, precision=precision
    )
    ex = fl["executed"]
    train_peak = peaks["bf16" if extra.get("train_precision") == "bf16" else "fp32"]
    return {
        "precision": precision,
        "train_precision": extra.get("train_precision", "fp32"),
        "iter_s": r["iter_s"],
        "parts_s": r["parts_s"],
        "achieved_tflops": ex["total"] / r["iter_s"] / 1e12,
        "nominal_tflops": fl["nominal"]["total"] / r["iter_s"] / 1e12,
        "gemm_efficiency": ideal_seconds(ex, peaks[precision], train_peak) / r["iter_s"],
        "peak_memory_mb": peak_memory_mb(dev),
        "bank_images": r["bank_images"],
        "bank_in_batch": r["bank_in_batch"],
        "band_rows": r["band_rows"],
        "cost_model": rebuild_cost(r, ex, sh.pool),
    }, st


def time_bank_reuse(
    check: Check, cls: torch.Tensor, pat: torch.Tensor, labels: torch.Tensor, mode: str, rebuild_s: float
) -> dict[str, Any]:
    """bank_every > 1: the iterations between rebuilds (timed with bank_every 10, after its rebuild), and
    seconds per iteration for each k = (rebuild + (k - 1) reuse) / k. A reuse iteration scores only the
    batch; its bank search (`nearest` against the stale bank, timed alone) grows with the pool."""
    sh = check.shapes
    precision, extra = GPU_MODES[mode]
    assert 2 + sh.repeats <= max(BANK_EVERY), "the timed iterations must fall between two rebuilds"
    st = make_state(cls, pat, labels, precision, bank_every=max(BANK_EVERY), **extra)
    r = time_iterations(st, sh.batch, sh.repeats, warmup=2, sync=check.sync)
    s, bank = st.method.cfg, st.train.bank
    assert bank is not None and bank.gathered is not None
    gathered = bank.gathered
    query = st.train.z_buf[: sh.batch].reshape(-1, gathered.shape[1])
    search_s = time_call(lambda: _bank_search(query, gathered, s), check.sync, repeats=sh.repeats)
    reuse = r["iter_s"]
    return {
        "reuse_iter_s": reuse,
        "reuse_bank_search_s": search_s,
        "reuse_cost_model": {"fixed_s": max(0.0, reuse - search_s), "pool_s": search_s, "ref_pool": sh.pool},
        "iter_s": {str(k): (rebuild_s + (k - 1) * reuse) / k for k in (1, *BANK_EVERY)},
    }


def _bank_search(query: torch.Tensor, bank: torch.Tensor, s: Any) -> Any:
    """FunAD's bank search on an iteration without a rebuild (its `_search`, non-fused branch)."""
    from funad import search
    from funad.methods.funad import search_options

    return search.nearest(query, bank, s.k, search_options(s).bank)


def sync_points(check: Check, st: State) -> dict[str, Any]:
    """Sync points of one more iteration of `st`, by call site, on the path a GPU runs (torch search ops)."""
    idx = _first_batch(st, check.shapes.batch)
    counts: Counter[str] = Counter()
    with torch_search_ops(), count_sync_points(counts):
        st.iteration(idx)
    cuda = cuda_sync_count(check.device, lambda: st.iteration(idx))
    by_api: Counter[str] = Counter()
    for site, n in counts.items():
        by_api[site.split(" ", 1)[1]] += n
    return {
        "counted": sum(counts.values()),
        "by_api": dict(by_api),
        "by_site": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "cuda_syncs": cuda,
    }


def section_funad(check: Check) -> dict[str, Any]:
    sh, dev = check.shapes, check.device
    cls, pat, labels = check.pool_on_device()
    peaks = {
        p: device_matmul_peak(p, dev, sync=check.sync, shapes=sh.peak_shapes)
        for p in ("fp32", "tf32", "bf16")
    }
    progress(f"  matmul peaks {', '.join(f'{k} {v / 1e12:.2f}' for k, v in peaks.items())} TFLOP/s")
    modes: dict[str, Any] = {}
    net_state: dict[str, torch.Tensor] | None = None
    syncs: dict[str, Any] = {}
    for mode in GPU_MODES:
        modes[mode], st = time_mode(check, cls, pat, labels, mode, peaks)
        progress(f"  {mode}: {modes[mode]['iter_s']:.3f} s/iteration")
        if mode == "fp32":
            net_state = {k: v.clone() for k, v in st.train.net.state_dict().items()}
            syncs = sync_points(check, st)
        del st
        free_device_memory(dev)
    assert net_state is not None
    reference = labels_and_pairs(cls, pat, labels, net_state, sh.batch, "fp32")
    agreement = {
        p: precision_agreement(cls, pat, labels, net_state, sh.batch, p, reference=reference)
        for p in ("tf32", "bf16")
    }
    bank_every = {
        mode: time_bank_reuse(check, cls, pat, labels, mode, modes[mode]["iter_s"])
        for mode in BANK_EVERY_MODES
    }
    return {
        "shapes": {
            "pool": sh.pool,
            "batch": sh.batch,
            "patches": sh.patches,
            "channels": sh.channels,
            "dim": 2 * sh.channels,
        },
        "matmul_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "modes": modes,
        "agreement": agreement,
        "bank_every": bank_every,
        "sync_points_per_iteration": syncs,
    }
