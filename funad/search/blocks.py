"""Stage 1's selection: the k smallest keys of each GEMM block, merged into running per-line candidate sets.

On the CPU the merge runs in the compiled kernels of `funad.native` where they are usable; otherwise
(FUNAD_NATIVE=0, no C compiler, GPU tensors) in the torch ops below: the same candidates up to ties.
"""

from __future__ import annotations

import torch

from funad import native

#: width of the column (or row) groups of `block_topk`'s first level
_GROUP = 16


def block_topk(d: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest entries of a 2-D block along `dim` (values, indices), unsorted, in two levels.

    A plain top-k over a large block costs about as much as the GEMM that made it (more along
    dim 0). Level 1 splits each line into `_GROUP` equal slices and takes the
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


class RunningTopK:
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

    def add(self, rows: torch.Tensor | slice, vals: torch.Tensor, idx: torch.Tensor, offset: int = 0) -> None:
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

    def merged(self, other: RunningTopK) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest of the union of two running sets (same rows)."""
        v = torch.cat([self.vals, other.vals], dim=1)
        i = torch.cat([self.idx, other.idx], dim=1)
        best = torch.topk(v, self.k, dim=1, largest=False, sorted=False)
        return best.values, i.gather(1, best.indices)


def merge_block(top: RunningTopK, s: int, e: int, offset: int, d: torch.Tensor, kq: int, *, dim: int) -> None:
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
