"""FUN-AD's pseudo-labelling primitives (IRMB: the iteratively reconstructed memory bank), vectorised.

Every function here is a pure tensor function (no Python loops over patches) so that the training
loop in `funad.methods.funad` stays a short sequence of calls and each step can be tested against
a brute-force loop. See /work/shared/spec/funad-method.md, section 3.

Nearest-neighbour searches (bank search, mutual pairs) run in two stages:
1. an approximate, chunked matmul ranking (the squared distance of mean-centred vectors as ONE
   GEMM, the norms riding along as extra columns, in the configured precision: fp32, tf32 or
   bf16; or faiss) that keeps `rerank` candidates per query;
2. the candidates' squared distances recomputed exactly in fp32 from differences, then ordered by
   (distance, index).
Stage 2 makes an exact self-match exactly 0 (so the eps0 rule cannot be broken by matmul rounding,
which in bf16 is far above eps0 = 0.01), makes ties break by the smallest index whatever the
GEMM's summation order, and makes the torch and faiss backends agree. The result is exact whenever
the true neighbours are among the `rerank` approximate candidates (always in practice for fp32).

In the training loop, `batch_search` does the bank search and the pair search in one pass: the
batch x batch distance matrix is symmetric, so each upper-triangle block is computed once and
serves its rows and its columns, and the batch images that are also bank images share those
blocks with the bank search; only the bank images outside the batch need extra blocks.

On the CPU, the per-block selection (merging each GEMM block's smallest keys into running per-row
and per-column candidate sets) and the exact re-rank run in small compiled kernels
(`funad.native`, built on first use; FUNAD_NATIVE=0 or no C compiler: the torch ops below, same
candidates up to ties, and tested to agree). GPU tensors always take the torch ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from funad import native
from funad.methods.localnet import LocalNet

PRECISIONS = ("fp32", "tf32", "bf16")


# ---- precision --------------------------------------------------------------------------
@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """fp32 matmuls at full precision ("highest") or TF32 ("high") inside the block, restored after.

    bf16 is handled by casting the operands (see `search_dtype`), so it runs fp32 matmuls as "highest".
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def search_dtype(precision: str) -> torch.dtype:
    """Operand dtype of the pool-scoring and search matmuls."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


# ---- pool scoring ------------------------------------------------------------------------
@torch.no_grad()
def score_pool(
    net: LocalNet,
    cls: torch.Tensor,
    patches: torch.Tensor,
    *,
    chunk: int = 16,
    precision: str = "fp32",
    z_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One no-grad pass over images: (image score = max patch probability [N] fp32, z [N, P, D]).

    cls [N, C], patches [N, P, C] (any float dtype, e.g. fp16 on the device). z is written into
    `z_out` when given (a buffer reused across iterations), so the bank and the batch queries are
    gathered from this one pass, never recomputed. In bf16 mode z is stored in bf16.
    """
    n, p, c = patches.shape
    dt = search_dtype(precision)
    if z_out is None:
        z_out = torch.empty((n, p, 2 * c), dtype=dt, device=patches.device)
    scores = torch.empty(n, dtype=torch.float32, device=patches.device)
    auto = (
        torch.autocast(device_type=patches.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    # bf16: the inputs are converted once, straight from the cache dtype (autocast would round
    # an fp32 copy to the same bf16 values)
    dt_in = torch.bfloat16 if precision == "bf16" else torch.float32
    with matmul_precision(precision), auto:
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = net.adapt_split(cls[s:e].to(dt_in), patches[s:e].to(dt_in))
            logits = net.head_logits(z)
            scores[s:e] = torch.sigmoid(logits.float()).amax(dim=1)
            z_out[s:e] = z
    return scores, z_out


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) over all elements; all zeros when max == min (no division by 0)."""
    x = x.float()
    lo, hi = x.min(), x.max()
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def select_candidates(image_scores: torch.Tensor, eta: float) -> torch.Tensor:
    """Candidate normal images: min-max normalised pool score < eta -> bool [N]."""
    return minmax(image_scores) < eta


def draw_bank_images(candidates: torch.Tensor, keep_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """R: floor(keep_ratio*|C|) candidates uniformly without replacement (>= 1; r >= 1 keeps all).

    Returns the sorted image indices [|R|] (int64). Uniform: random keys for every image, non-candidates
    pushed to +inf, the |R| smallest kept. Consumes N uniforms from `generator` whatever |C| is.
    """
    n_cand = int(candidates.sum().item())
    if n_cand == 0:
        raise ValueError("draw_bank_images: no candidate images (eta must be > 0)")
    n_keep = n_cand if keep_ratio >= 1 else max(1, int(keep_ratio * n_cand))
    keys = torch.rand(candidates.shape[0], generator=generator, device=generator.device)
    keys = keys.to(candidates.device).masked_fill(~candidates, float("inf"))
    chosen = torch.topk(keys, n_keep, largest=False, sorted=False).indices
    return torch.sort(chosen).values


# ---- nearest-neighbour search ------------------------------------------------------------
#: the ranking GEMM's inner width is padded to a multiple of this (AMX/tensor-core tile friendly)
_ALIGN = 32


#: rows per slab of `_ranking_operands` (its fp32 temporaries stay in cache)
_OPERAND_ROWS = 256


def _ranking_operands(
    x: torch.Tensor, mu: torch.Tensor, precision: str, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, R, n): n_i = ||x_i - mu||^2 and L_i . R_j = n_i + n_j - 2 (x_i - mu).(x_j - mu).

    The squared norms ride along as extra GEMM columns, so ONE matmul gives the full (symmetric)
    approximate squared distance with no elementwise pass over the big output block. In bf16
    each norm is split into hi + lo bf16 parts (norm error ~2^-16 instead of 2^-9), and the norms
    are those of the bf16-rounded vectors, so the key is the distance of the rounded points up to
    the GEMM's fp32 accumulation and the bf16 output rounding. -2x is exact in both dtypes.
    rows: build the operands of x[rows] (in that order) without materialising the gather.
    Built in slabs of `_OPERAND_ROWS` rows, so each input row is read once.
    """
    dt = search_dtype(precision)
    n = x.shape[0] if rows is None else rows.shape[0]
    dim = x.shape[1]
    n_extra = 4 if dt == torch.bfloat16 else 2
    width = -(-(dim + n_extra) // _ALIGN) * _ALIGN
    left = torch.empty((n, width), dtype=dt, device=x.device)
    right = torch.empty((n, width), dtype=dt, device=x.device)
    nrm = torch.empty(n, dtype=torch.float32, device=x.device)
    mu = mu.float()
    for s in range(0, n, _OPERAND_ROWS):
        e = min(n, s + _OPERAND_ROWS)
        xs = x[s:e] if rows is None else x.index_select(0, rows[s:e])
        xl = left[s:e, :dim]
        if dt == torch.float32:
            torch.sub(xs, mu, out=xl)
            rounded = xl
        else:
            xl.copy_(torch.sub(xs, mu))
            rounded = xl.float()
        nrm[s:e] = torch.linalg.vecdot(rounded, rounded)
        torch.mul(xl, -2.0, out=right[s:e, :dim])
    left[:, dim + n_extra :] = 0
    right[:, dim + n_extra :] = 0
    if dt == torch.bfloat16:
        hi = nrm.to(dt)
        lo = (nrm - hi.float()).to(dt)
        left[:, dim], left[:, dim + 1], left[:, dim + 2], left[:, dim + 3] = hi, lo, 1.0, 1.0
        right[:, dim], right[:, dim + 1], right[:, dim + 2], right[:, dim + 3] = 1.0, 1.0, hi, lo
    else:
        left[:, dim], left[:, dim + 1] = nrm, 1.0
        right[:, dim], right[:, dim + 1] = 1.0, nrm
    return left, right, nrm


#: at most this many rows enter the centring mean of the ranking operands
_CENTRE_ROWS = 4096


def _centre(x: torch.Tensor) -> torch.Tensor:
    """fp32 mean of evenly strided rows of x (at most `_CENTRE_ROWS`).

    The centre only conditions the keys (distances do not depend on it, and every row and
    column of one search uses the same one); a strided subsample keeps it a fraction of a pass.
    """
    step = max(1, -(-x.shape[0] // _CENTRE_ROWS))
    return x[::step].float().mean(0)


#: error allowance of the approximate keys per precision: (rho, beta) in
#: |key - exact| <= rho * |key| + beta * (n_query + n_max), n = squared norms around the bank mean.
#: rho covers the GEMM output rounding (bf16 keys carry 8 significant bits: <= 2^-8 relative; we
#: allow 2^-7); beta the fp32 accumulation over the inner width and the input rounding. Measured
#: on the benchmark shapes (D = 1536, n ~ 900): fp32 |error| <= 1.1e-6 * (n_q + n_b), bf16 errors
#: <= 0.0038 |key|; the allowances are >= 14x and 2x those.
KEY_SLACK = {"fp32": (2.0**-20, 2.0**-16), "tf32": (2.0**-9, 2.0**-13), "bf16": (2.0**-7, 2.0**-12)}


def _key_beta(precision: str, n_query: torch.Tensor, n_max: torch.Tensor | float) -> torch.Tensor:
    """Each query row's absolute key-error allowance, beta * (n_query + n_max) (see KEY_SLACK)."""
    return (n_query + n_max) * KEY_SLACK[precision][1]


#: width of the column (or row) groups of `block_topk`'s first level
_GROUP = 16


def block_topk(d: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest entries of a 2-D block along `dim` (values, indices), unsorted, in two levels.

    A plain top-k over a [2048, 2048] block costs about as much as the bf16 GEMM that made it (and
    four times that along dim 0). Level 1 splits each line into `_GROUP` equal slices and takes the
    element-wise minimum across the slices (group g = entries g, g + n/G, g + 2n/G, ...): one
    streaming, vectorised pass. Level 2 takes the top-k over the k groups with the smallest minima
    only. Exact: any entry outside those groups is >= the k-th group minimum, and the k minima
    themselves are candidates, so the k smallest of the kept groups are a k-smallest set of the
    whole line (ties may pick other members; the callers re-rank exactly).
    """
    n = d.shape[dim]
    k = min(k, n)
    if n % _GROUP or n // _GROUP < 2 * k:
        return torch.topk(d, k, dim=dim, largest=False, sorted=False)
    width = n // _GROUP
    if dim == 1:
        gmin = d.view(d.shape[0], _GROUP, width).amin(1)  # [rows, width]
    else:
        gmin = d.view(_GROUP, width, d.shape[1]).amin(0).T  # [cols, width]
    gsel = torch.topk(gmin, k, dim=1, largest=False, sorted=False).indices  # [lines, k]
    lines = gsel.shape[0]
    members = (gsel[:, :, None] + torch.arange(0, n, width, device=d.device)).reshape(lines, k * _GROUP)
    x = d if dim == 1 else d.T
    cand = x.gather(1, members)
    vals, pos = torch.topk(cand, k, dim=1, largest=False, sorted=False)
    idx = members.gather(1, pos)
    return (vals, idx) if dim == 1 else (vals.T, idx.T)


def _mask_own_column(d: torch.Tensor, own: torch.Tensor) -> None:
    """Set d[r, own[r]] = +inf for the rows with own[r] >= 0 (a row never matches itself)."""
    rows = torch.nonzero(own >= 0, as_tuple=True)[0]
    d[rows, own[rows]] = float("inf")


def _approx_candidates_torch(
    query: torch.Tensor,
    bank: torch.Tensor,
    kq: int,
    *,
    chunk: int,
    precision: str,
    query_index: torch.Tensor | None,
    query_owner: torch.Tensor | None,
    bank_owner: torch.Tensor | None,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Chunked fused-norm GEMM search yielding (start, end, approx sqdist [q, kq], idx [q, kq]).

    Masked entries are +inf; only stage 2 gives exact distances. The last item is each query row's
    absolute key-error allowance (see KEY_SLACK).
    """
    mu = _centre(bank)
    _, right, nb = _ranking_operands(bank, mu, precision)
    nb_max = float(nb.max())
    with matmul_precision(precision):
        for s in range(0, query.shape[0], chunk):
            e = min(query.shape[0], s + chunk)
            left, _, nq = _ranking_operands(query[s:e], mu, precision)
            d = left @ right.T
            if query_index is not None:
                _mask_own_column(d, query_index[s:e])
            if query_owner is not None and bank_owner is not None:
                d.masked_fill_(query_owner[s:e, None] == bank_owner[None, :], float("inf"))
            top = _RunningTopK(e - s, kq, d.device)
            _merge_block(top, 0, e - s, 0, d, kq, dim=1)
            yield s, e, top.vals, top.idx, _key_beta(precision, nq, nb_max)


def _approx_candidates_faiss(
    query: torch.Tensor,
    bank: torch.Tensor,
    kq: int,
    *,
    chunk: int,
    query_index: torch.Tensor | None,
    query_owner: torch.Tensor | None,
    bank_owner: torch.Tensor | None,
    extra: int,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """faiss flat search asking for `extra` more neighbours, then masking self / own-image hits."""
    from funad.knn import knn

    k_ask = min(bank.shape[0], kq + extra)
    # one faiss call (it blocks internally; re-adding the bank per chunk would copy it each time)
    all_vals, all_idx = knn(query.float(), bank.float(), k=k_ask, backend="faiss")
    for s in range(0, query.shape[0], chunk):
        e = min(query.shape[0], s + chunk)
        vals, idx = all_vals[s:e].float().clone(), all_idx[s:e].long()
        bad = idx < 0
        if query_index is not None:
            bad |= idx == query_index[s:e, None]
        if query_owner is not None and bank_owner is not None:
            bad |= bank_owner[idx.clamp(min=0)] == query_owner[s:e, None]
        vals.masked_fill_(bad, float("inf"))
        idx = idx.clamp(min=0)
        vals, pos = torch.topk(vals, min(kq, k_ask), dim=1, largest=False, sorted=False)
        yield s, e, vals, idx.gather(1, pos), None  # faiss keys: no error model, re-rank all


#: (query, candidate) pairs per slab of the exact re-rank: the [pairs, D] temporaries stay in cache
_RERANK_PAIRS = 512


def _exact_rerank(
    query: torch.Tensor,
    source: torch.Tensor,
    approx: torch.Tensor,
    idx: torch.Tensor,
    kk: int,
    *,
    rho: float = 0.0,
    beta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage 2: exact fp32 squared distances (from differences) of the candidates, k smallest.

    query [q, D], candidates idx [q, kq] into source rows, approx [q, kq] (+inf = not a candidate).
    beta [q] (with rho): the approximate keys are within rho*|key| + beta of the exact distance, so
    a candidate whose key exceeds the kk-th key by more than twice that allowance cannot be among
    the kk nearest and is not recomputed (typically 2-3 of 8 candidates remain). beta=None
    recomputes every candidate. Ties are ordered by the smallest index (index sort, then a stable
    distance sort); missing neighbours come out as (+inf, -1).
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


#: each fallback round multiplies the candidate count by this (see `nearest`'s `certify`)
_WIDEN = 4


def _certifies(precision: str, certify: bool | None) -> bool:
    """certify=None: on for fp32 (the exact default), off for the reduced-precision settings."""
    return precision == "fp32" if certify is None else certify


def nearest(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    *,
    rerank: int = 8,
    chunk: int = 2048,
    precision: str = "fp32",
    backend: str = "torch",
    self_search: bool = False,
    query_index: torch.Tensor | None = None,
    query_owner: torch.Tensor | None = None,
    bank_owner: torch.Tensor | None = None,
    certify: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest bank rows of every query row: (sqdist [Q, k] fp32 ascending, index [Q, k] int64).

    Distances are exact fp32 differences (see module doc); ties are ordered by the smallest index.
    self_search: query IS the bank, and row i never matches itself (by index; duplicates still
    match); query_index [Q] generalises it: row i never matches bank row query_index[i] (< 0: no
    exclusion). query_owner/bank_owner: rows with equal owner ids never match (own-image exclusion).
    Missing neighbours (fewer eligible rows than k) have distance +inf and index -1.
    certify (default: on in fp32): rows whose candidates cannot be shown to contain the k nearest
    (see `_exact_rerank`: near-ties within the key error, duplicates) are searched again with
    `_WIDEN` times the candidates, until certain or every bank row is a candidate, so the result
    is exact whatever the data. Off (bf16/tf32 default), such a row may get a near-tie neighbour
    within the key error instead of the exact one.
    """
    if query.ndim != 2 or bank.ndim != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(f"nearest: shapes do not fit: query {tuple(query.shape)}, bank {tuple(bank.shape)}")
    if k < 1 or rerank < k:
        raise ValueError(f"nearest: need 1 <= k <= rerank, got k={k}, rerank={rerank}")
    n_q, n_b = query.shape[0], bank.shape[0]
    out_d = torch.full((n_q, k), float("inf"), dtype=torch.float32, device=query.device)
    out_i = torch.full((n_q, k), -1, dtype=torch.int64, device=query.device)
    kq = min(rerank, n_b)
    if n_q == 0 or kq == 0:
        return out_d, out_i
    if self_search:
        query_index = torch.arange(n_q, device=query.device)
    if backend == "auto":
        backend = "torch"
    if backend == "torch":
        stream = _approx_candidates_torch(
            query,
            bank,
            kq,
            chunk=chunk,
            precision=precision,
            query_index=query_index,
            query_owner=query_owner,
            bank_owner=bank_owner,
        )
    elif backend == "faiss":
        extra = int(query_index is not None)
        if query_owner is not None and bank_owner is not None:
            extra += int(torch.bincount(bank_owner).max().item())
        stream = _approx_candidates_faiss(
            query,
            bank,
            kq,
            chunk=chunk,
            query_index=query_index,
            query_owner=query_owner,
            bank_owner=bank_owner,
            extra=extra,
        )
    else:
        raise ValueError(f"nearest: unknown backend {backend!r}; use auto, torch or faiss")
    kk = min(k, kq)
    rho = KEY_SLACK[precision][0]
    unsure: list[torch.Tensor] = []
    for s, e, approx, idx, beta in stream:
        out_d[s:e, :kk], out_i[s:e, :kk], bad = _exact_rerank(
            query[s:e], bank, approx, idx, kk, rho=rho, beta=beta
        )
        if bad is not None:
            unsure.append(torch.nonzero(bad, as_tuple=True)[0] + s)
    if _certifies(precision, certify) and unsure and kq < n_b:
        rows = torch.cat(unsure)
        if rows.numel():
            out_d[rows], out_i[rows] = nearest(
                query[rows],
                bank,
                k,
                rerank=min(n_b, _WIDEN * kq),
                chunk=chunk,
                precision=precision,
                query_index=None if query_index is None else query_index[rows],
                query_owner=None if query_owner is None else query_owner[rows],
                bank_owner=bank_owner,
                certify=True,
            )
    return out_d, out_i


class _RunningTopK:
    """Per-row k smallest (approx key, column) seen so far, merged block by block.

    A block's candidates (from `block_topk`) are merged only into the rows whose best candidate
    beats their current k-th key.
    """

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.k = k
        self.vals = torch.full((n, k), float("inf"), dtype=torch.float32, device=device)
        self.idx = torch.zeros((n, k), dtype=torch.int64, device=device)

    def improvable(self, s: int, e: int, block_min: torch.Tensor) -> torch.Tensor:
        """Local indices of rows s..e whose block minimum is below their current k-th key."""
        return torch.nonzero(block_min.float() < self.vals[s:e].amax(dim=1), as_tuple=True)[0]

    def add(
        self, rows: torch.Tensor | slice, vals: torch.Tensor, idx: torch.Tensor, offset: int = 0
    ) -> None:
        """Merge candidates vals [n, j] at columns idx + offset into the given rows (indices, or a
        slice: no gather). Only the k picked indices get the offset added, not all j."""
        k = self.k
        merged = torch.cat([self.vals[rows], vals.float()], dim=1)
        best = torch.topk(merged, k, dim=1, largest=False, sorted=False)
        pick = best.indices  # < k: a running entry; >= k: candidate pick - k
        fresh = idx.gather(1, (pick - k).clamp_(min=0)).add_(offset)
        kept = self.idx[rows].gather(1, pick.clamp(max=k - 1))
        self.vals[rows] = best.values
        self.idx[rows] = torch.where(pick >= k, fresh, kept)

    def merged(self, other: _RunningTopK) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest of the union of two running sets (same rows)."""
        v = torch.cat([self.vals, other.vals], dim=1)
        i = torch.cat([self.idx, other.idx], dim=1)
        best = torch.topk(v, self.k, dim=1, largest=False, sorted=False)
        return best.values, i.gather(1, best.indices)


def _blocks(start: int, end: int, chunk: int, group: int) -> list[tuple[int, int, int]]:
    return [(s, min(end, s + chunk), group) for s in range(start, end, chunk)]


def _merge_block(
    top: _RunningTopK, s: int, e: int, offset: int, d: torch.Tensor, kq: int, *, dim: int
) -> None:
    """Merge block d's k smallest along `dim` into the running sets of lines s..e (their indices + offset).

    `block_topk`'s two levels, fused with the merge: level 1 (group minima) runs on every line;
    lines whose smallest group minimum does not beat their current k-th key are skipped; for the
    others the members of their k best groups are merged with the running set by ONE top-k. The
    result is a k-smallest set of (running set + line), as with block_topk followed by `add`.
    """
    if native.usable(d):
        (native.merge_rows if dim == 1 else native.merge_cols)(d, top.vals[s:e], top.idx[s:e], offset)
        return
    n, lines = d.shape[dim], d.shape[1 - dim]
    if n % _GROUP or n // _GROUP < 2 * kq:
        vals, idx = block_topk(d, kq, dim=dim)
        if dim == 0:
            vals, idx = vals.T, idx.T
        sel = top.improvable(s, e, vals.amin(dim=1))
        if sel.numel() == e - s:
            top.add(slice(s, e), vals, idx, offset)
        elif sel.numel():
            top.add(sel + s, vals[sel], idx[sel], offset)
        return
    width = n // _GROUP
    if dim == 1:
        gmin = d.view(lines, _GROUP, width).amin(1)  # [lines, width]
    else:
        gmin = d.view(_GROUP, width, lines).amin(0).T  # [lines, width] (a transposed view)
    sel = top.improvable(s, e, gmin.amin(dim=1))
    if sel.numel() == 0:
        return
    every = sel.numel() == lines
    if not every:
        gmin = gmin.index_select(0, sel)
    gsel = torch.topk(gmin, kq, dim=1, largest=False, sorted=False).indices  # [m, kq]
    members = (gsel[:, :, None] + torch.arange(0, n, width, device=d.device)).reshape(-1, kq * _GROUP)
    if every and dim == 1:
        cand = d.gather(1, members)
    else:  # flat positions in the contiguous block d of (line, member)
        line = torch.arange(lines, device=d.device) if every else sel
        cand = torch.take(d, line[:, None] * n + members if dim == 1 else members * lines + line[:, None])
    top.add(slice(s, e) if every else sel + s, cand, members, offset)


def _symmetric_candidates(
    left: torch.Tensor,
    right: torch.Tensor,
    n_member: int,
    n_batch: int,
    kq: int,
    chunk: int,
) -> list[_RunningTopK]:
    """Approximate top-kq of the batch rows against three column groups, self excluded.

    Rows 0..n_member are batch rows that are also bank rows (group 0), n_member..n_batch the other
    batch rows (group 1), n_batch.. extra bank rows (group 2). The batch x batch key matrix is
    symmetric, so each upper-triangle block is computed ONCE and serves its rows (top-k along
    dim 1) and its columns (top-k along dim 0): half the FLOPs of a row-by-row search. Extra bank
    blocks serve the batch rows only. Returns one running top-k per column group.
    """
    dev = left.device
    tops = [_RunningTopK(n_batch, kq, dev) for _ in range(3)]
    rows = _blocks(0, n_member, chunk, 0) + _blocks(n_member, n_batch, chunk, 1)
    extra = _blocks(n_batch, left.shape[0], chunk, 2)
    # one block buffer for the whole pass (no 8 MB allocation per block)
    buf = torch.empty(min(chunk, left.shape[0]) ** 2, dtype=left.dtype, device=dev)
    for a, (s, e, g) in enumerate(rows):
        for s2, e2, g2 in rows[a:] + extra:
            d = torch.mm(left[s:e], right[s2:e2].T, out=buf[: (e - s) * (e2 - s2)].view(e - s, e2 - s2))
            if s2 == s:
                d.diagonal().fill_(float("inf"))
            _merge_block(tops[g2], s, e, s2, d, kq, dim=1)
            if g2 != 2 and s2 != s:
                _merge_block(tops[g], s2, e2, s, d, kq, dim=0)
    return tops


def batch_search(
    z: torch.Tensor,
    member: torch.Tensor | None,
    extra: torch.Tensor | None,
    k: int,
    *,
    rerank: int = 8,
    chunk: int = 2048,
    precision: str = "fp32",
    pairs: bool = True,
    certify: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bank distances AND mutual pairs of the batch rows z [Q, D] from one symmetric GEMM pass.

    The bank is {z[i] : member[i]} plus the rows of `extra` [E, D] (bank rows not in the batch);
    in FUN-AD the batch images that were drawn into the bank are members, so their search against
    the bank and the pair search share the batch x batch GEMM blocks (no recomputation).
    Returns (sqdist [Q, k] fp32 ascending: the k nearest bank rows as `nearest(z, bank, k)` gives
    them, a member's exact self-match included as 0; u [M]; v [M]: the mutual pairs as
    `mutual_pairs(z)` gives them). member=None: no batch row in the bank; extra=None: no extra
    rows; pairs=False skips the pair re-rank (u, v empty). certify: as in `nearest` (default on in
    fp32): rows whose candidates are not provably complete are searched again by `nearest`.
    """
    if k < 1 or rerank < k:
        raise ValueError(f"batch_search: need 1 <= k <= rerank, got k={k}, rerank={rerank}")
    n_q, dev = z.shape[0], z.device
    empty = torch.empty(0, dtype=torch.int64, device=dev)
    n_e = 0 if extra is None else extra.shape[0]
    member = torch.zeros(n_q, dtype=torch.bool, device=dev) if member is None else member.bool()
    n_m = int(member.sum().item())
    dist = torch.full((n_q, k), float("inf"), dtype=torch.float32, device=dev)
    if n_q == 0:
        return dist, empty, empty
    # members first (a stable permutation), so that every block is in one column group
    perm = torch.argsort((~member).to(torch.int8), stable=True)
    source = z if extra is None else torch.cat([z, extra.to(z.dtype)])
    to_orig = perm if extra is None else torch.cat([perm, torch.arange(n_q, n_q + n_e, device=dev)])
    with matmul_precision(precision):
        left, right, nrm = _ranking_operands(source, _centre(source), precision, rows=to_orig)
        tops = _symmetric_candidates(left, right, n_m, n_q, rerank, chunk)
    del left, right
    rho = KEY_SLACK[precision][0]
    nrm_orig = torch.empty_like(nrm)
    nrm_orig[to_orig] = nrm
    beta = _key_beta(precision, nrm_orig[:n_q], nrm.max())
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n_q, device=dev)

    def exact(
        a: _RunningTopK, b: _RunningTopK, kk: int, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kk nearest of every batch row among source[cols] (the union of groups a and b)."""
        vals, idx = a.merged(b)
        vals, idx = vals[inv], to_orig[idx[inv]]  # back to the original row and column order
        out = [
            _exact_rerank(
                z[s : s + chunk],
                source,
                vals[s : s + chunk],
                idx[s : s + chunk],
                kk,
                rho=rho,
                beta=beta[s : s + chunk],
            )
            for s in range(0, n_q, chunk)
        ]
        d, i = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
        unsure = torch.nonzero(torch.cat([o[2] for o in out]), as_tuple=True)[0]
        if _certifies(precision, certify) and unsure.numel() and rerank < cols.numel():
            # the rows' own column (self) stays excluded, by its position among cols
            pos = torch.full((source.shape[0],), -1, dtype=torch.int64, device=dev)
            pos[cols] = torch.arange(cols.numel(), device=dev)
            d2, i2 = nearest(
                z[unsure],
                source[cols],
                kk,
                rerank=min(cols.numel(), _WIDEN * rerank),
                chunk=chunk,
                precision=precision,
                query_index=pos[unsure],
                certify=True,
            )
            d[unsure] = d2
            i[unsure] = torch.where(i2 >= 0, cols[i2.clamp(min=0)], -1)
        return d, i

    if n_m + n_e > 0:
        members = torch.nonzero(member, as_tuple=True)[0]
        bank_cols = torch.cat([members, torch.arange(n_q, n_q + n_e, device=dev)])
        bank_d, _ = exact(tops[0], tops[2], min(k, rerank), bank_cols)
        # a member's exact self-match (distance 0) was excluded from the search: put it back
        with_self = torch.cat([torch.zeros_like(bank_d[:, :1]), bank_d], dim=1)[:, : bank_d.shape[1]]
        dist[:, : bank_d.shape[1]] = torch.where(member[:, None], with_self, bank_d)
    if not pairs or n_q < 2:
        return dist, empty, empty
    _, nn_idx = exact(tops[0], tops[1], 1, torch.arange(n_q, device=dev))
    return (dist, *_mutual(nn_idx[:, 0]))


def _mutual(nn_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (u, NN(u)) with NN(NN(u)) = u and u < NN(u); NN = -1 means none."""
    u = torch.arange(nn_.shape[0], device=nn_.device)
    ok = nn_ >= 0
    safe = nn_.clamp(min=0)
    keep = ok & (safe[safe] == u) & (u < safe)
    return u[keep], safe[keep]


# ---- distances -> pseudo-labels ------------------------------------------------------------
def skip_self_distance(sqdist: torch.Tensor, eps0: float) -> torch.Tensor:
    """Spec step 4: zero distances < eps0, then d = the first nonzero of δ1..δk (0 if none).

    For k = 2 this is `d = δ1 if δ1 > 0 else δ2`: an exact self-match (the batch image is in the
    bank) is skipped. Missing neighbours (+inf, bank smaller than k) count as 0.
    """
    d = torch.where(torch.isinf(sqdist) | (sqdist < eps0), 0.0, sqdist)
    nonzero = d > 0
    first = nonzero.to(torch.int8).argmax(dim=1, keepdim=True)  # first True (0 if none)
    return torch.where(nonzero.any(dim=1), d.gather(1, first)[:, 0], 0.0)


def own_excluded_distance(sqdist: torch.Tensor) -> torch.Tensor:
    """exclude_own_image: d = δ1 over the other images' patches (no eps0 rule; +inf -> 0)."""
    d1 = sqdist[:, 0]
    return torch.where(torch.isinf(d1), 0.0, d1)


def pseudo_labels(
    d: torch.Tensor, tau_n: float, tau_c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch min-max d -> d̃; labels y = d̃ > tau_n (bool); uncertain band tau_n < d̃ < tau_c (bool)."""
    dn = minmax(d)
    y = dn > tau_n
    band = y & (dn < tau_c)
    return y, band, dn


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Per-channel sigma [D]: max over grid positions of the unbiased across-batch std.

    x: raw descriptors [B, P, D] of the batch. With a single image (B = 1) the unbiased std is
    undefined; we return zeros (no noise).
    """
    if x.shape[0] < 2:
        return torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
    x = x.float()
    # two-pass (mean, then squared deviations): 3-4x faster than torch.std's reduction over dim 0
    dev = x - x.mean(dim=0)
    return dev.square_().sum(dim=0).div_(x.shape[0] - 1).sqrt_().amax(dim=0)


def add_band_noise(
    x: torch.Tensor,
    band: torch.Tensor,
    sigma: torch.Tensor | float,
    generator: torch.Generator,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """x with N(0, sigma_c^2) noise added to the band rows only (other rows bit-identical).

    x [P, D] raw descriptors, band [P] bool, sigma [D] or a scalar. A new tensor unless `inplace`
    (the training loop noises its own freshly built input buffer, saving a copy).
    """
    out = x if inplace else x.clone()
    rows = torch.nonzero(band, as_tuple=True)[0]
    if rows.numel() > 0:
        noise = torch.randn((rows.numel(), x.shape[1]), generator=generator, device=generator.device)
        out[rows] += noise.to(x.device, x.dtype) * sigma
    return out


def mutual_pairs(
    z: torch.Tensor, *, rerank: int = 8, chunk: int = 2048, precision: str = "fp32", backend: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutually nearest pairs among the rows of z [P, D]: (u [M], v [M]) with u < v.

    NN(u) = the nearest OTHER row (ties -> smallest index); keep (u, NN(u)) when NN(NN(u)) = u, once.
    torch: the symmetric block search of `batch_search` (each block once, never a P x P matrix);
    faiss: a self-search through `nearest`. Then the vectorised mutual check.
    """
    n = z.shape[0]
    empty = torch.empty(0, dtype=torch.int64, device=z.device)
    if n < 2:
        return empty, empty
    if backend in ("torch", "auto"):
        _, u, v = batch_search(z, None, None, 1, rerank=rerank, chunk=chunk, precision=precision)
        return u, v
    _, idx = nearest(
        z,
        z,
        1,
        rerank=min(rerank, n - 1),
        chunk=chunk,
        precision=precision,
        backend=backend,
        self_search=True,
    )
    return _mutual(idx[:, 0])


# ---- losses -------------------------------------------------------------------------------
def balanced_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-mean_{y=1} log p - mean_{y=0} log(1-p), p = sigmoid(logits); an empty class term is dropped.

    Written with log-sigmoid of the logits: the same value as log(Sigmoid(.)) without saturating.
    """
    pos = y.bool()
    neg = ~pos
    lp = F.logsigmoid(logits)
    ln = F.logsigmoid(-logits)
    n_pos = pos.sum().clamp(min=1)
    n_neg = neg.sum().clamp(min=1)
    return -(lp * pos).sum() / n_pos - (ln * neg).sum() / n_neg


def mutual_smoothness(p_u: torch.Tensor, p_v: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L_MS = 0.5 * mean |p_u - p_v| ("l1") or 0.5 * mean (p_u - p_v)^2 ("l2"); 0 without pairs."""
    if p_u.numel() == 0:
        return p_u.new_zeros(())
    diff = p_u - p_v
    if kind == "l1":
        return 0.5 * diff.abs().mean()
    if kind == "l2":
        return 0.5 * diff.pow(2).mean()
    raise ValueError(f"mutual_smoothness: unknown kind {kind!r}; use l1 or l2")
