"""The in-memory view of cached backbone features that every method consumes.

Arrays may be read-only memory maps of the on-disk cache: methods must never write into them,
and should convert only the slices they need (so N concurrent trials share one page-cached copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FeatureSet:
    """Features of N images from one backbone.

    image_ids: N stable ids (ImageRecord.image_id), in order.
    cls:       [N, C] float16, the global ("CLS") descriptor of each image (ViT CLS token after the
               final norm; for a CNN the global mean of the same feature map).
    patches:   [N, H, W, C] float16 patch tokens on the backbone's grid (e.g. 28x28).
    labels:    [N] int8 ground truth, 0 normal / 1 anomalous. For the training pool this marks the
               injected images and is for diagnostics ONLY: no method may train on it.
    masks:     [N, S, S] bool ground-truth masks at the evaluation size S (224), or None
               (training pool, or an image-level dataset).
    """

    image_ids: list[str]
    cls: np.ndarray
    patches: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if self.cls.shape[0] != n or self.patches.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError(
                f"FeatureSet arrays disagree on N: ids {n}, cls {self.cls.shape}, "
                f"patches {self.patches.shape}, labels {self.labels.shape}"
            )
        if self.masks is not None and self.masks.shape[0] != n:
            raise ValueError(f"FeatureSet masks {self.masks.shape} do not match N={n}")

    @property
    def n(self) -> int:
        return len(self.image_ids)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    @property
    def channels(self) -> int:
        return int(self.patches.shape[3])

    def subset(self, index: np.ndarray | list[int]) -> FeatureSet:
        idx = np.asarray(index, dtype=np.int64)
        return FeatureSet(
            image_ids=[self.image_ids[i] for i in idx],
            cls=self.cls[idx],
            patches=self.patches[idx],
            labels=self.labels[idx],
            masks=None if self.masks is None else self.masks[idx],
        )
