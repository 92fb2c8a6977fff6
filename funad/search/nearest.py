"""The certified searches: `nearest` (query x bank), `batch_search` (FUN-AD's bank search and pair search
in one symmetric pass) and `mutual_pairs`. Stage 1 in `candidates`, stage 2 in `rerank`."""

from __future__ import annotations

from dataclasses import replace

import torch

from funad.search.blocks import RunningTopK
from funad.search.candidates import faiss_stream, symmetric_candidates, torch_stream
from funad.search.operands import centre, ranking_operands
from funad.search.options import DEFAULT_OPTIONS, NO_EXCLUSION, Exclusion, SearchOptions
from funad.search.precision import KEY_SLACK, key_beta, matmul_precision
from funad.search.rerank import WIDEN, exact_rerank


def nearest(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    options: SearchOptions = DEFAULT_OPTIONS,
    exclude: Exclusion = NO_EXCLUSION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest bank rows of every query row: (sqdist [Q, k] fp32 ascending, index [Q, k] int64).

    Distances are exact fp32 differences (see the package doc); ties are ordered by the smallest
    index. `exclude`: the bank rows each query row may not match (own row, own image).
    Missing neighbours (fewer eligible rows than k) have distance +inf and index -1.
    With `options.certifies` (default in fp32), rows whose candidates cannot be shown to contain the
    k nearest (see `exact_rerank`: near-ties within the key error, duplicates) are searched again
    with `WIDEN` times the candidates, until certain or every bank row is a candidate, so the result
    is exact whenever the keys are within the key-error model `KEY_SLACK`. Off (bf16/tf32 default),
    such a row may get a near-tie neighbour within the key error instead of the exact one.
    """
    if query.ndim != 2 or bank.ndim != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(f"nearest: shapes do not fit: query {tuple(query.shape)}, bank {tuple(bank.shape)}")
    options.check_k(k, "nearest")
    n_q, n_b = query.shape[0], bank.shape[0]
    out_d = torch.full((n_q, k), float("inf"), dtype=torch.float32, device=query.device)
    out_i = torch.full((n_q, k), -1, dtype=torch.int64, device=query.device)
    kq = min(options.rerank, n_b)
    if n_q == 0 or kq == 0:
        return out_d, out_i
    stream = torch_stream if options.backend_on(query.device) == "torch" else faiss_stream
    kk = min(k, kq)
    rho = KEY_SLACK[options.precision][0]
    unsure: list[torch.Tensor] = []
    for s, e, approx, idx, beta in stream(query, bank, kq, options, exclude):
        out_d[s:e, :kk], out_i[s:e, :kk], bad = exact_rerank(
            query[s:e], bank, approx, idx, kk, rho=rho, beta=beta
        )
        if bad is not None:
            unsure.append(torch.nonzero(bad, as_tuple=True)[0] + s)
    if options.certifies and unsure and kq < n_b:
        rows = torch.cat(unsure)
        if rows.numel():
            out_d[rows], out_i[rows] = nearest(
                query[rows], bank, k, options.widened(min(n_b, WIDEN * kq)), exclude.of_rows(rows)
            )
    return out_d, out_i


def batch_search(
    z: torch.Tensor,
    member: torch.Tensor | None,
    extra: torch.Tensor | None,
    k: int,
    options: SearchOptions = DEFAULT_OPTIONS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bank distances AND mutual pairs of the batch rows z [Q, D] from one symmetric GEMM pass.

    The bank is {z[i] : member[i]} plus the rows of `extra` [E, D] (bank rows not in the batch);
    in FUN-AD the batch images that were drawn into the bank are members, so their search against
    the bank and the pair search share the batch x batch GEMM blocks (no recomputation).
    Returns (sqdist [Q, k] fp32 ascending: the k nearest bank rows as `nearest(z, bank, k)` gives
    them, a member's exact self-match included as 0; u [M]; v [M]: the mutual pairs as
    `mutual_pairs(z)` gives them). member=None: no batch row in the bank; extra=None: no extra
    rows. Certification as in `nearest` (`options.certifies`, default in fp32): rows whose candidates
    are not provably complete are searched again by `nearest`. The symmetric pass is the torch GEMM
    path only: options whose backend is not torch on z's device are refused.
    """
    options.check_k(k, "batch_search")
    if options.backend_on(z.device) != "torch":
        raise ValueError(f"batch_search: the symmetric pass runs on torch, not {options.backend!r}")
    rerank, chunk, precision = options.rerank, options.chunk, options.precision
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
        left, right, nrm = ranking_operands(source, centre(source), precision, rows=to_orig)
        tops = symmetric_candidates(left, right, n_m, n_q, rerank, chunk)
    del left, right
    rho = KEY_SLACK[precision][0]
    nrm_orig = torch.empty_like(nrm)
    nrm_orig[to_orig] = nrm
    beta = key_beta(precision, nrm_orig[:n_q], nrm.max())
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n_q, device=dev)

    def exact(
        a: RunningTopK, b: RunningTopK, kk: int, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kk nearest of every batch row among source[cols] (the union of groups a and b)."""
        vals, idx = a.merged(b)
        vals, idx = vals[inv], to_orig[idx[inv]]  # back to the original row and column order
        out = [
            exact_rerank(
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
        if options.certifies and unsure.numel() and rerank < cols.numel():
            # the rows' own column (self) stays excluded, by its position among cols
            pos = torch.full((source.shape[0],), -1, dtype=torch.int64, device=dev)
            pos[cols] = torch.arange(cols.numel(), device=dev)
            d2, i2 = nearest(
                z[unsure],
                source[cols],
                kk,
                options.widened(min(cols.numel(), WIDEN * rerank)),
                Exclusion(own_row=pos[unsure]),
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
    if n_q < 2:
        return dist, empty, empty
    _, nn_idx = exact(tops[0], tops[1], 1, torch.arange(n_q, device=dev))
    return (dist, *mutual(nn_idx[:, 0]))


def mutual(nn_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (u, NN(u)) with NN(NN(u)) = u and u < NN(u); NN = -1 means none."""
    u = torch.arange(nn_.shape[0], device=nn_.device)
    ok = nn_ >= 0
    safe = nn_.clamp(min=0)
    keep = ok & (safe[safe] == u) & (u < safe)
    return u[keep], safe[keep]


def mutual_pairs(
    z: torch.Tensor, options: SearchOptions = DEFAULT_OPTIONS
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
    if options.backend_on(z.device) == "torch":
        _, u, v = batch_search(z, None, None, 1, options)
        return u, v
    _, idx = nearest(z, z, 1, replace(options, rerank=min(options.rerank, n - 1)), Exclusion.self_search(z))
    return mutual(idx[:, 0])
