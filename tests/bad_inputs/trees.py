"""Builders of malformed dataset trees: each breaks one thing in an otherwise valid MVTec-layout tree.

`TREE_CASES` maps a case name to (breaker, where, expected message fragments). `build_broken(root,
name)` builds the valid 2-category tree (bottle, wood) with conftest_data.build_mvtec and then
applies the breaker to `wood`. `where` says when the problem can be found:
  "validate": from names and headers alone, so the CLI must refuse the spec (exit 2) before Ray;
  "decode": only by decoding pixels, so the features stage must stop the sweep (exit 2) before any
  trial, with one message naming the file.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from conftest_data import build_mvtec, write_image, write_mask
from PIL import Image

Breaker = Callable[[Path], Path]  # returns the path the message must name


def _truncate(path: Path, keep: int | float) -> Path:
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    return path


def missing_test_folder(root: Path) -> Path:
    shutil.rmtree(root / "wood" / "test")
    return root / "wood" / "test"


def missing_train_good(root: Path) -> Path:
    # No train/good: the folder is not a category at all; asking for it by name must say so.
    shutil.rmtree(root / "wood" / "train" / "good")
    return root / "wood"


def empty_training_split(root: Path) -> Path:
    for p in (root / "wood" / "train" / "good").iterdir():
        p.unlink()
    return root / "wood" / "train" / "good"


def empty_test_split(root: Path) -> Path:
    shutil.rmtree(root / "wood" / "test")
    (root / "wood" / "test").mkdir()
    return root / "wood" / "test"


def non_image_file(root: Path) -> Path:
    p = root / "wood" / "train" / "good" / "notes.txt"
    p.write_text("not an image")
    return p


def stray_file_in_test(root: Path) -> Path:
    p = root / "wood" / "test" / "README.md"
    p.write_text("stray")
    return p


def image_without_mask(root: Path) -> Path:
    (root / "wood" / "ground_truth" / "hole" / "000_mask.png").unlink()
    return root / "wood" / "test" / "hole" / "000.png"


def mask_wrong_size(root: Path) -> Path:
    return write_mask(root / "wood" / "ground_truth" / "hole" / "000_mask.png", size=(16, 16))


def mask_not_an_image(root: Path) -> Path:
    p = root / "wood" / "ground_truth" / "hole" / "001_mask.png"
    p.write_bytes(b"this is not a png at all")
    return p


def anomaly_header_truncated(root: Path) -> Path:
    # Cut inside the PNG header: its size cannot be read, which the mask check needs.
    return _truncate(root / "wood" / "test" / "hole" / "000.png", 12)


def truncated_png_body(root: Path) -> Path:
    # Header intact, pixel data cut: only decoding finds it.
    return _truncate(root / "wood" / "train" / "good" / "001.png", 0.5)


def truncated_jpg_body(root: Path) -> Path:
    p = write_image(root / "wood" / "train" / "good" / "009.jpg", size=(64, 48), value=9)
    return _truncate(p, 0.4)


def empty_image_file(root: Path) -> Path:
    p = root / "wood" / "train" / "good" / "002.png"
    p.write_bytes(b"")
    return p


def sixteen_bit_image(root: Path) -> Path:
    # A 16-bit grayscale PNG: converting it to 8-bit RGB would clip most of it to white.
    p = root / "wood" / "train" / "good" / "003.png"
    Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).save(p)
    return p


def truncated_mask_body(root: Path) -> Path:
    # Header intact (the size check at listing passes), pixel data cut.
    p = root / "wood" / "ground_truth" / "hole" / "000_mask.png"
    # noise compresses badly, so half the file is well past the header
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)).save(p)
    return _truncate(p, 0.5)


def empty_root(root: Path) -> Path:
    for child in list(root.iterdir()):
        shutil.rmtree(child)
    return root


TREE_CASES: dict[str, tuple[Breaker, str, tuple[str, ...]]] = {
    "missing_test_folder": (missing_test_folder, "validate", ("test split folder does not exist",)),
    "missing_train_good": (missing_train_good, "validate", ("unknown category 'wood'",)),
    "empty_training_split": (empty_training_split, "validate", ("empty training split",)),
    "empty_test_split": (empty_test_split, "validate", ("empty test split",)),
    "non_image_file": (non_image_file, "validate", ("not an image file",)),
    "stray_file_in_test": (stray_file_in_test, "validate", ("unexpected file",)),
    "image_without_mask": (image_without_mask, "validate", ("has no mask",)),
    "mask_wrong_size": (mask_wrong_size, "validate", ("mask size 16x16 does not match",)),
    "mask_not_an_image": (mask_not_an_image, "validate", ("unreadable",)),
    "anomaly_header_truncated": (anomaly_header_truncated, "validate", ("unreadable",)),
    "empty_root": (empty_root, "validate", ("no mvtec categories",)),
    "truncated_png_body": (truncated_png_body, "decode", ("unreadable or truncated image",)),
    "truncated_jpg_body": (truncated_jpg_body, "decode", ("unreadable or truncated image",)),
    "empty_image_file": (empty_image_file, "decode", ("image file is empty (0 bytes)",)),
    "sixteen_bit_image": (sixteen_bit_image, "decode", ("image mode 'I;16' is not 8 bits per channel",)),
    "truncated_mask_body": (truncated_mask_body, "decode", ("unreadable or truncated mask",)),
}


def build_broken(root: Path, name: str) -> Path:
    """A valid 2-category tree (bottle, wood) with case `name` applied; returns the path to name."""
    build_mvtec(root, n_train=4, n_good=2)
    breaker, _, _ = TREE_CASES[name]
    return breaker(root)
