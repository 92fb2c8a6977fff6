"""Section 1, `features`: the backbone through the real `extract_features` and its cache on the device."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_check.check import FEATURE_TOLERANCE, Check, time_call


def write_images(folder: Path, n: int, px: int) -> list[Any]:
    """n distinct RGB PNGs (smooth gradients plus seeded noise) as ImageRecords."""
    from PIL import Image

    from funad.data.records import ImageRecord

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, px, dtype=np.float32)
    records = []
    for i in range(n):
        base = (ramp[None, :, None] * (1 + i % 3) / 3 + ramp[:, None, None] * (i % 5) / 5) % 256
        img = np.clip(base + rng.normal(0, 24, (px, px, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(img).save(path)
        records.append(ImageRecord(image_id=path.name, path=path, label=0, split="train", category="check"))
    return records


def _stacked(fs: Any, n: int) -> np.ndarray:
    """[n, 1 + H*W, C] float32: the CLS row and the patch rows of the first n images."""
    cls = np.asarray(fs.cls[:n], dtype=np.float32)[:, None, :]
    pat = np.asarray(fs.patches[:n], dtype=np.float32).reshape(n, -1, cls.shape[2])
    return np.concatenate([cls, pat], axis=1)


def forward_images_per_s(cfg: Any, dev: torch.device, batch: int, sync: Callable[[], None]) -> float:
    """The backbone's forward alone (no decoding, no cache), images/s over 3 batches after a warm-up."""
    from funad.features.backbone import build_extractor

    model = build_extractor(cfg, dev)
    x = torch.randn(batch, 3, cfg.crop, cfg.crop, device=dev)

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return batch / time_call(run, sync, repeats=3)


def section_features(check: Check) -> dict[str, Any]:
    from funad import features
    from funad.features import BackboneConfig, feature_dim

    fc, dev = check.feature_check, check.device
    cfg = BackboneConfig(**fc.backbone)
    with tempfile.TemporaryDirectory(prefix="gpu-check-features-") as tmp:
        records = write_images(Path(tmp) / "images", fc.warmup + fc.images, fc.image_px)
        warm, measured = records[: fc.warmup], records[fc.warmup :]
        cache = Path(tmp) / "cache"
        opts = {"device": dev, "batch_size": fc.batch_size, "progress": False}
        features.extract_features(warm, cfg, cache, **opts)
        before = features.forward_count()
        check.sync()
        t0 = time.perf_counter()
        fs = features.extract_features(measured, cfg, cache, **opts)
        check.sync()
        wall = time.perf_counter() - t0
        forwards = features.forward_count() - before
        on_device = _stacked(fs, fc.cpu_images)
        ref_fs = features.extract_features(
            measured[: fc.cpu_images], cfg, Path(tmp) / "cache-cpu", device="cpu", progress=False
        )
        ref = _stacked(ref_fs, fc.cpu_images)
    fwd = forward_images_per_s(cfg, dev, fc.batch_size, check.sync)
    scale = float(np.abs(ref).max())
    diff = float(np.abs(on_device - ref).max())
    gh, gw, c = feature_dim(cfg)
    return {
        "backbone": fc.backbone,
        "grid": [gh, gw],
        "channels": c,
        "images": len(measured),
        "backbone_forwards": forwards,
        "images_per_s": len(measured) / wall,
        "forward_images_per_s": fwd,
        "cpu_compared_images": fc.cpu_images,
        "max_abs_diff": diff,
        "feature_scale": scale,
        "rel_diff": diff / max(scale, 1e-30),
        "tolerance_rel": FEATURE_TOLERANCE,
        "within_tolerance": diff <= FEATURE_TOLERANCE * scale,
    }
