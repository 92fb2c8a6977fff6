"""The ranking GEMM's operands: mean-centred rows with their squared norms riding along as extra columns."""

from __future__ import annotations

import torch

from funad.search.precision import search_dtype

#: the ranking GEMM's inner width is padded to a multiple of this (AMX/tensor-core tile friendly)
_ALIGN = 32

#: rows per slab of `ranking_operands` (its fp32 temporaries stay in cache)
_OPERAND_ROWS = 256

#: at most this many rows enter the centring mean of the ranking operands
_CENTRE_ROWS = 4096


def ranking_operands(
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


def centre(x: torch.Tensor) -> torch.Tensor:
    """fp32 mean of evenly strided rows of x (at most `_CENTRE_ROWS`).

    The centre only conditions the keys (distances do not depend on it, and every row and
    column of one search uses the same one); a strided subsample keeps it a fraction of a pass.
    """
    step = max(1, -(-x.shape[0] // _CENTRE_ROWS))
    return x[::step].float().mean(0)
