"""The one builder of squared-distance GEMM operands: rows with their squared norms riding along as columns.

A left row [x_i, n_i, 1] times a right row [-2 x_j, 1, n_j] is n_i + n_j - 2 x_i.x_j = ||x_i - x_j||^2, so
ONE matmul gives the full (symmetric) squared distance with no elementwise pass over the big output
block. Both of the project's augmented-GEMM distances are built here (`distance_operands`):
- the certified searches' ranking keys (`ranking_operands`): mean-centred rows in the precision's dtype,
  bf16 norms split hi + lo, the inner width padded for the matmul tiles;
- InReaCh's two-way nearest patches (`funad.search.pairs`): rows as given (its caller centres them on
  the pool mean), in their own dtype, no padding.
The right side always carries the -2, and is always derived from the left (so a pool augmented once can
serve as either side). The flat knn of PatchCore and SoftPatch is not built here (see `funad.search.flat`).
"""

from __future__ import annotations

import torch

from funad.search.precision import search_dtype

#: the ranking GEMM's inner width is padded to a multiple of this (AMX/tensor-core tile friendly)
_ALIGN = 32

#: rows per slab of `distance_operands` (its fp32 temporaries stay in cache)
_OPERAND_ROWS = 256

#: at most this many rows enter the centring mean of the ranking operands
_CENTRE_ROWS = 4096


def extra_columns(split: bool) -> int:
    """Columns after a row's own values: its norm (hi, lo when split), then ones for the other side's."""
    return 4 if split else 2


def distance_operands(
    x: torch.Tensor,
    *,
    mu: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    split: bool = False,
    align: int = 1,
    rows: torch.Tensor | None = None,
    right: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(L, R, n) for the rows of x [N, D] (or x[rows], in that order, without materialising the gather).

    c_i = x_i - mu (x_i without mu), stored in `dtype` (default: x's); n_i = ||c_i||^2 of the STORED
    values, in that dtype (fp32 for a 16-bit dtype), so the key is the distance of the rounded points up to
    the GEMM's own rounding. L_i = [c_i, n_i, 1], R_i = [-2 c_i, 1, n_i]; `split` (for bf16) stores each
    norm as hi + lo bf16 parts, L_i = [c_i, hi, lo, 1, 1], R_i = [-2 c_i, 1, 1, hi, lo] (norm error
    ~2^-16 instead of 2^-9). -2c is exact in every binary dtype. Rows are zero-padded to a width that is
    a multiple of `align`. right=False: R is None (only the left side is needed).
    Built in slabs of `_OPERAND_ROWS` rows, so each input row is read once.
    """
    dt = x.dtype if dtype is None else dtype
    n = x.shape[0] if rows is None else rows.shape[0]
    dim = x.shape[1]
    used = dim + extra_columns(split)
    width = -(-used // align) * align
    left = torch.empty((n, width), dtype=dt, device=x.device)
    rgt = torch.empty((n, width), dtype=dt, device=x.device) if right else None
    norm_dt = torch.float32 if dt.itemsize < 4 else dt
    nrm = torch.empty(n, dtype=norm_dt, device=x.device)
    mu = None if mu is None else mu.to(norm_dt)
    for s in range(0, n, _OPERAND_ROWS):
        e = min(n, s + _OPERAND_ROWS)
        xs = x[s:e] if rows is None else x.index_select(0, rows[s:e])
        xl = left[s:e, :dim]
        if mu is None:
            xl.copy_(xs)
        elif dt == norm_dt:
            torch.sub(xs, mu, out=xl)
        else:
            xl.copy_(torch.sub(xs, mu))
        stored = xl if dt == norm_dt else xl.float()
        nrm[s:e] = torch.linalg.vecdot(stored, stored)
        _norm_columns(left[s:e, dim:used], nrm[s:e], split)
        if rgt is not None:
            right_rows(left[s:e], dim, split, out=rgt[s:e])
    left[:, used:] = 0
    if rgt is not None:
        rgt[:, used:] = 0
    return left, rgt, nrm


def _norm_columns(out: torch.Tensor, nrm: torch.Tensor, split: bool) -> None:
    """The left side's norm columns: [n, 1] or [hi, lo, 1, 1]."""
    if split:
        hi = nrm.to(out.dtype)
        out[:, 0], out[:, 1], out[:, 2:4] = hi, (nrm - hi.float()).to(out.dtype), 1.0
    else:
        out[:, 0], out[:, 1] = nrm, 1.0


def right_rows(left: torch.Tensor, dim: int, split: bool, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """The right side of left rows [N, W] (dim own values each): [-2 c, 1 (, 1), norm parts, 0 ...].

    Values are copied, never recomputed, so the two sides agree bit for bit.
    """
    p = extra_columns(split) // 2
    if out is None:
        out = torch.zeros_like(left)
    torch.mul(left[:, :dim], -2.0, out=out[:, :dim])
    out[:, dim : dim + p] = 1.0
    out[:, dim + p : dim + 2 * p] = left[:, dim : dim + p]
    return out


def ranking_operands(
    x: torch.Tensor, mu: torch.Tensor, precision: str, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The certified searches' ranking GEMM operands (L, R, n) of x centred on mu, in `precision`'s dtype:
    `distance_operands` with hi + lo norms in bf16 and the inner width padded to `_ALIGN`."""
    dt = search_dtype(precision)
    bf16 = dt == torch.bfloat16
    left, right, nrm = distance_operands(x, mu=mu, dtype=dt, split=bf16, align=_ALIGN, rows=rows)
    assert right is not None  # (right=True)
    return left, right, nrm


def centre(x: torch.Tensor) -> torch.Tensor:
    """fp32 mean of evenly strided rows of x (at most `_CENTRE_ROWS`).

    The centre only conditions the keys (distances do not depend on it, and every row and
    column of one search uses the same one); a strided subsample keeps it a fraction of a pass.
    """
    step = max(1, -(-x.shape[0] // _CENTRE_ROWS))
    return x[::step].float().mean(0)
