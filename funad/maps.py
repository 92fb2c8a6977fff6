"""Grid scores -> evaluation-size anomaly maps: bilinear upsampling, then a Gaussian blur.

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


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of [N, H, W] maps with reflect padding (as scipy.ndimage's default)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps[:, None]
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def grid_to_maps(grid_scores: torch.Tensor | np.ndarray, size: int = 224, sigma: float = 4.0) -> np.ndarray:
    """[N, h, w] patch scores -> [N, size, size] float32 maps (bilinear, align_corners=False, blur σ)."""
    g = torch.as_tensor(np.asarray(grid_scores) if not isinstance(grid_scores, torch.Tensor) else grid_scores)
    g = g.detach().float()
    up = F.interpolate(g[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(up, sigma).cpu().numpy().astype(np.float32)
