"""The input of methods that read images (`Method.input_kind == "images"`), e.g. anomalib's models.

Feature methods get a `FeatureSet` from the shared cache; an image method gets the same split part as
an `ImageSet`: the same records in the same order, and the crops exactly as the protocol's
preprocessing gives them to a backbone (augmented copies included), so both kinds of method are scored
on the same pixels, masks and map size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from funad.data.records import ImageRecord

if TYPE_CHECKING:  # torch and timm on use: `import funad.imageset` stays cheap
    from funad.features import BackboneConfig


@dataclass
class ImageSet:
    """One split part's images, as the protocol's preprocessing gives them (image methods' input).

    records:       the split part's ImageRecords, in order.
    preprocessing: the protocol's backbone setting (resize, crop, mean, std, name, weights, layers).
    labels:        [N] int8; for the training pool it marks the injected images: diagnostics only.
    masks:         [N, crop, crop] bool ground truth of a test set with pixel masks, else None.
    """

    records: list[ImageRecord]
    preprocessing: BackboneConfig
    labels: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.records)
        if self.labels.shape != (n,):
            raise ValueError(f"ImageSet: labels {self.labels.shape} do not match {n} records")
        crop = self.preprocessing.crop
        if self.masks is not None and self.masks.shape != (n, crop, crop):
            raise ValueError(f"ImageSet: masks {self.masks.shape}, expected ({n}, {crop}, {crop})")

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    @property
    def n(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def crops(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 [n, crop, crop, 3] of records[start:stop]: the region the backbone sees, before
        normalisation (decoded, augmented where the record says so, resized, centre-cropped)."""
        from funad.features import load_crop

        picked = self.records[start:stop]
        crop = self.preprocessing.crop
        out = np.empty((len(picked), crop, crop, 3), dtype=np.uint8)
        for i, record in enumerate(picked):
            out[i] = load_crop(record, self.preprocessing)
        return out
