"""Grid scores -> evaluation-size anomaly maps: bilinear (or nearest) upsampling, then a Gaussian blur.

Shared by every method so that map post-processing never differs between rivals.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _pad_symmetric(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Edge-repeating reflection (scipy.ndimage mode 'reflect': d c b a | a b c d | d c b a)."""
    n = x.shape[dim]
    if r > n:
        raise ValueError(f"blur radius {r} exceeds map size {n}")
    head = x.narrow(dim, 0, r).flip(dim)
    tail = x.narrow(dim, n - r, r).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of [N, H, W] maps, same as scipy.ndimage.gaussian_filter(mode='reflect', truncate=4)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = _pad_symmetric(maps[:, None], r, dim=3)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = _pad_symmetric(x, r, dim=2)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def repeat_cells(g: torch.Tensor, size: int) -> torch.Tensor:
    """[N, h, w] -> [N, size, size], each cell repeated over its stride x stride pixels (nearest
    neighbour). A size that is not a multiple of the grid takes torch's nearest interpolation."""
    h, w = g.shape[-2:]
    if size % h == 0 and size % w == 0:
        return g.repeat_interleave(size // h, dim=-2).repeat_interleave(size // w, dim=-1)
    return F.interpolate(g[:, None], size=(size, size), mode="nearest")[:, 0]


UPSAMPLING = ("bilinear", "nearest")


def grid_to_maps(
    grid_scores: torch.Tensor | np.ndarray, size: int = 224, sigma: float = 4.0, upsample: str = "bilinear"
) -> np.ndarray:
    """[N, h, w] patch scores -> [N, size, size] float32 maps, then a blur of σ pixels.

    upsample: "bilinear" (align_corners=False; every method's default) or "nearest" (each cell repeated
    over its stride, as InReaCh's released code does)."""
    if upsample not in UPSAMPLING:
        raise ValueError(f"grid_to_maps: unknown upsample {upsample!r}; use {' or '.join(UPSAMPLING)}")
    g = torch.as_tensor(np.asarray(grid_scores) if not isinstance(grid_scores, torch.Tensor) else grid_scores)
    g = g.detach().float()
    if upsample == "nearest":
        up = repeat_cells(g, size)
    else:
        up = F.interpolate(g[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(up, sigma).cpu().numpy().astype(np.float32)
