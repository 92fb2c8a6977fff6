"""The one record type every dataset returns, and the error every loader raises.

Keeping one flat record means contamination, feature extraction and reporting never care which
on-disk layout an image came from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path


class DatasetError(ValueError):
    """Bad dataset input. The message always names the offending path and the problem."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    image_id: stable id, the POSIX path relative to the dataset root (plus "#aug<k>" for an
        augmented copy made by the contamination shortfall policy). Used for split ids, cache
        keys in results, and per-image scores.
    label: 0 = normal (good), 1 = anomalous.
    split: "train" or "test" as the dataset defines it (before contamination).
    defect_type: "good" for normal images, else the defect folder / class name.
    mask_path: ground-truth mask (binarised > 0 on load); None = no mask (all zero for normal
        images; for anomalous images of an image-level dataset it means "no pixel labels").
    augment: seed of a small random affine transform applied at load time (shortfall policy
        "augment"); None for an original image.
    """

    image_id: str
    path: Path
    label: int
    split: str
    category: str
    defect_type: str = "good"
    mask_path: Path | None = None
    augment: int | None = None


@dataclass
class Dataset(ABC):
    """A dataset is a root plus a layout; `records(category)` lists train and test images."""

    root: Path
    kind: str = field(init=False, default="")
    #: False for image-level (semantic, one-class) datasets: pixel metrics do not apply.
    pixel_level: bool = field(init=False, default=True)

    @abstractmethod
    def categories(self) -> list[str]:
        """All category names, sorted."""

    @abstractmethod
    def records(self, category: str) -> list[ImageRecord]:
        """Train and test records of one category, sorted by image_id, validated.

        Raises DatasetError for an unknown category, an empty split, a missing mask of an
        anomalous pixel-level image, etc.
        """

    def resolve_categories(self, wanted: str | list[str]) -> list[str]:
        """'all' -> every category; a list -> checked against what exists."""
        have = self.categories()
        if wanted == "all":
            return have
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        unknown = [c for c in names if c not in have]
        if unknown:
            raise DatasetError(
                f"{self.root}: unknown {self.kind} categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(map(repr, unknown))}; available: {', '.join(have) or '(none)'}"
            )
        return names
