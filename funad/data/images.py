"""Image and mask loading with validation: every failure names the file.

`check_files(records)` decodes every image and mask a split will use, so a broken file is found before
any trial runs (the features stage calls it). An image this process has already decoded whole (by
`load_rgb`, e.g. while the backbone ran over it) is not decoded a second time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from funad.data.records import DatasetError, ImageRecord

# Never let PIL quietly pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: PIL modes with 8 bits per channel. Any other (16-bit "I;16", 32-bit "I", float "F") would be clipped
#: to 0..255 by the conversion to RGB: a silently different, mostly white or black image.
IMAGE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                         "LAB", "HSV"})

#: (resolved path, size, mtime_ns) -> (width, height) of images this process decoded whole
_DECODED: dict[tuple[str, int, int], tuple[int, int]] = {}
_DECODED_MAX = 1 << 16


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _identity(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def _open_failure(path: Path, what: str, e: BaseException) -> DatasetError:
    """The one message for a file PIL cannot decode: missing, empty, or unreadable/truncated."""
    if isinstance(e, FileNotFoundError):
        return DatasetError(f"{path}: {what} file does not exist")
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False
    if empty:
        return DatasetError(f"{path}: {what} file is empty (0 bytes)")
    return DatasetError(f"{path}: unreadable or truncated {what} ({e})")


def load_rgb(path: Path) -> Image.Image:
    """Fully decode an image as RGB; a missing, empty, truncated, unreadable or not 8-bit file raises
    DatasetError."""
    try:
        ident = _identity(path)  # before reading: a file replaced meanwhile is never taken as checked
        with Image.open(path) as im:
            im.load()
            if im.mode not in IMAGE_MODES:
                raise DatasetError(
                    f"{path}: image mode {im.mode!r} is not 8 bits per channel (converting it to RGB would "
                    "clip its values); allowed: 8-bit grayscale, palette, RGB or RGBA; convert the file"
                )
            rgb = im.convert("RGB")
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _open_failure(path, "image", e) from e
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED[ident] = rgb.size
    return rgb


def _decode_once(path: Path) -> tuple[tuple[int, int], bool]:
    """((width, height), whether it was decoded now): a file this process decoded whole is not redone."""
    try:
        known = _DECODED.get(_identity(path))
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file does not exist") from e
    return (known, False) if known is not None else (load_rgb(path).size, True)


def load_mask(path: Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as a bool array (H, W), binarised at > 0.

    expected_size is the (width, height) of the image it belongs to; a mismatch is an error
    because a silently resized mask would shift every pixel metric.
    """
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _open_failure(path, "mask", e) from e
    if expected_size is not None and (arr.shape[1], arr.shape[0]) != tuple(expected_size):
        raise DatasetError(
            f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} does not match its image "
            f"({expected_size[0]}x{expected_size[1]})"
        )
    return arr > 0


def check_files(records: Iterable[ImageRecord]) -> int:
    """Decode every image and mask of `records`; the first that fails raises DatasetError naming it.

    Listing a dataset reads headers only, so a file cut short after its header, or one in a mode the
    backbone cannot take, passes it; this is the check that finds them before a trial does. Returns how
    many images were decoded here (those this process had decoded already are not decoded again).
    """
    decoded = 0
    sizes: dict[Path, tuple[int, int]] = {}
    for r in records:
        if r.path not in sizes:  # augmented copies share their original's file
            sizes[r.path], now = _decode_once(r.path)
            decoded += now
        if r.mask_path is not None:
            load_mask(r.mask_path, sizes[r.path])
    return decoded


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only (cheap); errors name the file."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise _open_failure(path, "image", e) from e
