"""PatchKNN: score each test patch by its distance to the nearest training patch (no coreset, no tricks).

The minimal example of a method from outside funad-bench (see docs/methods.md): one class, its typed
settings, fit and score on cached features, a diagnostic, and one entry point in pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from funad.features import FeatureSet
from funad.maps import grid_to_maps
from funad.methods import FitContext, Method, MethodSettings, Scores
from funad.search import knn


class PatchKNNSettings(MethodSettings):
    """Every setting with its default; the sweep file validates against this model."""

    k: int = Field(1, ge=1, description="neighbours averaged per test patch")
    max_bank: int | None = Field(None, ge=1, description="keep at most this many training patches (seeded)")
    map_sigma: float = Field(4.0, ge=0.0)


@dataclass
class PatchKNN(Method):
    name: ClassVar[str] = "patchknn"
    Settings: ClassVar[type[MethodSettings]] = PatchKNNSettings
    diagnostic_names: ClassVar[tuple[str, ...]] = ("bank_size",)

    bank: torch.Tensor | None = field(default=None, init=False, repr=False)

    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        cfg = self.settings
        assert isinstance(cfg, PatchKNNSettings)
        patches = np.asarray(train.patches, dtype=np.float32).reshape(-1, train.channels)
        if cfg.max_bank is not None and patches.shape[0] > cfg.max_bank:
            pick = np.random.default_rng(ctx.seed).choice(patches.shape[0], cfg.max_bank, replace=False)
            patches = patches[np.sort(pick)]
        self.bank = torch.from_numpy(patches).to(ctx.device)
        self.diagnostics = {"bank_size": float(self.bank.shape[0])}
        self.history = [{"epoch": 0, "iteration": 0, "diag_bank_size": float(self.bank.shape[0])}]

    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        cfg = self.settings
        assert isinstance(cfg, PatchKNNSettings) and self.bank is not None
        h, w = test.grid
        query = torch.from_numpy(np.asarray(test.patches, dtype=np.float32).reshape(-1, test.channels))
        k = min(cfg.k, self.bank.shape[0])
        sqdist, _ = knn(query.to(self.bank.device), self.bank, k=k, backend="torch")
        grid = sqdist.clamp(min=0).sqrt().mean(dim=1).reshape(test.n, h, w).cpu()
        image = grid.amax(dim=(1, 2)).numpy().astype(np.float32)
        return Scores(image=image, maps=grid_to_maps(grid, size=ctx.map_size, sigma=cfg.map_sigma))
