"""What the backbone sees of an image, and the masks aligned with it.

In funad.features (layering: see its __init__) this module imports only `backbone` (for the config,
its resolved mean/std and the centre crop's offset).

Preprocessing (protocol.md): RGB -> [optional seeded affine for augmented copies] -> resize to
resize x resize (bilinear, aspect not kept) -> center crop `crop` -> normalise with mean/std.
Masks get the same affine (nearest), a nearest resize and the same crop, so mask pixels stay aligned
with the 224x224 crop that the metrics are computed on. With border_context the backbone is given
the whole resized image instead of the crop (the extractor cuts the crop's cells out of its map);
the evaluated region, and so `load_crop` and `load_masks`, stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from skimage.transform import AffineTransform, warp

from funad.data.images import image_size, load_mask, load_rgb
from funad.data.records import ImageRecord
from funad.features.backbone import BackboneConfig, crop_offset, resolved_mean_std


def augment_params(seed: int) -> dict[str, float]:
    """The seeded affine of an augmented copy: rotation +-10 deg, translate +-4 %, scale 0.95-1.05."""
    rng = np.random.default_rng([0xA46, int(seed)])
    return {
        "angle": float(rng.uniform(-10.0, 10.0)),
        "tx": float(rng.uniform(-0.04, 0.04)),
        "ty": float(rng.uniform(-0.04, 0.04)),
        "scale": float(rng.uniform(0.95, 1.05)),
    }


def _affine(arr: np.ndarray, seed: int, order: int) -> np.ndarray:
    """Apply augment_params(seed) about the image centre. Borders are mirrored (mode='reflect') so no
    black corners appear that a detector could mistake for a defect; the mask gets the same mapping."""
    h, w = arr.shape[:2]
    p = augment_params(seed)
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    fwd = (
        AffineTransform(translation=-c)
        + AffineTransform(scale=p["scale"], rotation=np.deg2rad(p["angle"]))
        + AffineTransform(translation=c + np.array([p["tx"] * w, p["ty"] * h]))
    )
    out = warp(arr, fwd.inverse, order=order, mode="reflect", preserve_range=True)
    return out.astype(arr.dtype) if order == 0 else np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _crop_box(resize: int, crop: int) -> tuple[int, int]:
    """Top-left offset of the center crop (same rounding as torchvision's CenterCrop)."""
    off = crop_offset(resize, crop)
    return off, off


def _load_resized(record: ImageRecord, cfg: BackboneConfig) -> np.ndarray:
    """uint8 [resize, resize, 3]: decoded, augmented (if the record says so), resized."""
    im = load_rgb(record.path)
    if record.augment is not None:
        im = Image.fromarray(_affine(np.asarray(im), record.augment, order=1))
    return np.asarray(im.resize((cfg.resize, cfg.resize), Image.Resampling.BILINEAR))


def load_crop(record: ImageRecord, cfg: BackboneConfig) -> np.ndarray:
    """The evaluated region before normalisation: uint8 [crop, crop, 3] (what maps and masks cover)."""
    top, left = _crop_box(cfg.resize, cfg.crop)
    return _load_resized(record, cfg)[top : top + cfg.crop, left : left + cfg.crop]


def preprocess(record: ImageRecord, cfg: BackboneConfig) -> torch.Tensor:
    """Normalised float32 tensor [3, crop, crop] ([3, resize, resize] with border_context)."""
    mean, std = resolved_mean_std(cfg)
    if cfg.border_context:  # the extractor cuts the crop's cells out of the feature map
        x = _load_resized(record, cfg).astype(np.float32) / 255.0
    else:
        x = load_crop(record, cfg).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def load_masks(records: Sequence[ImageRecord], cfg: BackboneConfig) -> np.ndarray:
    """[N, crop, crop] bool ground truth aligned with the feature crop (no mask -> all False)."""
    out = np.zeros((len(records), cfg.crop, cfg.crop), dtype=bool)
    top, left = _crop_box(cfg.resize, cfg.crop)
    for i, r in enumerate(records):
        if r.mask_path is None:
            continue
        m = load_mask(r.mask_path, image_size(r.path))
        if r.augment is not None:
            m = _affine(m.astype(np.uint8), r.augment, order=0)
        im = Image.fromarray((m > 0).astype(np.uint8) * 255).resize(
            (cfg.resize, cfg.resize), Image.Resampling.NEAREST
        )
        out[i] = np.asarray(im)[top : top + cfg.crop, left : left + cfg.crop] > 0
    return out
