"""Section 3, `searches`: the bank search and PatchCore's flat search, torch against faiss on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.gpu_check.check import Check, timed
from benchmarks.gpu_check.device import device_label
from benchmarks.gpu_check.training import _first_batch, _query_and_bank
from benchmarks.irmb_bench import make_state

#: how distances of two backends are compared (both are fp32): twice the fp32 key-error model of
#: funad.search.KEY_SLACK, |d_a - d_b| <= 2 (rho max|d| + beta (||q||^2 + max ||b||^2)), raw norms
DISTANCE_RULE = (
    "indices equal; distances within twice funad.search.KEY_SLACK['fp32']: "
    "|d_a - d_b| <= 2 * (rho * max(|d_a|, |d_b|) + beta * (||q||^2 + max_b ||b||^2))"
)


def within_fp32_rounding(
    d_a: torch.Tensor, d_b: torch.Tensor, query: torch.Tensor, bank: torch.Tensor
) -> torch.Tensor:
    """[Q, k] bool: the two distances agree up to fp32 rounding (DISTANCE_RULE); equal infinities agree."""
    from funad.search import KEY_SLACK

    rho, beta = KEY_SLACK["fp32"]
    q_sq = query.float().square().sum(1)
    b_max = bank.float().square().sum(1).max()
    same_inf = torch.isinf(d_a) & torch.isinf(d_b)
    allow = 2.0 * (rho * torch.maximum(d_a.abs(), d_b.abs()) + beta * (q_sq[:, None] + b_max))
    return same_inf | ((d_a - d_b).abs() <= allow)


def compare_results(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    query: torch.Tensor,
    bank: torch.Tensor,
) -> dict[str, Any]:
    """Whether two backends' (distances, indices) are identical under DISTANCE_RULE."""
    (d_a, i_a), (d_b, i_b) = (tuple(t.to(query.device) for t in r) for r in (a, b))
    close = within_fp32_rounding(d_a.float(), d_b.float(), query, bank)
    finite = torch.isfinite(d_a) & torch.isfinite(d_b)
    same = bool(torch.equal(i_a, i_b))
    return {
        "same_indices": same,
        "index_agreement": float((i_a == i_b).float().mean()),
        "distances_within_rounding": bool(close.all()),
        "max_abs_dist_diff": float((d_a - d_b)[finite].abs().max()) if bool(finite.any()) else 0.0,
        "identical": same and bool(close.all()),
    }


Result = tuple[torch.Tensor, torch.Tensor]


def faiss_run(
    run: Callable[[str], Result], dev: torch.device, sync: Callable[[], None], repeats: int
) -> tuple[float, Result] | None:
    """(seconds, result) of run("faiss"), or None without faiss. Its index sits on the data's device
    (a GPU index for CUDA data where faiss sees a GPU): then warmed up and timed like torch; a CPU index
    for CUDA data (a CPU-only faiss on a GPU machine) is timed once, it is the slow side anyway."""
    from funad.search import faiss_available, faiss_gpus

    if not faiss_available():
        return None
    same_device = dev.type == "cpu" or faiss_gpus() > 0
    return timed(lambda: run("faiss"), sync, repeats if same_device else 1, warmup=1 if same_device else 0)


def backend_race(
    run: Callable[[str], Result],
    faiss: tuple[float, Result] | None,
    query: torch.Tensor,
    bank: torch.Tensor,
    sync: Callable[[], None],
    repeats: int,
) -> dict[str, Any]:
    """Seconds of run("torch") against faiss's (from `faiss_run`), their ratio, the faster, and identity."""
    torch_s, res = timed(lambda: run("torch"), sync, repeats)
    out: dict[str, Any] = {"query_rows": query.shape[0], "bank_rows": bank.shape[0], "torch_s": torch_s}
    if faiss is None:
        return {
            **out,
            "faiss_s": None,
            "ratio_faiss_torch": None,
            "faster": "torch",
            "reason": "faiss not installed",
        }
    faiss_s, faiss_res = faiss
    return {
        **out,
        "faiss_s": faiss_s,
        "ratio_faiss_torch": faiss_s / torch_s,
        "faster": "faiss" if faiss_s < torch_s else "torch",
        **compare_results(res, faiss_res, query, bank),
    }


def section_searches(check: Check) -> dict[str, Any]:
    from funad import search
    from funad.methods.coreset import coreset_size
    from funad.methods.patchcore import PatchCoreSettings

    sh, dev = check.shapes, check.device
    cls, pat, labels = check.pool_on_device()
    st = make_state(cls, pat, labels, "fp32")
    st.iteration(_first_batch(st, sh.batch))  # a bank as the data gives it
    query, bank = _query_and_bank(st, sh.batch)
    s = st.method.cfg

    def nearest(backend: str, precision: str = "fp32") -> Result:
        opts = search.SearchOptions(rerank=s.rerank, chunk=s.knn_chunk, precision=precision, backend=backend)
        return search.nearest(query, bank, s.k, opts)

    faiss = faiss_run(nearest, dev, check.sync, sh.repeats)  # faiss ranks fp32 keys at any precision
    bank_search: dict[str, Any] = {"dim": query.shape[1], "k": s.k}
    for precision in ("fp32", "bf16"):
        race = backend_race(lambda b, p=precision: nearest(b, p), faiss, query, bank, check.sync, sh.repeats)
        bank_search[precision] = race
    del st
    # PatchCore's scoring search: the test patches against a coreset of the pool's patches (k = 1)
    _, host_pat, _ = check.host_features()
    rows = host_pat[: sh.pool].reshape(-1, sh.channels)
    ratio = PatchCoreSettings().coreset_ratio
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))
    memory = rows[pick[: coreset_size(rows.shape[0], ratio)]].float().to(dev)
    test = host_pat[sh.pool :].reshape(-1, sh.channels).float().to(dev)

    def knn(backend: str) -> Result:
        return search.knn(test, memory, 1, backend=backend)

    flat = backend_race(
        knn, faiss_run(knn, dev, check.sync, sh.repeats), test, memory, check.sync, sh.repeats
    )
    faiss_gpu = dev.type == "cuda" and search.faiss_gpus() > 0
    return {
        "device": device_label(dev),
        "faiss": {
            "available": search.faiss_available(),
            "gpus": search.faiss_gpus(),
            "index": ("gpu" if faiss_gpu else "cpu") if search.faiss_available() else None,
        },
        "bank_search": bank_search,
        "flat_knn": {"dim": sh.channels, "k": 1, "coreset_ratio": ratio, **flat},
        "auto_should_pick": {
            "funad_nearest_fp32": bank_search["fp32"]["faster"],
            "funad_nearest_bf16": bank_search["bf16"]["faster"],
            "patchcore_knn": flat["faster"],
        },
        "distance_rule": DISTANCE_RULE,
    }
