"""`make gpu-check`: one script that exercises the whole GPU path once and prints every figure we need.

`python -m benchmarks.gpu_check [--device cuda|cpu] [--tiny] [--budget-s 300] [--out FILE]`.
Progress goes to stderr; the LAST stdout line is one JSON object (also written to --out), documented key by
key in benchmarks/RESULTS.md ("GPU check"). Sections, each guarded (a failing section is recorded with its
error and the others still run; none starts once the budget is spent):
1. `features`: ViT-B/8 (`weights: random`: shapes matter, the hub is unreachable) over 64 PNGs through the
   real `extract_features` and its cache: images/s, and the cached fp16 features of 2 images against a CPU
   extraction of the same images.
2. `funad`: FUN-AD at MVTec-bottle shapes (pool 230, batch 32, D = 1536, 784 patches) in fp32, tf32, bf16
   and bf16 + train_precision bf16: seconds per iteration, achieved TFLOP/s, GEMM efficiency against a plain
   matmul of the same precision on the same device, peak device memory, pseudo-label agreement with fp32,
   bank_every 2/5/10, and the host-device sync points of one iteration.
3. `searches`: the bank search (`funad.search.nearest`) and PatchCore's flat search (`funad.search.knn`),
   torch against faiss: time ratio, identical results, the faster backend per device.
4. `sweep`: a 4-cell Ray Tune sweep through `python -m harness.sweep` (two trials per GPU on CUDA).
5. `estimate`: GPU-hours of sweeps/full.yaml for every method from the measured parts.
`--device cpu --tiny` runs every section at tiny shapes (the test suite does), so the script cannot rot.
Everything that only a GPU does (synchronisation, memory statistics, sync counting, the device name) sits in
the small helpers under "device helpers"; the CPU run exercises the rest.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.irmb_bench import (
    MIN_LABEL_AGREEMENT,
    MODES,
    PEAK_SHAPES,
    State,
    device_matmul_peak,
    ideal_seconds,
    labels_and_pairs,
    make_state,
    precision_agreement,
    synthetic_features,
    time_iterations,
    timed_flops,
)

REPO = Path(__file__).resolve().parent.parent
FULL_YAML = REPO / "sweeps" / "full.yaml"
DATASET_SIZES = REPO / "benchmarks" / "dataset_sizes.csv"
EXIT_NO_DEVICE = 2
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


# ---- device helpers (the CUDA-only code) ------------------------------------------------------
def cuda_unavailable(device: str) -> str | None:
    """Why `device` cannot be used, or None."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None if dev.type == "cpu" else f"unknown device {device!r}; use cuda or cpu"
    if not torch.cuda.is_available():
        return (
            f"--device {device} requested, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); run on a GPU machine, or use --device cpu --tiny"
        )
    if (dev.index or 0) >= torch.cuda.device_count():
        return f"--device {device} requested, but only {torch.cuda.device_count()} CUDA device(s) are visible"
    return None


def sync_device(dev: torch.device) -> None:
    """Wait for the device's queue (GPU kernels run asynchronously; timings must include them)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak_memory(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_mb(dev: torch.device) -> float | None:
    """Peak allocated device memory since the last reset (None on the CPU)."""
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def free_device_memory(dev: torch.device) -> None:
    """Return cached blocks between sections, so one section's peak does not crowd the next."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def device_label(dev: torch.device) -> str:
    """The device as the results' `device` column names it: the GPU's name, or cpu."""
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def cuda_sync_count(dev: torch.device, fn: Callable[[], Any]) -> int | None:
    """Synchronising CUDA calls made by fn (torch's sync debug mode warns once per sync); None on the CPU."""
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)  # before the count: only fn's own syncs are counted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ---- sync points, counted by call site (any device) -------------------------------------------
#: Tensor methods that read a value to the host or wait for a data-dependent size: on a GPU each one
#: waits for every queued kernel
_SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")
_SYNC_FUNCTIONS = ("nonzero", "unique", "masked_select")
_FUNAD_DIR = str(REPO / "funad") + os.sep


def _call_site() -> str:
    """file:line of the innermost funad/ frame that led here ("other" outside funad/)."""
    f = sys._getframe(2)
    while f is not None and not f.f_code.co_filename.startswith(_FUNAD_DIR):
        f = f.f_back
    if f is None:
        return "other"
    return f"{os.path.relpath(f.f_code.co_filename, REPO)}:{f.f_lineno}"


@contextmanager
def count_sync_points(counts: Counter[str]) -> Iterator[None]:
    """Count host reads of tensor values, data-dependent shapes and boolean-mask indexing, keyed by
    "funad/file.py:line api". CPU tensors count too (the point is to find what would wait on a GPU)."""
    saved_methods = {name: torch.Tensor.__dict__.get(name) for name in (*_SYNC_METHODS, "__getitem__")}
    saved_functions = {name: getattr(torch, name) for name in _SYNC_FUNCTIONS}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            counts[f"{_call_site()} {name}"] += 1
            return fn(*args, **kwargs)

        return inner

    get_item = torch.Tensor.__getitem__

    def getitem(self: torch.Tensor, key: Any) -> Any:
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
            counts[f"{_call_site()} bool-mask index"] += 1
        return get_item(self, key)

    try:
        for name in _SYNC_METHODS:
            setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
        torch.Tensor.__getitem__ = getitem  # type: ignore[method-assign]
        for name, fn in saved_functions.items():
            setattr(torch, name, counted(f"torch.{name}", fn))
        yield
    finally:
        for name, fn in saved_methods.items():
            if fn is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)
        for name, fn in saved_functions.items():
            setattr(torch, name, fn)


