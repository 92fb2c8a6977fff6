"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Roth et al. (CVPR 2022) subsample the patch memory bank with the greedy k-center rule: start from
one point, then repeatedly add the point farthest from everything selected so far. This minimises
(approximately) the coverage radius, so rare but real patch types survive the subsampling while
dense regions are thinned out. The "approximate" variant runs the greedy on a Johnson-Lindenstrauss
random projection of the features, which preserves distances up to a small factor and makes each
step O(N * d_proj) instead of O(N * C).

We keep a running vector of every point's distance to its nearest selected point and update it
with one matrix-vector product per pick, so a step costs O(N * d) and the loop is vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: torch CPU threads used inside the greedy loop. Each step is a handful of tiny ops, and every
#: multi-threaded op is a fork/join barrier: on a shared, oversubscribed CPU (parallel trials) a
#: barrier waits for a descheduled partner thread, so one thread is many times faster there (see
#: benchmarks/RESULTS.md). None = leave torch's setting alone.
GREEDY_CPU_THREADS: int | None = 1

#: offset between the projection's seed and the first-point seed, so the two draws are independent
_FIRST_POINT_SEED_OFFSET = 7919
#: random starting points of the released approximate greedy (`start_points`): its first pick is the point
#: farthest on average from these
RELEASED_START_POINTS = 10


def random_projection_matrix(
    in_dim: int,
    out_dim: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Seeded Gaussian JL matrix [in_dim, out_dim] with entries N(0, 1/out_dim).

    The 1/out_dim variance keeps squared norms unbiased, so projected distances stay on the
    original scale. Drawn on the CPU generator so the same seed gives the same matrix on any device.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    mat = torch.randn(in_dim, out_dim, generator=gen, dtype=torch.float64) / math.sqrt(out_dim)
    return mat.to(device=device, dtype=dtype)


def project(features: torch.Tensor, projection: int, seed: int) -> torch.Tensor:
    """Features projected to `projection` dims, or unchanged when 0 or not smaller than C."""
    c = features.shape[1]
    if projection <= 0 or projection >= c:
        return features
    mat = random_projection_matrix(c, projection, seed, features.device, features.dtype)
    return features @ mat


@contextmanager
def _cpu_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """Temporarily cap torch's intra-op CPU threads (no-op on accelerators or when n is None)."""
    if n is None or device.type != "cpu" or torch.get_num_threads() <= n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def released_start_points(n: int, count: int, seed: int) -> torch.Tensor:
    """The released greedy's starting points: min(count, n) distinct indices below n, seeded (the
    released code draws them from numpy's global state; ours from the seed, like the first point)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + _FIRST_POINT_SEED_OFFSET)
    return torch.randperm(n, generator=gen)[: min(count, n)]


def coreset_size(n: int, ratio: float, truncate: bool = False) -> int:
    """Number of points the coreset keeps: round(ratio * n) (`truncate`: int(ratio * n), as the released
    code does), at least 1 and at most n."""
    if n <= 0:
        raise ValueError("coreset of an empty set")
    size = int(ratio * n) if truncate else round(ratio * n)
    return int(min(n, max(1, size)))


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    *,
    projection: int = 128,
    seed: int = 0,
    start_points: int = 0,
    pickable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices [n_select] (int64, selection order) chosen by greedy k-center selection.

    features:   [N, C] float tensor (float32 or float64; computed in that dtype on its device).
    projection: JL projection width for the approximate greedy; 0 (or >= C) = exact greedy on the
                original features.
    seed:       seeds the projection and the random first point (or the starting points).
    start_points: 0 = the first pick is a random point; s > 0 = the released approximate greedy: every
                point starts at its mean Euclidean distance to s random points (drawn without
                replacement, not picked themselves), so the first pick is the farthest from them on average.
    pickable:   [N] bool or None: a point marked False has its distance to every pick set to zero (the
                released SoftPatch multiplies it by a 0/1 weight), so it is picked only first or when
                every remaining distance is zero.
    Points already selected are never re-selected, even when duplicates make every remaining
    distance zero (the lowest unselected index is then taken, as argmax returns the first maximum).
    """
    if features.ndim != 2:
        raise ValueError(f"greedy_coreset: features must be [N, C], got {tuple(features.shape)}")
    n = features.shape[0]
    if not 1 <= n_select <= n:
        raise ValueError(f"greedy_coreset: n_select={n_select} outside [1, {n}]")
    with torch.no_grad(), _cpu_threads(GREEDY_CPU_THREADS, features.device):
        x = project(features, projection, seed)
        if start_points <= 0:
            gen = torch.Generator(device="cpu").manual_seed(int(seed) + _FIRST_POINT_SEED_OFFSET)
            first = int(torch.randint(n, (1,), generator=gen).item())
        sq = (x * x).sum(1)
        # on a GPU the picks stay on the device: no host sync per pick (one per fit, at the end)
        on_device = x.device.type != "cpu"
        selected = torch.empty(n_select, dtype=torch.int64, device=x.device)
        # squared distance of every point to its nearest selected point; selected points get -1
        mind = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        if start_points > 0:
            starts = released_start_points(n, start_points, seed).to(x.device)
            d2 = sq[:, None] + sq[starts][None, :] - 2.0 * (x @ x[starts].T)
            mean = d2.clamp_(min=0.0).sqrt_().mean(1)
            first = int(torch.argmax(mean).item())
            mind = mean.square_()  # squared, like the running minimum it starts
        keep = None if pickable is None else pickable.to(device=x.device, dtype=x.dtype)
        selected[0] = first
        cur = first
        for step in range(1, n_select + 1):
            d = torch.mv(x, x[cur]).mul_(-2.0).add_(sq).add_(sq[cur]).clamp_(min=0.0)
            if keep is not None:
                d.mul_(keep)
            torch.minimum(mind, d, out=mind)
            mind[cur] = -1.0
            if step == n_select:
                break
            cur = torch.argmax(mind) if on_device else int(torch.argmax(mind).item())
            selected[step] = cur
    return selected.to(features.device)


def coverage_radius(features: torch.Tensor, selected: torch.Tensor, chunk: int = 8192) -> float:
    """Largest distance from any point to its nearest selected point (the k-center objective)."""
    centres = features[selected]
    worst = 0.0
    with torch.no_grad():
        for start in range(0, features.shape[0], chunk):
            d = torch.cdist(features[start : start + chunk], centres).min(dim=1).values
            worst = max(worst, float(d.max()))
    return worst
