"""Image and mask loading with validation: every failure names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from funad.data.records import DatasetError

# Never let PIL quietly pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_rgb(path: Path) -> Image.Image:
    """Fully decode an image as RGB; truncated or unreadable files raise DatasetError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file does not exist") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable or truncated image ({e})") from e


def load_mask(path: Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as a bool array (H, W), binarised at > 0.

    expected_size is the (width, height) of the image it belongs to; a mismatch is an error
    because a silently resized mask would shift every pixel metric.
    """
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L"))
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: mask file does not exist") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable or truncated mask ({e})") from e
    if expected_size is not None and (arr.shape[1], arr.shape[0]) != tuple(expected_size):
        raise DatasetError(
            f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} does not match its image "
            f"({expected_size[0]}x{expected_size[1]})"
        )
    return arr > 0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only (cheap); errors name the file."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file does not exist") from e
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: unreadable image ({e})") from e