@contextmanager
def torch_search_ops() -> Iterator[None]:
    """The searches' torch selection/re-rank ops instead of the CPU kernels: the path a GPU runs."""
    from funad import native

    with native.forced(False):
        yield


# ---- the run -----------------------------------------------------------------------------------
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


# ---- 1. features ------------------------------------------------------------------------------
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


# ---- 2. FUN-AD -------------------------------------------------------------------------------
def bank_share(executed: dict[str, float]) -> float:
    """Share of the fused search's executed FLOPs that is the bank search (the rest: the pair search)."""
    total = executed["bank_search"] + executed["mutual_pairs"]
    return executed["bank_search"] / total if total > 0 else 0.0


def rebuild_cost(timing: dict[str, Any], executed: dict[str, float], pool: int) -> dict[str, float]:
    """An iteration that rebuilds the bank as fixed + pool-proportional seconds: pool scoring and the bank
    search (its share of the fused search by executed FLOPs) grow with the pool, the rest is the batch's."""
    parts = timing["parts_s"]
    per_pool = parts["pool_scoring"] + parts["bank_and_pair_search"] * bank_share(executed)
    return {"fixed_s": max(0.0, timing["iter_s"] - per_pool), "pool_s": per_pool, "ref_pool": pool}


def _query_and_bank(st: State, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch` images' adapted rows and the current bank's rows, [rows, D] each."""
    z = st.train.z_buf
    dim = z.shape[2]
    return z[:batch].reshape(-1, dim), z[st.chosen].reshape(-1, dim)


def _first_batch(st: State, batch: int) -> torch.Tensor:
    return torch.arange(batch, device=st.train.z_buf.device)


def time_mode(
    check: Check,
    cls: torch.Tensor,
    pat: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    peaks: dict[str, float],
) -> tuple[dict[str, Any], State]:
    """One configuration: timed iterations, FLOP/s, efficiency, peak memory, the pool-scaling model."""
    sh, dev = check.shapes, check.device
    precision, extra = GPU_MODES[mode]
    reset_peak_memory(dev)
    st = make_state(cls, pat, labels, precision, **extra)
    r = time_iterations(st, sh.batch, sh.repeats, sync=check.sync)
    fl = timed_flops(
        r, pool=sh.pool, batch=sh.batch, patches=sh.patches, dim=2 * sh.channels, precision=precision
    )
    ex = fl["executed"]
    train_peak = peaks["bf16" if extra.get("train_precision") == "bf16" else "fp32"]
    return {
        "precision": precision,
        "train_precision": extra.get("train_precision", "fp32"),
        "iter_s": r["iter_s"],
        "parts_s": r["parts_s"],
        "achieved_tflops": ex["total"] / r["iter_s"] / 1e12,
        "nominal_tflops": fl["nominal"]["total"] / r["iter_s"] / 1e12,
        "gemm_efficiency": ideal_seconds(ex, peaks[precision], train_peak) / r["iter_s"],
        "peak_memory_mb": peak_memory_mb(dev),
        "bank_images": r["bank_images"],
        "bank_in_batch": r["bank_in_batch"],
        "band_rows": r["band_rows"],
        "cost_model": rebuild_cost(r, ex, sh.pool),
    }, st


def time_bank_reuse(
    check: Check, cls: torch.Tensor, pat: torch.Tensor, labels: torch.Tensor, mode: str, rebuild_s: float
) -> dict[str, Any]:
    """bank_every > 1: the iterations between rebuilds (timed with bank_every 10, after its rebuild), and
    seconds per iteration for each k = (rebuild + (k - 1) reuse) / k. A reuse iteration scores only the
    batch; its bank search (`nearest` against the stale bank, timed alone) grows with the pool."""
    sh = check.shapes
    precision, extra = GPU_MODES[mode]
    assert 2 + sh.repeats <= max(BANK_EVERY), "the timed iterations must fall between two rebuilds"
    st = make_state(cls, pat, labels, precision, bank_every=max(BANK_EVERY), **extra)
    r = time_iterations(st, sh.batch, sh.repeats, warmup=2, sync=check.sync)
    s, bank = st.method.cfg, st.train.bank
    assert bank is not None and bank.gathered is not None
    gathered = bank.gathered
    query = st.train.z_buf[: sh.batch].reshape(-1, gathered.shape[1])
    search_s = time_call(lambda: _bank_search(query, gathered, s), check.sync, repeats=sh.repeats)
    reuse = r["iter_s"]
    return {
        "reuse_iter_s": reuse,
        "reuse_bank_search_s": search_s,
        "reuse_cost_model": {"fixed_s": max(0.0, reuse - search_s), "pool_s": search_s, "ref_pool": sh.pool},
        "iter_s": {str(k): (rebuild_s + (k - 1) * reuse) / k for k in (1, *BANK_EVERY)},
    }


def _bank_search(query: torch.Tensor, bank: torch.Tensor, s: Any) -> Any:
    """FunAD's bank search on an iteration without a rebuild (its `_search`, non-fused branch)."""
    from funad import search

    return search.nearest(
        query, bank, s.k, rerank=s.rerank, chunk=s.knn_chunk, precision=s.precision, backend=s.knn_backend
    )


def sync_points(check: Check, st: State) -> dict[str, Any]:
    """Sync points of one more iteration of `st`, by call site, on the path a GPU runs (torch search ops)."""
    idx = _first_batch(st, check.shapes.batch)
    counts: Counter[str] = Counter()
    with torch_search_ops(), count_sync_points(counts):
        st.iteration(idx)
    cuda = cuda_sync_count(check.device, lambda: st.iteration(idx))
    by_api: Counter[str] = Counter()
    for site, n in counts.items():
        by_api[site.split(" ", 1)[1]] += n
    return {
        "counted": sum(counts.values()),
        "by_api": dict(by_api),
        "by_site": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "cuda_syncs": cuda,
    }


def section_funad(check: Check) -> dict[str, Any]:
    sh, dev = check.shapes, check.device
    cls, pat, labels = check.pool_on_device()
    peaks = {
        p: device_matmul_peak(p, dev, sync=check.sync, shapes=sh.peak_shapes)
        for p in ("fp32", "tf32", "bf16")
    }
    progress(f"  matmul peaks {', '.join(f'{k} {v / 1e12:.2f}' for k, v in peaks.items())} TFLOP/s")
    modes: dict[str, Any] = {}
    net_state: dict[str, torch.Tensor] | None = None
    syncs: dict[str, Any] = {}
    for mode in GPU_MODES:
        modes[mode], st = time_mode(check, cls, pat, labels, mode, peaks)
        progress(f"  {mode}: {modes[mode]['iter_s']:.3f} s/iteration")
        if mode == "fp32":
            net_state = {k: v.clone() for k, v in st.train.net.state_dict().items()}
            syncs = sync_points(check, st)
        del st
        free_device_memory(dev)
    assert net_state is not None
    reference = labels_and_pairs(cls, pat, labels, net_state, sh.batch, "fp32")
    agreement = {
        p: precision_agreement(cls, pat, labels, net_state, sh.batch, p, reference=reference)
        for p in ("tf32", "bf16")
    }
    bank_every = {
        mode: time_bank_reuse(check, cls, pat, labels, mode, modes[mode]["iter_s"])
        for mode in BANK_EVERY_MODES
    }
    return {
        "shapes": {
            "pool": sh.pool,
            "batch": sh.batch,
            "patches": sh.patches,
            "channels": sh.channels,
            "dim": 2 * sh.channels,
        },
        "matmul_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "modes": modes,
        "agreement": agreement,
        "bank_every": bank_every,
        "sync_points_per_iteration": syncs,
    }


# ---- 3. searches -------------------------------------------------------------------------------
#: how distances of two backends are compared (both are fp32): twice the fp32 key-error model of
#: funad.search.KEY_SLACK, |d_a - d_b| <= 2 (rho max|d| + beta (||q||^2 + max ||b||^2)), raw norms
DISTANCE_RULE = (
    "indices equal; distances within twice funad.search.KEY_SLACK['fp32']: "
    "|d_a - d_b| <= 2 * (rho * max(|d_a|, |d_b|) + beta * (||q||^2 + max_b ||b||^2))"
)


def within_fp32_rounding(
    d_a: torch.Tensor, d_b: torch.Tensor, query: torch.Tensor, bank: torch.Tensor
) -> torch.Tensor:
    """[Q, k] bool: the two distances agree up to fp32 rounding (DISTANCE_RULE); equal infinities agree."""
    from funad.search import KEY_SLACK

    rho, beta = KEY_SLACK["fp32"]
    q_sq = query.float().square().sum(1)
    b_max = bank.float().square().sum(1).max()
    same_inf = torch.isinf(d_a) & torch.isinf(d_b)
    allow = 2.0 * (rho * torch.maximum(d_a.abs(), d_b.abs()) + beta * (q_sq[:, None] + b_max))
    return same_inf | ((d_a - d_b).abs() <= allow)


def compare_results(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    query: torch.Tensor,
    bank: torch.Tensor,
) -> dict[str, Any]:
    """Whether two backends' (distances, indices) are identical under DISTANCE_RULE."""
    (d_a, i_a), (d_b, i_b) = (tuple(t.to(query.device) for t in r) for r in (a, b))
    close = within_fp32_rounding(d_a.float(), d_b.float(), query, bank)
    finite = torch.isfinite(d_a) & torch.isfinite(d_b)
    same = bool(torch.equal(i_a, i_b))
    return {
        "same_indices": same,
        "index_agreement": float((i_a == i_b).float().mean()),
        "distances_within_rounding": bool(close.all()),
        "max_abs_dist_diff": float((d_a - d_b)[finite].abs().max()) if bool(finite.any()) else 0.0,
        "identical": same and bool(close.all()),
    }


Result = tuple[torch.Tensor, torch.Tensor]


def faiss_run(
    run: Callable[[str], Result], dev: torch.device, sync: Callable[[], None], repeats: int
) -> tuple[float, Result] | None:
    """(seconds, result) of run("faiss"), or None without faiss. Its index sits on the data's device
    (a GPU index for CUDA data where faiss sees a GPU): then warmed up and timed like torch; a CPU index
    for CUDA data (a CPU-only faiss on a GPU machine) is timed once, it is the slow side anyway."""
    from funad.search import faiss_available, faiss_gpus

    if not faiss_available():
        return None
    same_device = dev.type == "cpu" or faiss_gpus() > 0
    return timed(lambda: run("faiss"), sync, repeats if same_device else 1, warmup=1 if same_device else 0)


def backend_race(
    run: Callable[[str], Result],
    faiss: tuple[float, Result] | None,
    query: torch.Tensor,
    bank: torch.Tensor,
    sync: Callable[[], None],
    repeats: int,
) -> dict[str, Any]:
    """Seconds of run("torch") against faiss's (from `faiss_run`), their ratio, the faster, and identity."""
    torch_s, res = timed(lambda: run("torch"), sync, repeats)
    out: dict[str, Any] = {"query_rows": query.shape[0], "bank_rows": bank.shape[0], "torch_s": torch_s}
    if faiss is None:
        return {
            **out,
            "faiss_s": None,
            "ratio_faiss_torch": None,
            "faster": "torch",
            "reason": "faiss not installed",
        }
    faiss_s, faiss_res = faiss
    return {
        **out,
        "faiss_s": faiss_s,
        "ratio_faiss_torch": faiss_s / torch_s,
        "faster": "faiss" if faiss_s < torch_s else "torch",
        **compare_results(res, faiss_res, query, bank),
    }


def section_searches(check: Check) -> dict[str, Any]:
    from funad import search
    from funad.methods.coreset import coreset_size
    from funad.methods.patchcore import PatchCoreSettings

    sh, dev = check.shapes, check.device
    cls, pat, labels = check.pool_on_device()
    st = make_state(cls, pat, labels, "fp32")
    st.iteration(_first_batch(st, sh.batch))  # a bank as the data gives it
    query, bank = _query_and_bank(st, sh.batch)
    s = st.method.cfg

    def nearest(backend: str, precision: str = "fp32") -> Result:
        return search.nearest(
            query, bank, s.k, rerank=s.rerank, chunk=s.knn_chunk, precision=precision, backend=backend
        )

    faiss = faiss_run(nearest, dev, check.sync, sh.repeats)  # faiss ranks fp32 keys at any precision
    bank_search: dict[str, Any] = {"dim": query.shape[1], "k": s.k}
    for precision in ("fp32", "bf16"):
        race = backend_race(lambda b, p=precision: nearest(b, p), faiss, query, bank, check.sync, sh.repeats)
        bank_search[precision] = race
    del st
    # PatchCore's scoring search: the test patches against a coreset of the pool's patches (k = 1)
    _, host_pat, _ = check.host_features()
    rows = host_pat[: sh.pool].reshape(-1, sh.channels)
    ratio = PatchCoreSettings().coreset_ratio
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))
    memory = rows[pick[: coreset_size(rows.shape[0], ratio)]].float().to(dev)
    test = host_pat[sh.pool :].reshape(-1, sh.channels).float().to(dev)

    def knn(backend: str) -> Result:
        return search.knn(test, memory, 1, backend=backend)

    flat = backend_race(
        knn, faiss_run(knn, dev, check.sync, sh.repeats), test, memory, check.sync, sh.repeats
    )
    faiss_gpu = dev.type == "cuda" and search.faiss_gpus() > 0
    return {
        "device": device_label(dev),
        "faiss": {
            "available": search.faiss_available(),
            "gpus": search.faiss_gpus(),
            "index": ("gpu" if faiss_gpu else "cpu") if search.faiss_available() else None,
        },
        "bank_search": bank_search,
        "flat_knn": {"dim": sh.channels, "k": 1, "coreset_ratio": ratio, **flat},
        "auto_should_pick": {
            "funad_nearest_fp32": bank_search["fp32"]["faster"],
            "funad_nearest_bf16": bank_search["bf16"]["faster"],
            "patchcore_knn": flat["faster"],
        },
        "distance_rule": DISTANCE_RULE,
    }


# ---- 4. the Ray Tune sweep ---------------------------------------------------------------------
SWEEP_CATEGORIES = ("brick", "grass")
SWEEP_SEEDS = (0, 1)
SWEEP_METHOD = ("patchcore", {"coreset_ratio": 0.1})
SWEEP_NAME = "gpucheck"


def sweep_weights() -> str:
    """The bundled EfficientNet-Lite0 weights where their package is installed, else random weights."""
    from funad.features.backbone import BackboneError, bundled_weights_path

    try:
        bundled_weights_path()
    except BackboneError:
        return "random"
    return "bundled"


def sweep_spec(storage: Path, dev: torch.device, tiny: bool) -> dict[str, Any]:
    """2 synthetic categories x 2 seeds x PatchCore: half a GPU per trial on CUDA (two trials share it),
    one CPU of two on the CPU."""
    from funad.features import BUNDLED_BACKBONE

    gpu = dev.type == "cuda"
    name, settings = SWEEP_METHOD
    size = {"resize": 64, "crop": 64} if tiny else {"resize": 256, "crop": 224}
    return {
        "name": SWEEP_NAME,
        "storage": str(storage),
        "ray": {"address": None, "dashboard": False, **({} if gpu else {"num_cpus": 2})},
        "resources": {"cpu": 1, "gpu": 0.5} if gpu else {"cpu": 1},
        "max_failures": 0,
        "datasets": [{"kind": "synthetic", "categories": list(SWEEP_CATEGORIES)}],
        "backbone": {"name": BUNDLED_BACKBONE, "weights": sweep_weights(), **size},
        "contamination": {"ratios": [0.1], "overlap": False, "shortfall": "cap"},
        "seeds": list(SWEEP_SEEDS),
        "methods": {name: settings},
        "eval_every": 0,
        "report": False,
    }


def max_concurrent(intervals: Sequence[tuple[Any, Any]]) -> int:
    """The most intervals [start, end] that hold one instant in common (0 for none)."""
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], -ev[1])
    )
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


def section_sweep(check: Check) -> dict[str, Any]:
    import yaml

    from benchmarks.sweep_bench import read_results, run_sweep

    dev = check.device
    with tempfile.TemporaryDirectory(prefix="gpu-check-sweep-") as tmp:
        spec = sweep_spec(Path(tmp) / "runs", dev, check.tiny)
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        r = run_sweep(path, fresh=False, timeout_s=max(60.0, check.left_s()))
        run_dir = r["run_dir"] or str(Path(spec["storage"]) / SWEEP_NAME)
        try:
            df = read_results(run_dir)
        except FileNotFoundError as exc:
            raise RuntimeError(
                f"harness.sweep rc={r['rc']}, no results: {' | '.join(r['tail'][-5:])}"
            ) from exc
    intervals = list(zip(df["started_at"], df["finished_at"], strict=True))
    expected = len(SWEEP_CATEGORIES) * len(SWEEP_SEEDS)
    devices = sorted(set(df["device"].astype(str)))
    want = device_label(dev)
    gpu_mb = df["peak_gpu_mb"].dropna()
    return {
        "returncode": r["rc"],
        "driver_s": r["wall_s"],
        "spec": {k: spec[k] for k in ("ray", "resources", "datasets", "backbone", "seeds", "methods")},
        "cells": len(df),
        "expected_cells": expected,
        "statuses": df["status"].tolist(),
        "all_ok": len(df) == expected and bool((df["status"] == "ok").all()),
        "intervals": [[s.isoformat(), e.isoformat()] for s, e in intervals],
        "max_concurrent_cells": max_concurrent(intervals),
        "overlapping": max_concurrent(intervals) >= 2,
        "device_column": devices,
        "expected_device": want,
        "device_ok": devices == [want],
        "peak_gpu_mb": float(gpu_mb.max()) if len(gpu_mb) else None,
        "tail": r["tail"][-5:] if r["rc"] != 0 else [],
    }


# ---- 5. GPU-hours of sweeps/full.yaml ---------------------------------------------------------
@dataclass(frozen=True)
class CategorySize:
    """One row of benchmarks/dataset_sizes.csv."""

    dataset: str
    category: str
    train_normal: int
    test_normal: int
    test_anomalous: int

    @property
    def images(self) -> int:
        return self.train_normal + self.test_normal + self.test_anomalous


@dataclass(frozen=True)
class Contamination:
    """The sweep's contamination rule (defaults: funad.data.contamination.DEFAULTS)."""

    overlap: bool
    shortfall: str
    min_test_anomalies: int
    ratio_of: str


@dataclass(frozen=True)
class SweepGrid:
    """What the estimate needs from a sweep file: categories, ratios, seeds, each method's grid points."""

    categories: tuple[CategorySize, ...]
    ratios: tuple[float, ...]
    seeds: int
    methods: dict[str, list[dict[str, Any]]]
    contamination: Contamination


def read_sizes(path: Path = DATASET_SIZES) -> list[CategorySize]:
    """The per-category image counts; a malformed row is an error naming the file and line."""
    import csv

    out = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                counts = [int(row[k]) for k in ("train_normal", "test_normal", "test_anomalous")]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{path}:{line}: need integer train_normal, test_normal, test_anomalous"
                ) from exc
            out.append(CategorySize(row["dataset"], row["category"], *counts))
    return out


def expand_points(settings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A method's settings -> its grid points (a list value is swept: one point per combination)."""
    settings = settings or {}
    keys = [k for k, v in settings.items() if isinstance(v, list)]
    fixed = {k: v for k, v in settings.items() if k not in keys}
    return [
        {**fixed, **dict(zip(keys, combo, strict=True))}
        for combo in itertools.product(*(settings[k] for k in keys))
    ]


def read_grid(spec_path: Path = FULL_YAML, sizes: Sequence[CategorySize] | None = None) -> SweepGrid:
    """The grid of a sweep file, read from the file itself; categories from dataset_sizes.csv."""
    import yaml

    from funad.data.contamination import DEFAULTS

    spec = yaml.safe_load(Path(spec_path).read_text())
    sizes = list(read_sizes() if sizes is None else sizes)
    cats: list[CategorySize] = []
    for ds in spec["datasets"]:
        known = [s for s in sizes if s.dataset == ds["kind"]]
        wanted = ds.get("categories", "all")
        names = (
            [s.category for s in known]
            if wanted == "all"
            else ([wanted] if isinstance(wanted, str) else wanted)
        )
        missing = [n for n in names if n not in {s.category for s in known}]
        if not known or missing:
            raise ValueError(
                f"{spec_path}: dataset {ds['kind']!r} categories {missing or names} "
                f"have no counts in {DATASET_SIZES}"
            )
        cats += [s for s in known if s.category in names]
    con = spec.get("contamination", {})
    if "ratios" not in con:
        raise ValueError(f"{spec_path}: contamination.ratios missing (the estimate needs ratios, not counts)")
    rule = Contamination(
        overlap=bool(con.get("overlap", False)),
        shortfall=str(con.get("shortfall", DEFAULTS["shortfall"])),
        min_test_anomalies=int(con.get("min_test_anomalies", DEFAULTS["min_test_anomalies"])),
        ratio_of=str(con.get("ratio_of", DEFAULTS["ratio_of"])),
    )
    seeds = spec["seeds"]
    return SweepGrid(
        categories=tuple(cats),
        ratios=tuple(float(r) for r in con["ratios"]),
        seeds=len(seeds) if isinstance(seeds, list) else 1,
        methods={name: expand_points(settings) for name, settings in spec["methods"].items()},
        contamination=rule,
    )


def cell_shape(size: CategorySize, ratio: float, rule: Contamination) -> tuple[int, int]:
    """(pool, test) images of one cell as the contamination draws it: requested_count anomalies are asked
    for; without overlap min(min_test_anomalies, n_anomalous // 2) stay in the test set and only the rest
    can be drawn; "cap" injects what can be drawn, "augment" tops it up with copies, "error" refuses."""
    from funad.data.contamination import requested_count

    n = requested_count(ratio, size.train_normal, rule.ratio_of)
    anomalies = size.test_anomalous
    spare = anomalies if rule.overlap else anomalies - min(rule.min_test_anomalies, anomalies // 2)
    drawn = min(n, spare)
    if n > spare and (rule.shortfall == "error" or (rule.shortfall == "augment" and spare == 0)):
        raise ValueError(
            f"{size.dataset}/{size.category}: ratio {ratio} asks {n} anomalies, {spare} can be spared"
        )
    injected = n if rule.shortfall == "augment" else drawn
    test = size.test_normal + anomalies - (0 if rule.overlap else drawn)
    return size.train_normal + injected, test


def iterations_per_epoch(pool: int, batch: int) -> int:
    """FunAD.fit's batches per epoch with drop_last (a pool smaller than the batch is one batch)."""
    return pool // min(batch, pool)


@dataclass(frozen=True)
class LinearCost:
    """Seconds of one iteration at pool N: fixed_s + pool_s * N / ref_pool."""

    fixed_s: float
    pool_s: float
    ref_pool: int

    def at(self, pool: int) -> float:
        return self.fixed_s + self.pool_s * pool / self.ref_pool


@dataclass(frozen=True)
class FunADCost:
    """A FUN-AD configuration's iterations: one that rebuilds the bank, and (bank_every > 1) one that
    does not."""

    rebuild: LinearCost
    reuse: LinearCost | None = None

    def iter_s(self, pool: int, bank_every: int = 1) -> float:
        """Mean seconds per iteration: a rebuild every bank_every iterations."""
        if bank_every == 1:
            return self.rebuild.at(pool)
        if self.reuse is None:
            raise ValueError("bank_every > 1 needs the cost of an iteration without a rebuild")
        return (self.rebuild.at(pool) + (bank_every - 1) * self.reuse.at(pool)) / bank_every


def funad_cell_s(
    cost: FunADCost, settings: dict[str, Any], pool: int, bank_every: int | None = None
) -> float:
    """Training seconds of one FUN-AD cell: epochs x iterations per epoch x seconds per iteration."""
    from funad.methods.funad import FunADSettings

    s = FunADSettings(**settings)
    return s.epochs * iterations_per_epoch(pool, s.batch_size) * cost.iter_s(pool, bank_every or s.bank_every)


@dataclass(frozen=True)
class CellCost:
    """A method's measured cell (fit + score at ref_pool / ref_test images), scaled to other sizes:
    fit ~ pool^fit_exponent, score ~ pool x test (every test patch searched against a pool-sized memory)."""

    fit_s: float
    score_s: float
    ref_pool: int
    ref_test: int
    fit_exponent: float

    def at(self, pool: int, test: int) -> float:
        p = pool / self.ref_pool
        return self.fit_s * p**self.fit_exponent + self.score_s * p * test / self.ref_test


#: how each method's fit grows with the pool (its score: pool x test, see CellCost)
FIT_SCALING: dict[str, tuple[float, str]] = {
    "patchcore": (
        2.0,
        "greedy coreset: coreset_ratio x pool patches picks, each a pass over the pool's patches",
    ),
    "softpatch": (2.0, "LOF among the pool's images at every position, and PatchCore's greedy coreset"),
    "inreach": (1.0, "association: assoc_depth seeds x the pool's images, one P x P block per pair"),
}


def gpu_hours(
    grid: SweepGrid,
    funad: dict[str, FunADCost],
    cells: dict[str, CellCost],
    images_per_s: float | None = None,
    bank_every: Sequence[int] = BANK_EVERY,
) -> dict[str, Any]:
    """Device-hours of every cell of the grid (one trial on the device at a time), per method; FUN-AD per
    configuration in `funad` and, where its reuse cost is known, with each bank_every. The features stage
    (each image once through the backbone) at images_per_s."""
    shapes = [cell_shape(c, r, grid.contamination) for c in grid.categories for r in grid.ratios]
    seeds = grid.seeds
    out: dict[str, Any] = {"funad": None, "funad_bank_every": {}, "methods": {}}
    if "funad" in grid.methods and funad:
        points = grid.methods["funad"]
        out["funad"] = {
            mode: seeds * sum(funad_cell_s(cost, pt, pool) for pt in points for pool, _ in shapes) / 3600
            for mode, cost in funad.items()
        }
        out["funad_bank_every"] = {
            mode: {
                str(k): seeds
                * sum(funad_cell_s(cost, pt, pool, k) for pt in points for pool, _ in shapes)
                / 3600
                for k in bank_every
            }
            for mode, cost in funad.items()
            if cost.reuse is not None
        }
    for method, cost in cells.items():
        n_points = len(grid.methods.get(method, [{}]))
        out["methods"][method] = seeds * n_points * sum(cost.at(pool, test) for pool, test in shapes) / 3600
    out["features"] = (
        None if not images_per_s else sum(c.images for c in grid.categories) / images_per_s / 3600
    )
    out["cells"] = {m: len(shapes) * seeds * len(pts) for m, pts in grid.methods.items()}
    return out


def method_feature_sets(check: Check, method: str) -> tuple[Any, Any]:
    """(train, test) FeatureSets at the section's shapes: irmb_bench.synthetic_features, or for InReaCh the
    InReaCh benchmark's structured features (channels must form and survive its spread trim)."""
    from funad.features import FeatureSet

    sh = check.shapes
    n = sh.pool + sh.test
    if method == "inreach":
        from benchmarks.inreach_bench import structured_features

        fs = structured_features(n, sh.grid, sh.channels, 0)
    else:
        cls, pat, labels = check.host_features()
        fs = FeatureSet(
            [f"img{i}" for i in range(n)],
            cls.numpy(),
            pat.numpy().reshape(n, sh.grid, sh.grid, sh.channels),
            labels.numpy().astype(np.int8),
        )
    return fs.subset(np.arange(sh.pool)), fs.subset(np.arange(sh.pool, n))


def measure_cell(check: Check, method: str) -> dict[str, Any]:
    """fit + score of one cell with the method's default settings on the device, synchronised."""
    from funad.methods import create_method
    from funad.methods.base import FitContext

    train, test = method_feature_sets(check, method)
    m = create_method(method, {})
    ctx = FitContext(seed=0, device=str(check.device), map_size=check.shapes.map_size)
    reset_peak_memory(check.device)
    check.sync()
    t0 = time.perf_counter()
    m.fit(train, ctx)
    check.sync()
    t1 = time.perf_counter()
    m.score(test, ctx)
    check.sync()
    t2 = time.perf_counter()
    exponent, why = FIT_SCALING[method]
    return {
        "fit_s": t1 - t0,
        "score_s": t2 - t1,
        "pool": train.n,
        "test": test.n,
        "fit_exponent": exponent,
        "fit_rule": why,
        "peak_memory_mb": peak_memory_mb(check.device),
    }


def _funad_costs(funad: dict[str, Any]) -> dict[str, FunADCost]:
    reuse = {m: LinearCost(**r["reuse_cost_model"]) for m, r in funad.get("bank_every", {}).items()}
    return {m: FunADCost(LinearCost(**r["cost_model"]), reuse.get(m)) for m, r in funad["modes"].items()}


def _agreement_of(funad: dict[str, Any], mode: str) -> float:
    """Pseudo-label agreement of a configuration's search precision with fp32 (1 for fp32 itself)."""
    precision = GPU_MODES[mode][0]
    return 1.0 if precision == "fp32" else float(funad["agreement"][precision]["label_agreement"])


def recommend(totals: dict[str, float], funad: dict[str, Any]) -> dict[str, Any]:
    """The cheapest FUN-AD configuration whose pseudo-labels agree with fp32's (MIN_LABEL_AGREEMENT)."""
    ok = {m: t for m, t in totals.items() if _agreement_of(funad, m) >= MIN_LABEL_AGREEMENT}
    mode = min(ok, key=ok.__getitem__)
    precision, extra = GPU_MODES[mode]
    return {
        "mode": mode,
        "funad_settings": {
            "precision": precision,
            "train_precision": extra.get("train_precision", "fp32"),
            "bank_every": 1,
        },
        "total_gpu_hours": ok[mode],
        "target_gpu_hours": TARGET_GPU_HOURS,
        "meets_target": ok[mode] <= TARGET_GPU_HOURS,
        "label_agreement": _agreement_of(funad, mode),
        "why": (
            "the lowest total among configurations whose pseudo-labels agree with fp32's "
            f">= {MIN_LABEL_AGREEMENT}; "
            "bank_every stays 1 (it changes the method: a stale bank between rebuilds)"
        ),
    }


def section_estimate(check: Check) -> dict[str, Any]:
    grid = read_grid()
    measured: dict[str, Any] = {}
    cells: dict[str, CellCost] = {}
    for method in FIT_SCALING:
        try:
            measured[method] = measure_cell(check, method)
        except Exception as exc:  # one method's failure leaves the others' estimate
            measured[method] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        r = measured[method]
        cells[method] = CellCost(r["fit_s"], r["score_s"], r["pool"], r["test"], r["fit_exponent"])
        progress(f"  {method} cell: fit {r['fit_s']:.2f} s, score {r['score_s']:.2f} s")
        free_device_memory(check.device)
    funad = check.results.get("funad", {})
    feats = check.results.get("features", {})
    costs = _funad_costs(funad) if funad.get("ok") else {}
    hours = gpu_hours(grid, costs, cells, feats.get("images_per_s") if feats.get("ok") else None)
    yaml_methods = list(grid.methods)
    others = [m for m in yaml_methods if m != "funad"]
    totals: dict[str, float] | None = None
    if hours["funad"] is not None and all(m in hours["methods"] for m in others):
        rest = sum(hours["methods"][m] for m in others) + (hours["features"] or 0.0)
        totals = {mode: h + rest for mode, h in hours["funad"].items()}
    shapes = [cell_shape(c, r, grid.contamination) for c in grid.categories for r in grid.ratios]
    return {
        "grid": {
            "spec": str(FULL_YAML.relative_to(REPO)),
            "categories": len(grid.categories),
            "datasets": dict(Counter(c.dataset for c in grid.categories)),
            "ratios": list(grid.ratios),
            "seeds": grid.seeds,
            "methods": {m: len(p) for m, p in grid.methods.items()},
            "funad_epochs": [pt.get("epochs") for pt in grid.methods.get("funad", [])],
            "cells": hours["cells"],
            "pool_images": {"min": min(p for p, _ in shapes), "max": max(p for p, _ in shapes)},
            "test_images": {"min": min(t for _, t in shapes), "max": max(t for _, t in shapes)},
        },
        "measured_cells": measured,
        "gpu_hours": {"features": hours["features"], "funad": hours["funad"], **hours["methods"]},
        "in_full_yaml": yaml_methods,
        "total_gpu_hours": totals,
        "bank_every_gpu_hours": hours["funad_bank_every"],
        "bank_every_saving_gpu_hours": {
            mode: {k: hours["funad"][mode] - h for k, h in per.items()}
            for mode, per in hours["funad_bank_every"].items()
        },
        "recommended": recommend(totals, funad) if totals else None,
        "rules": {
            "pool": "floor(ratio x train normals) injected (funad.data.contamination.requested_count), "
            "capped so min(min_test_anomalies, anomalies // 2) test anomalies stay",
            "funad": "epochs x pool // batch iterations; an iteration = fixed (training step, pair search) + "
            "pool-proportional (pool scoring, bank search: its share of the fused search by executed FLOPs) "
            "seconds, measured at the bottle pool and scaled linearly; "
            "bank_every k: (rebuild + (k-1) reuse) / k",
            **{m: f"fit ~ pool^{e:g} ({why}); score ~ pool x test" for m, (e, why) in FIT_SCALING.items()},
            "features": "every image of the grid's categories once through the backbone at the "
            "measured images/s",
            "total": "features + FUN-AD (per configuration) + the other methods of the sweep file; one trial "
            "on the device at a time (two trials per GPU overlap only where one leaves it idle)",
        },
    }


# ---- driver ------------------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "features": section_features,
    "funad": section_funad,
    "searches": section_searches,
    "sweep": section_sweep,
    "estimate": section_estimate,
}


def run_section(check: Check, name: str, fn: Callable[[Check], dict[str, Any]]) -> dict[str, Any]:
    """fn's figures with ok/section_s, or its error; never raises (the other sections still run)."""
    if check.left_s() <= 0:
        progress(f"[{name}] skipped: the {check.budget_s:.0f} s budget is spent")
        return {
            "ok": False,
            "skipped": f"budget of {check.budget_s:.0f} s spent after {check.elapsed_s():.0f} s",
        }
    progress(f"[{name}] start ({check.left_s():.0f} s of the budget left)")
    t0 = time.perf_counter()
    try:
        res = {"ok": True, **fn(check)}
    except Exception as exc:
        res = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc().strip().splitlines()[-8:],
        }
    res["section_s"] = time.perf_counter() - t0
    free_device_memory(check.device)
    progress(f"[{name}] {'ok' if res['ok'] else 'FAILED: ' + res['error']} in {res['section_s']:.1f} s")
    return res


def run_check(device: str, *, tiny: bool, budget_s: float) -> dict[str, Any]:
    """Every section on `device` (already checked), as one JSON-ready dict."""
    from benchmarks.run import provenance

    dev = torch.device(device)
    check = Check(dev, tiny, budget_s)
    prov = provenance()
    prov["command"] = " ".join(
        [os.path.basename(sys.executable), "-m", "benchmarks.gpu_check", *sys.argv[1:]]
    )
    for name, fn in SECTIONS.items():
        check.results[name] = run_section(check, name, fn)
    return {
        "check": "gpu_check",
        "device": dev.type,
        "device_name": device_label(dev),
        "tiny": tiny,
        "budget_s": budget_s,
        "wall_s": check.elapsed_s(),
        "provenance": prov,
        "failed_sections": [n for n, r in check.results.items() if not r["ok"] and "skipped" not in r],
        "skipped_sections": [n for n, r in check.results.items() if "skipped" in r],
        **check.results,
    }


def _jsonable(x: Any) -> Any:
    """numpy scalars as numbers; anything else json cannot write (paths) as its text."""
    return x.item() if isinstance(x, np.generic) else str(x)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default; cuda:N) or cpu")
    p.add_argument(
        "--tiny", action="store_true", help="tiny shapes: a smoke run of every section (the CPU test)"
    )
    p.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="no section starts after this many s"
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    args = p.parse_args(argv)
    why = cuda_unavailable(args.device)
    if why:
        print(f"gpu_check: {why}", file=sys.stderr)
        return EXIT_NO_DEVICE
    result = run_check(args.device, tiny=args.tiny, budget_s=args.budget_s)
    text = json.dumps(result, default=_jsonable)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text, flush=True)
    return 0 if not result["failed_sections"] and not result["skipped_sections"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
