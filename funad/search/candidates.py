"""Stage 1: approximate candidates (the `rerank` smallest keys per query row), streamed or all at once.

Three producers: a chunked query x bank GEMM (`torch_stream`), a faiss flat search (`faiss_stream`),
and the symmetric batch x batch pass of `batch_search` (`symmetric_candidates`). Keys are approximate
(see `funad.search.precision.KEY_SLACK`); only stage 2 (`funad.search.rerank`) gives distances.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from funad.search.blocks import RunningTopK, merge_block
from funad.search.flat import knn
from funad.search.operands import centre, ranking_operands
from funad.search.options import Exclusion, SearchOptions
from funad.search.precision import key_beta, matmul_precision

#: one chunk of candidates: (start, end, approx keys [q, kq], bank indices [q, kq], key allowance [q] or None)
Chunk = tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None]


def _mask_own_column(d: torch.Tensor, own: torch.Tensor) -> None:
    """Set d[r, own[r]] = +inf for the rows with own[r] >= 0 (a row never matches itself).

    A scatter over every row (rows without an own column write their column 0 back) instead of
    selecting the rows first: no data-dependent shape, so no host sync per chunk on a GPU."""
    if d.shape[1] == 0:
        return
    col = own.clamp(min=0).unsqueeze(1)
    keep = d.gather(1, col)
    d.scatter_(1, col, torch.where((own >= 0).unsqueeze(1), torch.full_like(keep, float("inf")), keep))


def torch_stream(
    query: torch.Tensor, bank: torch.Tensor, kq: int, options: SearchOptions, exclude: Exclusion
) -> Iterator[Chunk]:
    """Chunked fused-norm GEMM search yielding (start, end, approx sqdist [q, kq], idx [q, kq], beta).

    Excluded entries are +inf. The last item is each query row's absolute key-error allowance
    (see KEY_SLACK).
    """
    precision, chunk = options.precision, options.chunk
    mu = centre(bank)
    _, right, nb = ranking_operands(bank, mu, precision)
    nb_max = float(nb.max())
    with matmul_precision(precision):
        for s in range(0, query.shape[0], chunk):
            e = min(query.shape[0], s + chunk)
            left, _, nq = ranking_operands(query[s:e], mu, precision)
            d = left @ right.T
            if exclude.own_row is not None:
                _mask_own_column(d, exclude.own_row[s:e])
            if exclude.by_owner:
                d.masked_fill_(exclude.query_owner[s:e, None] == exclude.bank_owner[None, :], float("inf"))
            top = RunningTopK(e - s, kq, d.device)
            merge_block(top, 0, e - s, 0, d, kq, dim=1)
            yield s, e, top.vals, top.idx, key_beta(precision, nq, nb_max)


def faiss_stream(
    query: torch.Tensor, bank: torch.Tensor, kq: int, options: SearchOptions, exclude: Exclusion
) -> Iterator[Chunk]:
    """faiss flat search asking for as many more neighbours as the exclusion can remove, then masking
    the excluded hits (self: one; own image: the largest image)."""
    extra = int(exclude.own_row is not None)
    if exclude.by_owner:
        extra += int(torch.bincount(exclude.bank_owner).max().item())
    k_ask = min(bank.shape[0], kq + extra)
    # one faiss call (it blocks internally; re-adding the bank per chunk would copy it each time)
    all_vals, all_idx = knn(query.float(), bank.float(), k=k_ask, backend="faiss")
    for s in range(0, query.shape[0], options.chunk):
        e = min(query.shape[0], s + options.chunk)
        vals, idx = all_vals[s:e].float().clone(), all_idx[s:e].long()
        bad = idx < 0
        if exclude.own_row is not None:
            bad |= idx == exclude.own_row[s:e, None]
        if exclude.by_owner:
            bad |= exclude.bank_owner[idx.clamp(min=0)] == exclude.query_owner[s:e, None]
        vals.masked_fill_(bad, float("inf"))
        idx = idx.clamp(min=0)
        vals, pos = torch.topk(vals, min(kq, k_ask), dim=1, largest=False, sorted=False)
        yield s, e, vals, idx.gather(1, pos), None  # faiss keys: no error model, re-rank all


def _blocks(start: int, end: int, chunk: int, group: int) -> list[tuple[int, int, int]]:
    return [(s, min(end, s + chunk), group) for s in range(start, end, chunk)]


def symmetric_candidates(
    left: torch.Tensor,
    right: torch.Tensor,
    n_member: int,
    n_batch: int,
    kq: int,
    chunk: int,
) -> list[RunningTopK]:
    """Approximate top-kq of the batch rows against three column groups, self excluded.

    Rows 0..n_member are batch rows that are also bank rows (group 0), n_member..n_batch the other
    batch rows (group 1), n_batch.. extra bank rows (group 2). The batch x batch key matrix is
    symmetric, so each upper-triangle block is computed ONCE and serves its rows (top-k along
    dim 1) and its columns (top-k along dim 0): half the FLOPs of a row-by-row search. Extra bank
    blocks serve the batch rows only. Returns one running top-k per column group.
    """
    dev = left.device
    tops = [RunningTopK(n_batch, kq, dev) for _ in range(3)]
    rows = _blocks(0, n_member, chunk, 0) + _blocks(n_member, n_batch, chunk, 1)
    extra = _blocks(n_batch, left.shape[0], chunk, 2)
    # one block buffer for the whole pass (no allocation per block)
    buf = torch.empty(min(chunk, left.shape[0]) ** 2, dtype=left.dtype, device=dev)
    for a, (s, e, g) in enumerate(rows):
        for s2, e2, g2 in rows[a:] + extra:
            d = torch.mm(left[s:e], right[s2:e2].T, out=buf[: (e - s) * (e2 - s2)].view(e - s, e2 - s2))
            if s2 == s:
                d.diagonal().fill_(float("inf"))
            merge_block(tops[g2], s, e, s2, d, kq, dim=1)
            if g2 != 2 and s2 != s:
                merge_block(tops[g], s2, e2, s, d, kq, dim=0)
    return tops
