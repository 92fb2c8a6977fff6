"""Memory per extra concurrent trial at REAL feature sizes: are the memory-mapped features shared?

The requirement: N concurrent trials of one category on one node do not hold N copies of that
category's features. Features are fp16 packs in the feature cache, opened with np.memmap
(FeatureSet.cls / .patches are views into them), so every trial should map the SAME page-cached file.
sweep_bench measures this on the built-in synthetic set (24 MB of features), where one trial's own
interpreter and working memory hide any copy. Here the features are as large as a real
category's: ViT-B/8 DINO at 224 px, [1 + 28*28, 768] fp16 = 1.2 MB per image, n_train + n_test images.

How: a `folder` dataset of tiny random PNGs is written to disk and the feature cache is filled for it
with the real cache code (entries for the images' content keys, with structured fp16 features:
prototypes + noise), then the category's pack, which the features stage and every trial open, is
built by funad.features.extract_features itself; no backbone weights are needed (the extractor is only built
for a missing entry) and the sweep must print "features: 0 backbone forwards". Then the REAL sweep CLI
(`python -m harness.sweep`, via sweep_bench.run_sweep) runs each method config three times: 2 cells
(seeds 0 and 1, contamination ratio 0.1, so each split is a scattered subset of the category, as in
real sweeps) with at most 1 trial at a time, the same 2 cells with 2 at a time, and 2 cells of a
half-size category 1 at a time (see below). The sweep's processes run with a fixed glibc mmap
threshold (MALLOC_ENV below; --default-malloc turns it off) so that freed buffers leave the process
at once and its peaks are live memory, not allocator slack. Every 0.5 s every process of the
sweep's tree (driver, GCS, raylet, workers) is read from /proc:
  * smaps_rollup Rss / Pss / Anonymous of the process;
  * from smaps, Rss and Pss of the mappings whose file lies in the feature cache (the packs).
Only samples inside the trial window (first cell start .. last cell end, from the results rows) count.

Why several numbers: RSS counts a mapped pack's pages once in EVERY process that touched them, so the
RSS of two trials shows two "copies" even when the pages are shared. PSS splits each shared page
between the processes that map it: the pack mappings' PSS sum stays at one pack size however many
trials map it, and doubles only if each trial maps a different file (e.g. a pack replaced by another
writer while mapped). A private copy of the features (np.array(fs.patches), .float(), ...) is
anonymous memory, never a file mapping. Two bounds on such a copy:
  * `feature_copies_upper_bound` (sampled): the anonymous memory a trial process's first cell adds
    over the process's baseline (its anonymous memory just before it mapped a pack), minus the
    buffers the method allocates by design (predicted from shapes), over one copy of the features;
    per-batch transients and allocator slack are in it too, so it overstates.
  * `feature_copies_per_extra_trial` (exact peaks): a third run per config, on a half-size category,
    gives the harness's own per-cell peak RSS (VmHWM, reset at each cell's start, so not sampled) of a
    fresh worker's first cell at two data sizes. Interpreter and n-independent transients cancel in
    the difference; what is left beyond the mapped packs (measured) and the predicted buffers, over
    the difference in features, is the number of private O(N) feature copies one more trial holds
    (0 = it only reads the shared pack, 1 = an fp16 copy, 2 = an fp32 copy). The largest over the
    configs is reported; `feature_copies_noise` is the spread of the same peak between the two
    identical-shape cells of the 2-trial run, in the same unit.
Known limits: the tree sums are not atomic snapshots: processes are read one after another, so while
two trials first touch the pack, one can be read as its sole mapper and the other after both mapped
it, and the PSS peak can then show up to 1.5 packs although the kernel's PSS never exceeds one file
(same file and inode, no deleted mappings); the RSS doubling and feature_files_mapped are the steadier
signals. In the scaling estimate the mapped RSS is the process's largest (after scoring touched the
test rows); when the peak comes earlier (PatchCore's greedy coreset) that overstates the mapped part
and biases the copies low, and scoring's map blur temporaries (in grid_to_maps, not in the predicted
buffers) bias it high for a config whose peak is in scoring (patchcore_embed64).
Every value is measured in the run; when the harness cannot run, the keys are None and "reason" says
why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sweep_bench import read_results, run_sweep
from rundir import EXIT_FAILED, EXIT_OK

#: the real-size backbone: ViT-B/8 DINO, 28x28 grid of 768-channel tokens (+ CLS)
BACKBONE: dict[str, Any] = {"name": "vit_base_patch8_224.dino", "weights": "hub", "resize": 224, "crop": 224}
CATEGORY = "noise"
#: the same at half the size: what grows with the data separates from per-cell constants
CATEGORY_HALF = "noise_half"
#: method configs: name -> (registered method, settings). Small knobs only keep a cell short on 2 CPUs:
#: FUN-AD does one epoch with small batches, one pool pass (bank_every) and a small bank, with the pool
#: scoring and searches in bf16 (z_buf is bf16). Its training step stays fp32 (the default): under
#: bf16 autocast oneDNN keeps a kernel per band size, bounded since FunAD pads the band rows
#: (funad.methods.funad._bucket_rows) but still a per-process cost that is not features.
#: PatchCore keeps a 1 % coreset (the paper's low end) instead of 10 %, which only shrinks the bank
#: and the greedy loop, not the aggregated pool.
#: patchcore_embed64 shrinks the method's own working set (pool width 64) so a copy would stand out.
METHOD_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "patchcore": ("patchcore", {"coreset_ratio": 0.01}),
    "patchcore_embed64": ("patchcore", {"coreset_ratio": 0.01, "embed_dim": 64}),
    "funad": (
        "funad",
        {
            "epochs": 1,
            "precision": "bf16",
            "train_precision": "fp32",
            "batch_size": 8,
            "bank_every": 1000,
            "keep_ratio": 0.1,
        },
    ),
}
MB = 2**20
#: glibc's fixed mmap threshold, set for the sweep's processes by default: every buffer of at least
#: this size is its own mapping, returned to the OS when freed. With glibc's default (a threshold that
#: rises to 32 MB after the first large free) freed blocks stay in the heap, more so in non-main
#: arenas (Tune runs the trial function in a thread): an allocator slack that grows with the number
#: of chunks, i.e. with n, and would read as copies (see benchmarks/RESULTS.md).
MALLOC_ENV = "MALLOC_MMAP_THRESHOLD_"
DEFAULT_MMAP_THRESHOLD = 1 << 20
_HEX = frozenset("0123456789abcdef")


# ---------------------------------------------------------------------------------------------
# /proc readers


@dataclass
class ProcMemory:
    """One process at one instant, in kB: totals and the part mapped from the feature cache."""

    rss_kb: int = 0
    pss_kb: int = 0
    anon_kb: int = 0
    feat_rss_kb: int = 0
    feat_pss_kb: int = 0
    #: (path, inode, deleted) of every feature-cache file this process maps
    feat_files: set[tuple[str, int, bool]] = field(default_factory=set)


def read_rollup(pid: int) -> dict[str, int]:
    """smaps_rollup fields in kB (Rss, Pss, Anonymous, ...): one kernel walk for the whole process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line[:1] in _HEX:  # the header line (address range)
                continue
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[-1] == "kB":
                out[name] = int(parts[0])
    return out


