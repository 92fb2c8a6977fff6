"""Stage 2: the candidates' exact fp32 squared distances and order, and whether they are provably complete."""

from __future__ import annotations

import torch

from funad import native

#: (query, candidate) pairs per slab of the exact re-rank: the [pairs, D] temporaries stay in cache
_RERANK_PAIRS = 512

#: each fallback round multiplies the candidate count by this (see `SearchOptions.certify`)
WIDEN = 4


def exact_rerank(
    query: torch.Tensor,
    source: torch.Tensor,
    approx: torch.Tensor,
    idx: torch.Tensor,
    kk: int,
    *,
    rho: float = 0.0,
    beta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact fp32 squared distances (from differences) of the candidates, k smallest.

    query [q, D], candidates idx [q, kq] into source rows, approx [q, kq] (+inf = not a candidate).
    beta [q] (with rho): the approximate keys are within rho*|key| + beta of the exact distance, so
    a candidate whose key exceeds the kk-th key by more than twice that allowance cannot be among
    the kk nearest and is not recomputed. beta=None recomputes every candidate. Ties are ordered
    by the smallest index (index sort, then a stable distance sort); missing neighbours come out
    as (+inf, -1).
    Returns (dist [q, kk], index [q, kk], uncertain [q] bool or None without beta). uncertain: the
    kq candidates are a kq-smallest set of keys, so every row left out has a key >= the largest
    candidate key; a row is certain when that key is past the limit (nothing left out can be among
    the kk nearest) or when some slot is +inf (every eligible row was a candidate).
    """
    idx, order = torch.sort(idx, dim=1)
    approx = approx.gather(1, order)
    keep = ~torch.isinf(approx)
    uncertain = None
    if beta is not None:
        kth = torch.kthvalue(approx, min(kk, approx.shape[1]), dim=1).values  # +inf: < kk candidates
        bound = kth + rho * kth.abs() + 2.0 * beta
        limit = torch.where(bound >= 0, bound / (1.0 - rho), bound / (1.0 + rho))
        last = approx.amax(dim=1)
        uncertain = torch.isfinite(last) & (last <= limit)
        if approx.shape[1] > kk:
            keep &= approx <= limit[:, None]
    rows, cols = torch.nonzero(keep, as_tuple=True)
    exact = torch.full(idx.shape, float("inf"), dtype=torch.float32, device=idx.device)
    flat = exact.view(-1)
    where = rows * idx.shape[1] + cols
    src = idx[rows, cols]
    if native.usable(query, source):
        flat[where] = native.pair_sqdist(query, source, rows, src)
    else:
        for s in range(0, rows.numel(), _RERANK_PAIRS):
            e = min(rows.numel(), s + _RERANK_PAIRS)
            diff = query.index_select(0, rows[s:e]).float()
            diff.sub_(source.index_select(0, src[s:e]))  # fp32 differences (a bf16 row is exact in fp32)
            flat[where[s:e]] = diff.square_().sum(-1)
    exact, pos = torch.sort(exact, dim=1, stable=True)
    dist = exact[:, :kk]
    return dist, torch.where(torch.isinf(dist), -1, idx.gather(1, pos)[:, :kk]), uncertain

