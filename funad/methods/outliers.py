"""Batched outlier scores for SoftPatch's noise discriminator: LOF, kNN distance, Mahalanobis.

SoftPatch (Jiang et al., NeurIPS 2022) scores every training patch against the patches of the other
training images at the same position; injected anomalies are rare at any one position, so they look
like outliers there. All functions take a batch of independent sets `x` [B, N, C] (B = grid
positions, N = images) and return [B, N] scores (higher = more outlying), vectorised over B.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: added to the mean reachability distance before inverting it, exactly as scikit-learn does, so
#: duplicate points give a huge but finite local reachability density
LRD_EPS = 1e-10


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances within each set: [B, N, C] -> [B, N, N] (diagonal exactly 0)."""
    sq = (x * x).sum(-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(x, x.transpose(1, 2))
    d2.clamp_(min=0.0)
    d2.diagonal(dim1=1, dim2=2).zero_()
    return d2.sqrt_()


def _neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest OTHER members of each set: (distances [B, N, k] ascending, indices [B, N, k])."""
    n = x.shape[1]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} needs 1 <= k <= N-1 with N={n}")
    d = pairwise_distances(x)
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    return torch.topk(d, k, dim=-1, largest=False, sorted=True)


def effective_k(k: int, n: int) -> int:
    """k capped at N-1 (each point has only N-1 others), as scikit-learn's LOF does."""
    return max(0, min(int(k), n - 1))


def lof_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """Local outlier factor (Breunig et al. 2000) of every member of every set: [B, N].

    reach_k(a, b) = max(k-distance(b), d(a, b)); lrd(a) = 1 / (mean_{b in kNN(a)} reach_k(a, b) + 1e-10);
    LOF(a) = mean_{b in kNN(a)} lrd(b) / lrd(a). This is scikit-learn's
    -LocalOutlierFactor(n_neighbors=k).negative_outlier_factor_ (k is capped at N-1 the same way).
    Inliers score about 1, outliers well above 1. A set of one point scores 1.
    """
    b, n, _ = x.shape
    k = effective_k(k, n)
    if k == 0:
        return torch.ones(b, n, dtype=x.dtype, device=x.device)
    knn_d, knn_i = _neighbours(x, k)
    k_dist = knn_d[..., -1]  # [B, N]
    k_dist_of_nbr = torch.gather(k_dist, 1, knn_i.reshape(b, -1)).reshape(b, n, k)
    reach = torch.maximum(knn_d, k_dist_of_nbr)
    lrd = 1.0 / (reach.mean(-1) + LRD_EPS)
    lrd_of_nbr = torch.gather(lrd, 1, knn_i.reshape(b, -1)).reshape(b, n, k)
    return lrd_of_nbr.mean(-1) / lrd


def knn_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean distance to the k nearest other members of the set: [B, N] (0 for a set of one)."""
    b, n, _ = x.shape
    k = effective_k(k, n)
    if k == 0:
        return torch.zeros(b, n, dtype=x.dtype, device=x.device)
    return _neighbours(x, k)[0].mean(-1)


def gaussian_scores(x: torch.Tensor, shrinkage: float = 0.1, ridge: float = 1e-6) -> torch.Tensor:
    """Mahalanobis distance of each member to the Gaussian fitted on ALL members of its set: [B, N].

    Mean and unbiased covariance S use all N members (the point itself included, as SoftPatch's
    Gaussian variant does). With N often below C, S is singular, so it is shrunk towards a scaled
    identity (Ledoit-Wolf form with a fixed intensity):
        S' = (1 - shrinkage) * S + (shrinkage * tr(S)/C + ridge * max(tr(S)/C, 1)) * I.
    `ridge` keeps S' positive definite even when every member is identical (S = 0).
    """
    b, n, c = x.shape
    mean = x.mean(1, keepdim=True)
    xc = x - mean
    cov = torch.bmm(xc.transpose(1, 2), xc) / max(n - 1, 1)
    avg_var = cov.diagonal(dim1=1, dim2=2).mean(-1)  # tr(S)/C, [B]
    diag_add = shrinkage * avg_var + ridge * torch.clamp(avg_var, min=1.0)
    cov = (1.0 - shrinkage) * cov
    cov.diagonal(dim1=1, dim2=2).add_(diag_add[:, None])
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, xc.transpose(1, 2), upper=False)  # [B, C, N]
    return (z * z).sum(1).sqrt()


def _score_fn(method: str, k: int, shrinkage: float) -> Callable[[torch.Tensor], torch.Tensor]:
    if method == "lof":
        return lambda t: lof_scores(t, k)
    if method == "knn":
        return lambda t: knn_scores(t, k)
    if method == "gaussian":
        return lambda t: gaussian_scores(t, shrinkage)
    raise ValueError(f"unknown noise discriminator {method!r}; use lof, knn or gaussian")


def outlier_scores(
    x: torch.Tensor,
    method: str,
    k: int = 6,
    *,
    shrinkage: float = 0.1,
    max_elements: int = 1 << 25,
) -> torch.Tensor:
    """Scores [B, N] of `method` on sets [B, N, C], processed in chunks of sets.

    A chunk holds at most about `max_elements` numbers of its largest intermediate ([b, N, N] for
    the distance-based scores, [b, C, C] for the Gaussian) so memory stays bounded on big pools.
    """
    b, n, c = x.shape
    fn = _score_fn(method, k, shrinkage)
    per_set = c * c if method == "gaussian" else n * n
    per_set = max(per_set, n * c)
    chunk = max(1, max_elements // per_set)
    with torch.no_grad():
        return torch.cat([fn(x[s : s + chunk]) for s in range(0, b, chunk)], dim=0)