def read_file_mappings(pid: int, prefix: str) -> tuple[int, int, set[tuple[str, int, bool]]]:
    """(Rss kB, Pss kB, files) summed over the mappings of files under `prefix` (smaps).

    A mapping whose file was replaced or deleted shows as "<path> (deleted)": such a pack is no longer
    the one other processes open, so its pages cannot be shared with them.
    """
    rss = pss = 0
    files: set[tuple[str, int, bool]] = set()
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[:1] in _HEX:
                parts = line.split(maxsplit=5)
                path = parts[5].rstrip("\n") if len(parts) == 6 else ""
                inside = path.startswith(prefix)
                if inside:
                    deleted = path.endswith(" (deleted)")
                    files.add((path.removesuffix(" (deleted)"), int(parts[4]), deleted))
            elif inside:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss, files


def read_process(pid: int, prefix: str) -> ProcMemory | None:
    """ProcMemory of `pid`, or None when it is gone or unreadable."""
    try:
        roll = read_rollup(pid)
        frss, fpss, files = read_file_mappings(pid, prefix)
    except (OSError, ValueError, IndexError):
        return None
    return ProcMemory(
        rss_kb=roll.get("Rss", 0),
        pss_kb=roll.get("Pss", roll.get("Rss", 0)),
        anon_kb=roll.get("Anonymous", 0),
        feat_rss_kb=frss,
        feat_pss_kb=fpss,
        feat_files=files,
    )


# ---------------------------------------------------------------------------------------------
# Sampling the sweep's process tree


@dataclass
class Sample:
    """Every process of the tree at one instant (wall-clock time, for the results' timestamps)."""

    t: float
    procs: dict[int, ProcMemory]

    def total(self, attr: str) -> int:
        return sum(getattr(p, attr) for p in self.procs.values())


