"""One-class (semantic) anomaly detection: one class is normal, every other class anomalous.

Built in from scikit-learn's bundled digits (no download), rendered once into the data cache,
or read from `<root>/<class>/*`. Image-level only (pixel_level False).

Each class is split once, independently of which class is normal (seed + class name), so the
test portion of class "3" is the same whether the normal class is "0" or "7".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from funad.data.folder import check_fraction, seeded_split
from funad.data.mvtec import check_root, list_images, rel_id, unknown_category
from funad.data.records import Dataset, DatasetError, ImageRecord
from funad.paths import data_cache as default_data_cache

DIGITS_NAME = "oneclass-digits-v1"


def digits_dir(image_size: int = 64, data_cache: Path | None = None) -> Path:
    """Folder of the rendered digits under `data_cache` (default funad.paths.data_cache()); the
    default size keeps the plain versioned name."""
    name = DIGITS_NAME if image_size == 64 else f"{DIGITS_NAME}-{image_size}px"
    return (default_data_cache() if data_cache is None else Path(data_cache).expanduser()) / name


def render_digit(pixels: np.ndarray, image_size: int) -> Image.Image:
    """An 8x8 digit (values 0..16) as an RGB image, nearest-upscaled: white ink on black."""
    gray = np.round(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(gray).resize((image_size, image_size), Image.Resampling.NEAREST)
    return im.convert("RGB")


def build_digits(image_size: int = 64, data_cache: Path | None = None) -> Path:
    """Render the digits to `<data_cache>/<name>/<class>/<index>.png` once; safe under concurrency.

    Written into a temp folder next to the target and renamed into place, so a reader never sees
    a half-written tree and two processes racing both end up with the same complete folder.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DatasetError(f"oneclass: image_size must be an integer >= 8, got {image_size!r}")
    target = digits_dir(image_size, data_cache)
    if target.is_dir():
        return target
    from sklearn.datasets import load_digits

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        digits = load_digits()
        for cls in range(10):
            (tmp / str(cls)).mkdir()
        for i, (pixels, cls) in enumerate(zip(digits.images, digits.target, strict=True)):
            render_digit(pixels, image_size).save(tmp / str(int(cls)) / f"{i:04d}.png")
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class OneClassDataset(Dataset):
    """Category = the normal class; test = held-out normals (0) + held-out other classes (1)."""

    root: Path | None = None  # type: ignore[assignment]
    train_fraction: float = 0.6
    split_seed: int = 0
    image_size: int = 64
    #: where the built-in digits are rendered when root is None (default funad.paths.data_cache())
    data_cache: Path | None = None

    def __post_init__(self) -> None:
        self.kind = "oneclass"
        self.pixel_level = False
        check_fraction(self.train_fraction, "oneclass")
        self.builtin = self.root is None
        if self.root is None:
            self.root = build_digits(self.image_size, self.data_cache)
        else:
            self.root = Path(self.root).expanduser()

    def categories(self) -> list[str]:
        check_root(self.root, self.kind)
        cats = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(cats) < 2:
            raise DatasetError(
                f"{self.root}: one-class data needs at least two class folders <root>/<class>/*, "
                f"found {len(cats)}"
            )
        return cats

    def _class_split(self, cls: str) -> tuple[list[Path], list[Path]]:
        folder = self.root / cls
        images = list_images(folder)
        if not images:
            raise DatasetError(f"{folder}: class folder has no images")
        train, test = seeded_split(images, self.train_fraction, self.split_seed, cls)
        if not train or not test:
            raise DatasetError(
                f"{folder}: {len(images)} image(s) with train_fraction {self.train_fraction} leave an "
                f"empty {'training' if not train else 'test'} split"
            )
        return train, test

    def records(self, category: str) -> list[ImageRecord]:
        have = self.categories()
        if category not in have:
            raise unknown_category(self.root, self.kind, category, have)
        recs: list[ImageRecord] = []
        for cls in have:
            train, test = self._class_split(cls)
            if cls == category:
                recs += [ImageRecord(rel_id(p, self.root), p, 0, "train", category) for p in train]
                recs += [ImageRecord(rel_id(p, self.root), p, 0, "test", category) for p in test]
            else:
                recs += [ImageRecord(rel_id(p, self.root), p, 1, "test", category, cls) for p in test]
        return sorted(recs, key=lambda r: r.image_id)
