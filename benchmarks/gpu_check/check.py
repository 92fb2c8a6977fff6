"""One run of the check: its shapes, budget and results so far, and the timing helpers every section uses."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.gpu_check.device import sync_device
from benchmarks.irmb_bench import MODES, PEAK_SHAPES, synthetic_features

DEFAULT_BUDGET_S = 300.0
#: the GPU-hours the full sweep must fit in
TARGET_GPU_HOURS = 150.0
#: FUN-AD configurations timed: irmb_bench's (fp32, bf16, bf16_train) plus the TF32 search
GPU_MODES: dict[str, tuple[str, dict[str, str]]] = {
    "fp32": MODES["fp32"],
    "tf32": ("tf32", {}),
    "bf16": MODES["bf16"],
    "bf16_train": MODES["bf16_train"],
}
#: the configurations whose bank_every 2/5/10 cost is measured: the default and the bf16 settings
BANK_EVERY_MODES = ("fp32", "bf16_train")
BANK_EVERY = (2, 5, 10)
#: cached GPU features may differ from a CPU extraction by this much, relative to the features' scale
#: (max |CPU feature|): the fp16 cache rounds each side to 2^-11 of its value; the rest allows cuDNN's
#: default TF32 convolutions and the GPU's summation order through the backbone's blocks
FEATURE_TOLERANCE = 2.0**-7


@dataclass(frozen=True)
class Shapes:
    """Problem sizes of the funad, searches and estimate sections."""

    pool: int  # training images
    test: int  # test images of the method cells
    batch: int
    grid: int  # patches per image = grid^2
    channels: int  # C (FUN-AD's D = 2C)
    repeats: int  # timed iterations per configuration
    map_size: int
    #: (m, k, n) of the plain matmuls the GEMM efficiency is measured against
    peak_shapes: tuple[tuple[int, int, int], ...] = PEAK_SHAPES

    @property
    def patches(self) -> int:
        return self.grid * self.grid


#: MVTec bottle at ratio 0.1 (209 normals + 21 injected; 20 + 63 test images), ViT-B/8 features
BOTTLE = Shapes(pool=230, test=83, batch=32, grid=28, channels=768, repeats=3, map_size=224)
TINY = Shapes(
    pool=12,
    test=6,
    batch=4,
    grid=4,
    channels=32,
    repeats=1,
    map_size=32,
    peak_shapes=((256, 64, 256), (256, 64, 1024), (512, 256, 512)),
)


@dataclass(frozen=True)
class FeatureCheck:
    """The features section: backbone and image counts."""

    backbone: dict[str, Any]
    images: int  # timed through extract_features
    warmup: int  # extracted first (model build, kernel selection), not timed
    cpu_images: int  # of the timed images, re-extracted on the CPU for the comparison
    batch_size: int
    image_px: int  # side of the PNGs written


FEATURES_FULL = FeatureCheck(
    {"name": "vit_base_patch8_224", "weights": "random", "resize": 256, "crop": 224}, 64, 16, 2, 16, 256
)
FEATURES_TINY = FeatureCheck(
    {"name": "vit_tiny_patch16_224", "weights": "random", "resize": 40, "crop": 32}, 8, 2, 2, 4, 48
)


def progress(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


@dataclass
class Check:
    """One run: device, shapes, budget, and the section results so far."""

    device: torch.device
    tiny: bool
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _features: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def shapes(self) -> Shapes:
        return TINY if self.tiny else BOTTLE

    @property
    def feature_check(self) -> FeatureCheck:
        return FEATURES_TINY if self.tiny else FEATURES_FULL

    def sync(self) -> None:
        sync_device(self.device)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def left_s(self) -> float:
        return self.budget_s - self.elapsed_s()

    def host_features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """irmb_bench.synthetic_features of pool + test images (CPU, fp16), made once per run."""
        if self._features is None:
            sh = self.shapes
            self._features = synthetic_features(sh.pool + sh.test, sh.patches, sh.channels)
        return self._features

    def pool_on_device(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pool's (cls, patches, labels) on the device: the one host->device copy per section."""
        cls, pat, labels = self.host_features()
        n = self.shapes.pool
        return cls[:n].to(self.device), pat[:n].to(self.device), labels[:n].to(self.device)


def timed(
    fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warmup: int = 1
) -> tuple[float, Any]:
    """(median seconds of fn, synchronised, after `warmup` untimed calls; fn's last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def time_call(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn, synchronised, after `warmup` untimed calls."""
    return timed(fn, sync, repeats, warmup)[0]
