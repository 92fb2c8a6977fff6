"""A user's own data: normal and anomalous image folders, optional masks, optional fixed split.

Two per-category forms:
- random split: `<cat>/normal/*`, `<cat>/anomaly/*`, optional `<cat>/mask/<anomaly stem>.png`;
  `train_fraction` of the normals (seeded, stable on any machine) train, the rest test.
- fixed split: `<cat>/train/normal/*`, `<cat>/test/normal/*`, `<cat>/test/anomaly/*`, optional
  `<cat>/test/mask/<anomaly stem>.png`.
A category is pixel-level when it has a mask folder; then every anomaly needs its mask.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from funad.data.mvtec import check_mask_size, check_root, list_images, rel_id, unknown_category
from funad.data.records import Dataset, DatasetError, ImageRecord

T = TypeVar("T")

ANOMALY = "anomaly"


def check_fraction(train_fraction: float, where: str) -> None:
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, int | float):
        raise DatasetError(f"{where}: train_fraction must be a number in (0, 1), got {train_fraction!r}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise DatasetError(f"{where}: train_fraction must be in (0, 1), got {train_fraction}")


def seeded_split(items: list[T], fraction: float, seed: int, key: str) -> tuple[list[T], list[T]]:
    """Split sorted `items` into (first, rest) with floor(fraction * n) in the first part.

    The RNG depends only on (seed, key) through numpy's SeedSequence and PCG64, so the same
    inputs give the same split on every machine; `key` (e.g. the class name) keeps the splits of
    different groups independent. Both parts keep the input order.
    """
    n = len(items)
    k = math.floor(fraction * n + 1e-9)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))]))
    chosen = set(rng.permutation(n)[:k].tolist())
    first = [x for i, x in enumerate(items) if i in chosen]
    rest = [x for i, x in enumerate(items) if i not in chosen]
    return first, rest


@dataclass
class FolderDataset(Dataset):
    """Generic normal/anomaly folders; see the module docstring for the two layouts."""

    train_fraction: float = 0.6
    split_seed: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.kind = "folder"
        check_fraction(self.train_fraction, f"{self.root}")
        # Dataset-wide flag: pixel metrics only when every category has masks (see has_masks).
        self.pixel_level = False
        if self.root.is_dir():
            try:
                cats = self.categories()
            except DatasetError:
                cats = []
            self.pixel_level = bool(cats) and all(self.has_masks(c) for c in cats)

    def _form(self, cdir: Path) -> str | None:
        random_form = (cdir / "normal").is_dir() or (cdir / ANOMALY).is_dir()
        fixed_form = (cdir / "train" / "normal").is_dir()
        if random_form and fixed_form:
            raise DatasetError(
                f"{cdir}: has both normal/ (random split) and train/normal/ (fixed split); keep one layout"
            )
        return "random" if random_form else "fixed" if fixed_form else None

    def categories(self) -> list[str]:
        check_root(self.root, self.kind)
        cats = sorted(
            p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir() and self._form(p)
        )
        if not cats:
            raise DatasetError(
                f"{self.root}: no folder categories found (expected <root>/<category>/normal and "
                "<root>/<category>/anomaly, or <root>/<category>/train/normal and test/{normal,anomaly})"
            )
        return cats

    def _mask_dir(self, category: str) -> Path:
        cdir = self.root / category
        return cdir / "mask" if self._form(cdir) == "random" else cdir / "test" / "mask"

    def has_masks(self, category: str) -> bool:
        """Whether this category is pixel-level (it has a mask folder)."""
        return self._mask_dir(category).is_dir()

    def records(self, category: str) -> list[ImageRecord]:
        have = self.categories()
        if category not in have:
            raise unknown_category(self.root, self.kind, category, have)
        cdir = self.root / category
        if self._form(cdir) == "random":
            normal_dir, anomaly_dir = cdir / "normal", cdir / ANOMALY
            normals = list_images(normal_dir)
            if not normals:
                raise DatasetError(f"{normal_dir}: no normal images")
            train, test_normal = seeded_split(normals, self.train_fraction, self.split_seed, category)
            if not train:
                raise DatasetError(
                    f"{normal_dir}: empty training split: {len(normals)} normal image(s) x "
                    f"train_fraction {self.train_fraction} rounds down to 0"
                )
        else:
            train_dir = cdir / "train" / "normal"
            normal_dir, anomaly_dir = cdir / "test" / "normal", cdir / "test" / ANOMALY
            train = list_images(train_dir)
            if not train:
                raise DatasetError(f"{train_dir}: empty training split (no images)")
            test_normal = list_images(normal_dir) if normal_dir.exists() else []
        anomalies = list_images(anomaly_dir) if anomaly_dir.exists() else []
        if not test_normal and not anomalies:
            raise DatasetError(f"{cdir}: empty test split (no test normal or anomalous images)")

        mask_dir = self._mask_dir(category)
        use_masks = mask_dir.is_dir()
        if use_masks:
            stems: dict[str, Path] = {}
            for p in anomalies:
                if p.stem in stems:
                    raise DatasetError(f"{p}: same file stem as {stems[p.stem]}; masks are matched by stem")
                stems[p.stem] = p

        recs = [ImageRecord(rel_id(p, self.root), p, 0, "train", category) for p in train]
        recs += [ImageRecord(rel_id(p, self.root), p, 0, "test", category) for p in test_normal]
        for p in anomalies:
            mask = self._mask(mask_dir, p) if use_masks else None
            recs.append(ImageRecord(rel_id(p, self.root), p, 1, "test", category, ANOMALY, mask))
        return sorted(recs, key=lambda r: r.image_id)

    @staticmethod
    def _mask(mask_dir: Path, image: Path) -> Path:
        cands = [mask_dir / f"{image.stem}.png", mask_dir / f"{image.stem}_mask.png"]
        found = [m for m in cands if m.is_file()]
        if not found:
            raise DatasetError(
                f"{image}: anomalous image has no mask (expected {cands[0]}), but {mask_dir} exists, "
                "so every anomaly needs one"
            )
        if len(found) > 1:
            raise DatasetError(f"{image}: more than one mask matches ({found[0]}, {found[1]}); keep one")
        check_mask_size(image, found[0])
        return found[0]
