"""A deliberately broken toy method for the conformance checks: a sound scorer whose image scores come out as
float64 (the contract says float32). Not registered on import: the tests register it where they need it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from funad.features import FeatureSet
from funad.methods.base import FitContext, Method, Scores


@dataclass
class Float64Scores(Method):
    """Image score = the largest distance of a test patch to the mean training patch, in float64."""

    name: ClassVar[str] = "broken_float64_scores"
    centre: np.ndarray | None = None

    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        self.centre = np.asarray(train.patches, dtype=np.float64).mean(axis=(0, 1, 2))
        self.history = [{"epoch": 0}]

    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        assert self.centre is not None
        d = np.linalg.norm(np.asarray(test.patches, dtype=np.float64) - self.centre, axis=-1)
        return Scores(image=d.reshape(test.n, -1).max(axis=1), maps=None)  # float64: breaks the contract
