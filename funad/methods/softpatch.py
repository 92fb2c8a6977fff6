"""SoftPatch (Jiang et al., NeurIPS 2022): PatchCore with patch-level denoising of a noisy training pool.

Before the coreset is built, a noise discriminator scores every training patch against the patches
of the other training images at the SAME grid position (h, w): anomalies injected into the pool are
rare at any one position, so their patches are outliers there even when a whole class of defects
recurs across images at different places.

Choices (following the paper and its public description; documented because they matter):
- Discriminator input: the PatchCore features (aggregated, channel-pooled), projected with the same
  seeded JL matrix the approximate coreset uses (`coreset_projection` dims; full width when 0),
  as the authors compute it on the sampler's reduced features.
- Outlier score per position: LOF with k = min(lof_k, N-1) (default), mean kNN distance, or the
  Mahalanobis distance to a shrunk Gaussian of all N images' patches (see `outliers.py`).
- Soft weight w of a patch, "inliers about 1": LOF as is (LOF is already ~1 for inliers);
  kNN / Gaussian scores divided by their position's median over the N images.
- Denoising is GLOBAL: the top `denoise_ratio` fraction of all N*H*W patches by w (one threshold
  over every position, as in the paper's quantile over the whole pool) leaves the coreset
  candidates. The coreset then keeps `coreset_ratio` of the remaining candidates.
- Test time: a test patch's score is d(f, m*) * w(m*), m* its (unweighted) nearest memory feature,
  so memories that still look noisy explain test patches less well (when `soft_weight`).
- Image score: the max weighted patch score, with PatchCore's reweighting when `reweight`.

`train.labels` is used for the `removed_injected_frac` / `bank_injected_frac` diagnostics only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from funad.features import FeatureSet
from funad.methods import register
from funad.methods.base import FitContext, MethodSettings
from funad.methods.coreset import project
from funad.methods.outliers import outlier_scores
from funad.methods.patchcore import PatchCore, PatchCoreSettings

#: fixed shrinkage intensity of the Gaussian discriminator's covariance (see outliers.gaussian_scores)
GAUSSIAN_SHRINKAGE = 0.1


class SoftPatchSettings(PatchCoreSettings):
    """PatchCore's settings plus the noise discriminator (defaults from the SoftPatch paper)."""

    noise_discriminator: Literal["lof", "knn", "gaussian"] = "lof"
    lof_k: int = Field(6, ge=1)
    denoise_ratio: float = Field(0.15, ge=0.0, lt=1.0)
    soft_weight: bool = True


def position_scores(feats: torch.Tensor, method: str, k: int, projection: int, seed: int) -> torch.Tensor:
    """Outlier score of every patch against the other images' patches at its position: [N, H, W]."""
    n, h, w, d = feats.shape
    x = project(feats.reshape(-1, d), projection, seed).reshape(n, h * w, -1)
    sets = x.permute(1, 0, 2).contiguous()  # [H*W, N, d']
    scores = outlier_scores(sets, method, k, shrinkage=GAUSSIAN_SHRINKAGE)  # [H*W, N]
    return scores.T.reshape(n, h, w)


def soft_weights(scores: torch.Tensor, method: str) -> torch.Tensor:
    """Outlier scores [N, H, W] -> weights with inliers about 1 (see the module docstring)."""
    if method == "lof":
        return scores.clamp(min=0.0)
    med = scores.median(dim=0, keepdim=True).values
    safe = torch.where(med > 0, med, torch.ones_like(med))
    return torch.where(med > 0, scores / safe, torch.ones_like(scores)).clamp(min=0.0)


@register
@dataclass
class SoftPatch(PatchCore):
    """PatchCore whose memory bank is built from denoised, soft-weighted training patches."""

    name: ClassVar[str] = "softpatch"
    Settings: ClassVar[type[MethodSettings]] = SoftPatchSettings
    diagnostic_names: ClassVar[tuple[str, ...]] = (
        "removed_frac",
        "removed_injected_frac",
        "bank_size",
        "bank_injected_frac",
    )

    @property
    def scfg(self) -> SoftPatchSettings:
        assert isinstance(self.settings, SoftPatchSettings)
        return self.settings

    def _candidates(
        self, feats: torch.Tensor, ctx: FitContext, train: FeatureSet
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drop the globally most outlying patches; the survivors' soft weights go with them."""
        n, h, w, _ = feats.shape
        total = n * h * w
        cfg = self.scfg
        if n < 2:  # no other images to compare with: nothing is noise, every weight is 1
            weight = torch.ones(total, device=feats.device)
        else:
            scores = position_scores(
                feats, cfg.noise_discriminator, cfg.lof_k, cfg.coreset_projection, ctx.seed
            )
            weight = soft_weights(scores, cfg.noise_discriminator).reshape(-1)
        n_drop = min(int(np.floor(cfg.denoise_ratio * total)), total - 1) if n >= 2 else 0
        order = torch.argsort(weight, descending=True, stable=True)
        removed, kept = order[:n_drop], torch.sort(order[n_drop:]).values
        labels = np.asarray(train.labels)  # diagnostics only
        removed_img = (removed // (h * w)).cpu().numpy()
        self.diagnostics.update(
            {
                "removed_frac": n_drop / total,
                "removed_injected_frac": float((labels[removed_img] == 1).mean()) if n_drop else float("nan"),
            }
        )
        return kept, (weight[kept] if cfg.soft_weight else None)