def _environ(pid: int) -> dict[str, str]:
    """The environment a process started with ({} when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


class TreeSampler:
    """Samples the process tree of this process's `harness.sweep` child every `interval` seconds.

    run_sweep starts the CLI itself, so the root is found among our children by its command line.
    """

    def __init__(self, feature_dir: Path, interval: float = 0.5) -> None:
        self.prefix = os.path.realpath(feature_dir) + os.sep
        self.interval = interval
        self.samples: list[Sample] = []
        #: pid -> the value of MALLOC_ENV in that process's environment (None: unset or unreadable)
        self.malloc_env: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _root(self) -> Any:
        import psutil

        for child in psutil.Process().children():
            try:
                if "harness.sweep" in child.cmdline():
                    return child
            except psutil.Error:
                continue
        return None

    def _loop(self) -> None:
        import psutil

        root = None
        while not self._stop.is_set():
            try:
                root = root if root is not None and root.is_running() else self._root()
                if root is not None:
                    procs = [root, *root.children(recursive=True)]
                    t = time.time()
                    mem = {p.pid: m for p in procs if (m := read_process(p.pid, self.prefix)) is not None}
                    for pid in mem.keys() - self.malloc_env.keys():
                        self.malloc_env[pid] = _environ(pid).get(MALLOC_ENV)
                    if mem:
                        self.samples.append(Sample(t, mem))
            except psutil.Error:
                root = None
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def summarize_samples(
    samples: Sequence[Sample],
    t0: float,
    t1: float,
    cells_by_pid: dict[int, list[tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    """Peaks of the tree sums inside [t0, t1] and, per trial process, what its first cell added.

    A trial process is one that maps feature-cache files inside the window. Baseline = its anonymous
    memory at the last sample before it first mapped a pack (interpreter, imports, the idle worker);
    `added_anon_mb` = its peak anonymous memory from then to the end of its first cell (from
    `cells_by_pid`: (start, end) of each cell a process ran; without it, to t1). Later cells of a
    reused worker start on the allocator's leftovers of the first, so they are left out.
    """
    win = [s for s in samples if t0 <= s.t <= t1]
    if not win:
        raise RuntimeError(f"no memory samples inside the trial window ({len(samples)} samples in all)")
    peaks = {
        f"peak_{name}_mb": max(s.total(f"{name}_kb") for s in win) / 1024
        for name in ("rss", "pss", "anon", "feat_rss", "feat_pss")
    }
    trial_pids = sorted({pid for s in win for pid, m in s.procs.items() if m.feat_rss_kb > 0})
    trials = []
    for pid in trial_pids:
        cells = sorted((cells_by_pid or {}).get(pid, []))
        end = cells[0][1] if cells else t1
        first = next(
            i for i, s in enumerate(samples) if s.t >= t0 and pid in s.procs and s.procs[pid].feat_rss_kb > 0
        )
        before = [s.procs[pid].anon_kb for s in samples[:first] if pid in s.procs]
        mine = [s.procs[pid] for s in samples[first:] if s.t <= end and pid in s.procs] or [
            samples[first].procs[pid]
        ]
        base = before[-1] / 1024 if before else None
        peak = max(m.anon_kb for m in mine) / 1024
        trials.append(
            {
                "pid": pid,
                "cells": len(cells) if cells else None,
                "baseline_anon_mb": base,
                "peak_anon_mb": peak,
                "added_anon_mb": None if base is None else peak - base,
                "peak_feat_rss_mb": max(m.feat_rss_kb for m in mine) / 1024,
            }
        )
    files = {f for s in win for m in s.procs.values() for f in m.feat_files}
    return {
        **peaks,
        "max_processes": max(len(s.procs) for s in win),
        "samples_in_window": len(win),
        "window_s": t1 - t0,
        "trial_processes": trials,
        "feature_files_mapped": len({(p, ino) for p, ino, _ in files}),
        "deleted_feature_mappings": sorted({p for p, _, d in files if d}),
    }


# ---------------------------------------------------------------------------------------------
# Dataset and feature cache


def write_dataset(
    root: Path, n_train: int, n_test: int, *, category: str = CATEGORY, size: int = 32, seed: int = 0
) -> dict[str, int]:
    """A fixed-split `folder` category of random-noise PNGs, distinct bytes per file.

    <root>/<category>/train/normal, test/normal, test/anomaly; a third of the test set is anomalous.
    Give each category its own seed: the seed and the file's index are stamped into its first pixels.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    n_anom = n_test // 3
    groups = {"train/normal": n_train, "test/normal": n_test - n_anom, "test/anomaly": n_anom}
    idx = 0
    for sub, n in groups.items():
        d = root / category / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            px[0, 0] = [(idx >> 16) & 255, (idx >> 8) & 255, idx & 255]  # distinct even on a collision
            px[0, 1] = [(seed >> 16) & 255, (seed >> 8) & 255, seed & 255]
            Image.fromarray(px).save(d / f"{i:04d}.png")
            idx += 1
    return {"n_train": n_train, "n_test_normal": n_test - n_anom, "n_test_anomalous": n_anom}


