"""Mutual nearest neighbours between two patch sets, both directions read from ONE distance block.

InReaCh (McIntosh & Albu, "Inter-Realization Channels: Unsupervised Anomaly Detection Beyond One-Class
Classification", ICCV 2023, Sec. 3) links a patch x of a compare image to the patch m of a seed image
that is nearest to x, and keeps the link only when x is in turn m's nearest patch in its image. Both
minima come from the same [B, Pc, Ps] block of squared distances (compare patches x seed patches): two
separate searches could round a near-tie differently and break mutuality.

The block is one fp32 GEMM of augmented operands (`funad.search.operands`), at full precision (no TF32):
compare rows [x, ||x||^2, 1] times seed columns [-2y, 1, ||y||^2]^T give ||x||^2 - 2 x.y + ||y||^2
directly, so no broadcast pass over the block is needed before the two reductions. Centre both sets
(e.g. on the pool mean: `compare_rows(x, centre)`) before augmenting: distances do not change, the
cancellation error of this form shrinks.
Ties go to the lowest index in both directions (torch's min returns the first minimum).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from funad.search.operands import distance_operands, extra_columns, right_rows
from funad.search.precision import matmul_precision

#: columns the augmentation adds to every row
AUGMENT = extra_columns(split=False)


class CrossNearest(NamedTuple):
    """Per compare patch [B, Pc]: squared distance to its nearest seed patch, that patch, and whether the
    compare patch is also that seed patch's nearest patch in its own compare image."""

    dist: torch.Tensor
    index: torch.Tensor
    mutual: torch.Tensor


def compare_rows(x: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """[..., D] -> [..., D + 2] rows [x - centre, ||x - centre||^2, 1] in x's dtype (the compare side of the
    one-GEMM distance: `distance_operands`' left side, unpadded)."""
    lead, d = x.shape[:-1], x.shape[-1]
    left, _, _ = distance_operands(x.reshape(-1, d), mu=centre, right=False)
    return left.view(*lead, d + AUGMENT)


def seed_columns(rows: torch.Tensor) -> torch.Tensor:
    """Seed patches as compare rows [Ps, D + 2] -> the seed side [D + 2, Ps]: [-2y, 1, ||y||^2]^T.

    Built from the compare form (`right_rows`), so a pool is augmented once and any of its images can
    be a seed.
    """
    return right_rows(rows, rows.shape[-1] - AUGMENT, split=False).T.contiguous()


def cross_nearest(
    seed_cols: torch.Tensor, block: torch.Tensor, *, out: torch.Tensor | None = None
) -> CrossNearest:
    """Both nearest-neighbour directions between one seed image and each of B compare images.

    seed_cols [D + 2, Ps] from `seed_columns`; block [B, Pc, D + 2] from `compare_rows` (contiguous);
    out: an optional reusable buffer with at least B * Pc * Ps elements (the only block-sized memory).
    Works in the operands' dtype on their device (fp32 in the method, float64 in the brute-force tests).
    """
    b, pc, w = block.shape
    ps = seed_cols.shape[1]
    if seed_cols.shape[0] != w:
        raise ValueError(
            f"cross_nearest: widths differ: seed {tuple(seed_cols.shape)}, block {tuple(block.shape)}"
        )
    if out is None:
        out = torch.empty(b * pc * ps, dtype=block.dtype, device=block.device)
    d = out.view(-1)[: b * pc * ps].view(b * pc, ps)
    with torch.no_grad(), matmul_precision("fp32"):
        torch.mm(block.reshape(b * pc, w), seed_cols, out=d)
        d3 = d.view(b, pc, ps)
        dist, index = d3.min(dim=2)  # compare patch -> nearest seed patch   [B, Pc]
        back = d3.min(dim=1).indices  # seed patch -> nearest compare patch  [B, Ps]
        mutual = back.gather(1, index) == torch.arange(pc, device=block.device)
    return CrossNearest(dist, index, mutual)


def mutual_nearest(a: torch.Tensor, b: torch.Tensor) -> CrossNearest:
    """One set against another: a [Pa, D] (compare) vs b [Pb, D] (seed); results are [Pa].

    Centred on b's mean first (see the module doc); a convenience over `cross_nearest` for single pairs.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"mutual_nearest: shapes do not fit: {tuple(a.shape)} vs {tuple(b.shape)}")
    centre = b.mean(dim=0)
    r = cross_nearest(seed_columns(compare_rows(b, centre)), compare_rows(a, centre)[None].contiguous())
    return CrossNearest(r.dist[0], r.index[0], r.mutual[0])