def synthetic_features(
    n_tokens: int, channels: int, rng: np.random.Generator, prototypes: np.ndarray, anomalous: bool
) -> np.ndarray:
    """[n_tokens, C] fp16, CLS first: each patch a prototype + noise; anomalies get a foreign block.

    Values stay O(1), so k-NN distances, FUN-AD's scores and PatchCore's coreset behave normally.
    """
    n_patch = n_tokens - 1
    side = int(round(n_patch**0.5))
    pick = rng.integers(0, len(prototypes) - 1, n_patch)  # the last prototype is the "defect"
    patches = prototypes[pick] + 0.3 * rng.standard_normal((n_patch, channels), dtype=np.float32)
    if anomalous and side * side == n_patch:
        grid = patches.reshape(side, side, channels)  # a view: the block lands in `patches`
        b = max(1, side // 4)
        r, c = rng.integers(0, side - b + 1, 2)
        noise = rng.standard_normal((b, b, channels), dtype=np.float32)
        grid[r : r + b, c : c + b] = prototypes[-1] + 0.3 * noise
    cls = patches.mean(axis=0) + 0.05 * rng.standard_normal(channels, dtype=np.float32)
    return np.concatenate([cls[None], patches]).astype(np.float16)


def populate_cache(
    dataset_root: Path,
    cache_dir: Path,
    backbone: dict[str, Any] = BACKBONE,
    *,
    category: str = CATEGORY,
    seed: int = 0,
    build_packs: bool = True,
) -> dict[str, Any]:
    """Fill the real feature cache for every image of a folder category, without any backbone.

    Writes one entry per image (FeatureCache.write_entry under entry_key(path, None)), then, when
    build_packs, lets extract_features build the category's pack: what the features stage opens
    and what every trial reads its split from (funad.run.run_cell, `within=`). No split pack is
    built here, so a trial that wrote its own would show up as a second mapped file. Raises if
    that made a single backbone forward.
    """
    from funad import features
    from funad.features import BackboneConfig, entry_key, feature_dim
    from funad.features.cache import open_cache, pack_key
    from funad.run import open_dataset

    cfg = BackboneConfig(**backbone)
    gh, gw, c = feature_dim(cfg)
    cache = open_cache(Path(cache_dir), cfg)
    shape = cache.entry_shape
    dataset_spec = {"kind": "folder", "root": str(dataset_root)}
    records = open_dataset(dataset_spec).records(category)
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((9, c), dtype=np.float32)
    entry_bytes = 0
    for r in records:
        key = entry_key(r.path, None)
        cache.write_entry(key, synthetic_features(shape[0], c, rng, prototypes, r.label == 1))
        entry_bytes += cache.entry_paths(key)[0].stat().st_size
    packs: dict[str, float] = {}
    if build_packs:
        before = features.forward_count()
        features.extract_features(records, cfg, Path(cache_dir), progress=False)
        keys = [entry_key(r.path, None) for r in records]
        packs["category_pack_mb"] = cache.pack_paths(pack_key(keys))[0].stat().st_size / MB
        made = features.forward_count() - before
        if made:
            raise RuntimeError(f"populate_cache: extract_features made {made} backbone forwards")
    return {
        "cache_root": str(cache.root),
        "entry_shape": list(shape),
        "grid": [gh, gw],
        "images": len(records),
        "category_features_mb": entry_bytes / MB,
        **packs,
    }


# ---------------------------------------------------------------------------------------------
# The methods' own working sets, from shapes


def predicted_working_set(
    method: str,
    params: dict[str, Any],
    *,
    n_train: int,
    n_test: int,
    grid: tuple[int, int],
    channels: int,
    bank_images: float | None = None,
) -> dict[str, float]:
    """The dominant buffers a method allocates by design (MB, parts + "total_mb"), read off its code.

    FUN-AD (methods/funad.py fit): z_buf [n, P, 2C] in the search dtype, Local-Net weights with their
    gradients and RMSprop state (x4 fp32), the batch's fp32 raw features, and with bank_every > 1 the
    gathered bank [bank_images * P, 2C] (bank_images from the run's diag_bank_images).
    PatchCore (methods/patchcore.py): the aggregated fp32 pool [n, P, D] (D = min(embed_dim, C)), the
    JL projection [n*P, proj], the greedy vectors, the bank, and the embedding chunk's fp32 temporaries
    (16 images: raw, 3x3 average, the channel-pool reshape copy); scoring holds the bank, the test
    pool and a knn block. The larger of fit and score is the working set.
    """
    from funad.methods import create_method

    settings = create_method(method, params).settings
    p = grid[0] * grid[1]
    parts: dict[str, float] = {}
    if method == "funad":
        from funad.methods.localnet import HIDDEN
        from funad.search import search_dtype

        dim = 2 * channels
        item = torch_itemsize(search_dtype(settings.precision))
        widths = (dim, dim, *HIDDEN, 1)
        n_params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
        bs = min(settings.batch_size, n_train)
        parts["z_buf"] = n_train * p * dim * item / MB
        parts["localnet_weights_grads_rmsprop"] = 4 * n_params * 4 / MB
        parts["batch_fp32_features"] = bs * (p + 1) * channels * 4 / MB
        if settings.bank_every > 1 and bank_images:
            parts["gathered_bank"] = bank_images * p * dim * item / MB
        parts["total_mb"] = sum(parts.values())
        return parts
    if method in ("patchcore", "softpatch"):
        from funad.methods.coreset import coreset_size

        d = channels if settings.embed_dim is None or settings.embed_dim >= channels else settings.embed_dim
        rows = n_train * p
        proj = settings.coreset_projection
        bank_rows = coreset_size(rows, settings.coreset_ratio)
        per_image = (2 + (d < channels)) * p * channels * 4 / MB  # embed_patches' chunk of 16 images
        temporaries, test_temporaries = min(16, n_train) * per_image, min(16, n_test) * per_image
        parts["aggregated_pool"] = rows * d * 4 / MB
        parts["embed_chunk_temporaries"] = temporaries
        width = proj if 0 < proj < d else d
        parts["projection"] = rows * proj * 4 / MB if 0 < proj < d else 0.0
        parts["greedy_square_temporary"] = rows * width * 4 / MB  # sq = (x * x).sum(1)
        parts["greedy_vectors_and_candidates"] = rows * (4 + 4 + 8) / MB
        parts["bank"] = bank_rows * d * 4 / MB
        greedy_parts = ("projection", "greedy_square_temporary", "greedy_vectors_and_candidates")
        greedy = sum(parts[k] for k in greedy_parts)
        fit = parts["aggregated_pool"] + max(temporaries, greedy + parts["bank"])
        knn_blocks = 5 * min(4096, n_test * p) * bank_rows * 4 / MB  # distance-block temporaries
        score = parts["bank"] + n_test * p * d * 4 / MB + max(test_temporaries, knn_blocks)
        parts["fit_mb"], parts["score_mb"] = fit, score
        parts["total_mb"] = max(fit, score)
        return parts
    raise ValueError(f"no working-set model for method {method!r}")


def torch_itemsize(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------------------------
# The benchmark


def _spec(tmp: Path, config: str, concurrent: int, category: str, ratio: float) -> Path:
    """The sweep file of one run: one category, one ratio, seeds [0, 1], one method config."""
    import yaml

    method, params = METHOD_CONFIGS[config]
    spec = {
        "name": f"mem-{config}-{category}-c{concurrent}",
        "storage": str(tmp / "runs"),
        "feature_cache": str(tmp / "features"),
        "ray": {"address": None, "dashboard": False},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": concurrent,
        "max_failures": 0,
        "datasets": [{"kind": "folder", "root": str(tmp / "data"), "categories": [category]}],
        "backbone": dict(BACKBONE),
        "contamination": {"ratios": [ratio], "overlap": False, "shortfall": "cap"},
        "seeds": [0, 1],
        "methods": {method: dict(params)},
        "eval_every": 0,
        "report": False,
    }
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tune_pids(run_dir: str) -> dict[str, int]:
    """cell_id -> pid of the worker process that ran it, from Tune's result.json of each trial."""
    out: dict[str, int] = {}
    for path in Path(run_dir).glob("tune/*/*/result.json"):
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            last = json.loads(lines[-1])
            out[str(last["config"]["cell_id"])] = int(last["pid"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
    return out


def measure_run(
    tmp: Path,
    config: str,
    concurrent: int,
    *,
    category: str = CATEGORY,
    ratio: float = 0.1,
    mmap_threshold: int | None = DEFAULT_MMAP_THRESHOLD,
    timeout_s: float,
) -> dict[str, Any]:
    """One sweep run under the sampler: its CLI facts, results and memory summary.

    mmap_threshold: glibc's MALLOC_MMAP_THRESHOLD_ for the sweep's processes (None: glibc default).
    """
    import pandas as pd

    spec = _spec(tmp, config, concurrent, category, ratio)
    old = os.environ.get(MALLOC_ENV)
    if mmap_threshold is not None:
        os.environ[MALLOC_ENV] = str(int(mmap_threshold))
    else:
        os.environ.pop(MALLOC_ENV, None)
    try:
        with TreeSampler(tmp / "features") as sampler:
            r = run_sweep(spec, fresh=True, timeout_s=timeout_s)
    finally:
        if old is None:
            os.environ.pop(MALLOC_ENV, None)
        else:
            os.environ[MALLOC_ENV] = old
    if r["rc"] != 0 or r["run_dir"] is None:
        tail = " | ".join(r["tail"][-6:])
        raise RuntimeError(f"{config} {category} c={concurrent}: harness.sweep rc={r['rc']}: {tail}")
    res = read_results(r["run_dir"]).sort_values("started_at")
    t0 = min(ts.timestamp() for ts in res["started_at"])
    t1 = max(ts.timestamp() for ts in res["finished_at"])
    pids = tune_pids(r["run_dir"])
    cells = [
        {
            "cell_id": row.cell_id,
            "seed": int(row.seed),
            "pid": pids.get(row.cell_id),
            "started": row.started_at.timestamp(),
            "finished": row.finished_at.timestamp(),
            # the harness's own per-cell peak: VmHWM, reset at the cell's start (exact, not sampled)
            "peak_rss_mb": float(row.peak_rss_mb),
        }
        for row in res.itertuples()
    ]
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for c in cells:
        if c["pid"] is not None:
            by_pid.setdefault(c["pid"], []).append((c["started"], c["finished"]))
    mem = summarize_samples(sampler.samples, t0, t1, by_pid)
    bank = [c for c in res.columns if c == "diag_bank_images"]
    trial_env = sorted({str(sampler.malloc_env.get(t["pid"])) for t in mem["trial_processes"]})
    return {
        "cells": cells,
        # the split sizes the methods saw (pool = train normals + injected anomalies)
        "n_train_pool": int((res["n_train_normal"] + res["n_injected"]).max()),
        "n_test": int((res["n_test_normal"] + res["n_test_anomalous"]).max()),
        f"trial_{MALLOC_ENV}": trial_env,
        "forwards": r["forwards"],
        "driver_wall_s": r["wall_s"],
        "cells_ok": int((res["status"] == "ok").sum()),
        "trial_wall_s": [float(x) for x in res["wall_s"]],
        "trial_peak_rss_mb_harness": float(res["peak_rss_mb"].max()),
        "image_auroc": [None if pd.isna(x) else float(x) for x in res["image_auroc"]],
        "bank_images": float(res[bank[0]].max()) if bank else None,
        **mem,
    }


def _added(run: dict[str, Any]) -> float | None:
    """The largest anonymous memory a trial process of this run added over its own baseline (sampled)."""
    added = [t["added_anon_mb"] for t in run["trial_processes"] if t["added_anon_mb"] is not None]
    return max(added) if added else None


def _cell_peaks(run: dict[str, Any]) -> list[tuple[float, float | None]]:
    """(kernel peak RSS, its process's mapped-pack RSS) of each cell run first in its worker process.

    Those cells start on a fresh worker, so their peaks compare across runs; a reused worker's later
    cells start on the allocator's leftovers. The mapped-pack RSS comes from the sampler (None when
    the process was never sampled with a pack mapped).
    """
    mapped = {t["pid"]: t["peak_feat_rss_mb"] for t in run["trial_processes"]}
    seen: set[Any] = set()
    out = []
    for c in sorted(run["cells"], key=lambda c: c["started"]):
        if c["pid"] is None or c["pid"] in seen:
            continue
        seen.add(c["pid"])
        out.append((c["peak_rss_mb"], mapped.get(c["pid"])))
    return out


def _per_config(
    one: dict[str, Any],
    two: dict[str, Any],
    half: dict[str, Any],
    ws: dict[str, float],
    ws_half: dict[str, float],
    feats_mb: float,
    feats_half_mb: float,
) -> dict[str, Any]:
    """Compare the 1-trial and 2-trial runs of one config, and the full and half-size 1-trial runs.

    Scaling estimate, from the harness's exact per-cell peak RSS (VmHWM) of a fresh worker's cell:
    peak = interpreter + the mapped packs (shared file pages, counted in this process's RSS) + the
    method's buffers + n-independent transients (batches, chunks, allocator slack) + any feature copy.
    Between the full and the half-size category the interpreter and the transients cancel, so
    (d peak - d mapped - d predicted buffers) / d features is the number of private feature copies a
    trial holds (~0 when it only reads the shared pack; 1 per fp16 copy, 2 per fp32 copy).
    """
    extra = {m: two[f"peak_{m}_mb"] - one[f"peak_{m}_mb"] for m in ("rss", "pss", "anon")}
    added_one, added_two = _added(one), _added(two)
    unexplained = None if added_two is None else added_two - ws["total_mb"]
    d_feat = feats_mb - feats_half_mb
    d_ws = ws["total_mb"] - ws_half["total_mb"]
    full1, half1, full2 = _cell_peaks(one), _cell_peaks(half), _cell_peaks(two)
    f1, h1 = (full1[0] if full1 else (None, None)), (half1[0] if half1 else (None, None))
    scaling: dict[str, Any] = {
        "first_cell_peak_rss_mb": {"full": f1[0], "half": h1[0], "two_trials_full": [p for p, _ in full2]},
        "mapped_pack_rss_mb": {"full": f1[1], "half": h1[1]},
        "predicted_working_set_mb": {"full": ws["total_mb"], "half": ws_half["total_mb"]},
        "category_features_mb": {"full": feats_mb, "half": feats_half_mb},
    }
    copies = copies_two = None
    if full1 and half1 and None not in (full1[0][1], half1[0][1]) and d_feat > 0:
        (p_full, m_full), (p_half, m_half) = full1[0], half1[0]
        d_mapped = m_full - m_half
        copies = (p_full - p_half - d_mapped - d_ws) / d_feat
        scaling.update({"d_peak_mb": p_full - p_half, "d_mapped_mb": d_mapped, "d_predicted_mb": d_ws})
        if len(full2) == 2 and None not in (full2[0][1], full2[1][1]):
            p2 = sum(p for p, _ in full2) / 2
            m2 = sum(m for _, m in full2 if m is not None) / 2
            copies_two = (p2 - p_half - (m2 - m_half) - d_ws) / d_feat
            # two cells of the same shape (other seed), each on a fresh worker: the estimate's spread
            scaling["noise_copies"] = abs(full2[0][0] - full2[1][0]) / d_feat
        scaling["feature_copies_two_trials_run"] = copies_two
    return {
        "rss_per_extra_concurrent_trial_mb": extra["rss"],
        "pss_per_extra_concurrent_trial_mb": extra["pss"],
        "anon_per_extra_concurrent_trial_mb": extra["anon"],
        "feature_mapping_pss_mb": {"one_trial": one["peak_feat_pss_mb"], "two": two["peak_feat_pss_mb"]},
        "feature_mapping_rss_mb": {"one_trial": one["peak_feat_rss_mb"], "two": two["peak_feat_rss_mb"]},
        "feature_mapping_pss_ratio_two_over_one": two["peak_feat_pss_mb"]
        / max(1e-9, one["peak_feat_pss_mb"]),
        "category_features_mb": feats_mb,
        "predicted_working_set_mb": ws["total_mb"],
        "predicted_working_set_parts_mb": {k: v for k, v in ws.items() if k != "total_mb"},
        "extra_minus_working_set_mb": extra["rss"] - ws["total_mb"],
        # the tree difference: includes the extra trial's interpreter when Ray had no idle worker for it
        "extra_anon_minus_working_set_mb": extra["anon"] - ws["total_mb"],
        # sampled, per trial process: anonymous memory its first cell added over the process's baseline
        # beyond the predicted buffers (n-independent transients included: an upper bound on a copy)
        "trial_added_anon_mb": {"one_trial": added_one, "two": added_two},
        "trial_added_anon_minus_working_set_mb": unexplained,
        "feature_copies_upper_bound": None if unexplained is None else max(0.0, unexplained) / feats_mb,
        "feature_copies_from_scaling": copies,
        "scaling": scaling,
        "runs": {"one_trial": one, "two": two, "one_trial_half": half},
    }


def run_memory_bench(
    *,
    workdir: str | None = None,
    n_train: int = 240,
    n_test: int = 60,
    methods: Sequence[str] = ("patchcore", "funad"),
    timeout_s: float = 900,
    ratio: float = 0.1,
    mmap_threshold: int | None = DEFAULT_MMAP_THRESHOLD,
) -> dict[str, Any]:
    """The memory benchmark's dict (see the module docstring); None values plus "reason" on failure.

    Per method config three sweep runs: the category with 1 then 2 trials at a time, and a
    half-size category (n_train // 2, n_test // 2) with 1 at a time, for the scaling estimate.
    ratio: the contamination ratio of every cell; above 0 a split is a scattered subset of the
    category (injected test anomalies), the case real sweeps run. mmap_threshold: see MALLOC_ENV
    (None = glibc's default allocator behaviour).
    """
    t_start = time.perf_counter()
    unknown = [m for m in methods if m not in METHOD_CONFIGS]
    base: dict[str, Any] = {"feature_copies_per_extra_trial": None, "methods": {}}
    if unknown:
        return {**base, "reason": f"unknown method config(s) {unknown}; known: {sorted(METHOD_CONFIGS)}"}
    try:
        import harness.sweep  # noqa: F401
    except Exception as exc:
        return {**base, "reason": f"harness.sweep not importable: {exc!r}"}
    tmp = Path(workdir or tempfile.mkdtemp(prefix="membench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = {CATEGORY: (n_train, n_test), CATEGORY_HALF: (max(1, n_train // 2), max(3, n_test // 2))}
    counts, cache = {}, {}
    try:
        for seed, (cat, (ntr, nte)) in enumerate(sizes.items()):
            counts[cat] = write_dataset(tmp / "data", ntr, nte, category=cat, seed=seed)
            cache[cat] = populate_cache(tmp / "data", tmp / "features", category=cat, seed=seed)
    except Exception as exc:
        return {**base, "reason": f"dataset / cache preparation failed: {exc!r}"}
    feats_mb = cache[CATEGORY]["category_features_mb"]
    grid, channels = tuple(cache[CATEGORY]["grid"]), cache[CATEGORY]["entry_shape"][1]
    provenance = {
        "n_train": n_train,
        "n_test": n_test,
        "categories": {
            cat: {**counts[cat], **{k: v for k, v in cache[cat].items() if k != "cache_root"}}
            for cat in sizes
        },
        "backbone": dict(BACKBONE),
        "entry_shape": cache[CATEGORY]["entry_shape"],
        "grid": list(grid),
        "dtype": "float16",
        "contamination_ratio": ratio,
        "seeds": [0, 1],
        "cells_per_run": 2,
        MALLOC_ENV: mmap_threshold,
        "workdir": str(tmp),
        "machine": f"{platform.node()} cpus={os.cpu_count()}",
        "python": platform.python_version(),
        "sample_interval_s": 0.5,
    }
    out: dict[str, Any] = {**base, "category_features_mb": feats_mb, "provenance": provenance}
    errors = {}
    for config in methods:
        method, params = METHOD_CONFIGS[config]
        try:
            kw = {"ratio": ratio, "mmap_threshold": mmap_threshold, "timeout_s": timeout_s}
            one = measure_run(tmp, config, 1, **kw)
            two = measure_run(tmp, config, 2, **kw)
            half = measure_run(tmp, config, 1, category=CATEGORY_HALF, **kw)
            ws = {}
            for cat, runs in ((CATEGORY, (one, two)), (CATEGORY_HALF, (half,))):
                bank = max((r["bank_images"] for r in runs if r["bank_images"] is not None), default=None)
                ws[cat] = predicted_working_set(
                    method, params, n_train=max(r["n_train_pool"] for r in runs),
                    n_test=max(r["n_test"] for r in runs), grid=grid, channels=channels, bank_images=bank,
                )
            res = _per_config(
                one, two, half, ws[CATEGORY], ws[CATEGORY_HALF], feats_mb,
                cache[CATEGORY_HALF]["category_features_mb"],
            )
            res["method"], res["params"] = method, dict(params)
            res["backbone_forwards"] = [one["forwards"], two["forwards"], half["forwards"]]
            out["methods"][config] = res
        except Exception as exc:
            errors[config] = repr(exc)
            out["methods"][config] = {"rss_per_extra_concurrent_trial_mb": None, "reason": repr(exc)}
    results = list(out["methods"].values())
    for key, src in (
        ("feature_copies_per_extra_trial", "feature_copies_from_scaling"),
        ("feature_copies_upper_bound", "feature_copies_upper_bound"),
    ):
        vals = [m.get(src) for m in results]
        out[key] = max(vals) if vals and all(v is not None for v in vals) else None
    noise = [m.get("scaling", {}).get("noise_copies") for m in results]
    out["feature_copies_noise"] = max((v for v in noise if v is not None), default=None)
    if errors:
        out["reason"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
    out["wall_s"] = time.perf_counter() - t_start
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench", description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=240)
    p.add_argument("--n-test", type=int, default=60)
    p.add_argument("--methods", nargs="+", default=["patchcore", "funad"], choices=sorted(METHOD_CONFIGS))
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new /tmp/membench-*)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per sweep run")
    p.add_argument("--ratio", type=float, default=0.1, help="contamination ratio of every cell")
    p.add_argument("--default-malloc", action="store_true",
                   help=f"do not set {MALLOC_ENV} for the sweep (glibc's default allocator behaviour)")
    a = p.parse_args(argv)
    res = run_memory_bench(
        workdir=a.workdir, n_train=a.n_train, n_test=a.n_test, methods=a.methods, timeout_s=a.timeout,
        ratio=a.ratio, mmap_threshold=None if a.default_malloc else DEFAULT_MMAP_THRESHOLD,
    )
    print(json.dumps(res, default=str), flush=True)
    return EXIT_OK if res.get("reason") is None else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
