"""Frozen-backbone features for a list of images: cached extraction into a FeatureSet.

In funad.features (layering: see its __init__) this is the top module: it imports `featureset`,
`backbone`, `preprocessing` and `cache`, and nothing imports it but the package's `__init__`.
extract_features keys the images (cache), computes the missing entries (preprocessing -> backbone),
packs them (cache) and returns views of the pack (featureset).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from funad.data.records import ImageRecord
from funad.features.backbone import (
    BackboneConfig,
    BackboneError,
    FeatureExtractor,
    build_extractor,
    feature_dim,
)
from funad.features.cache import FeatureCache, entry_key, open_cache
from funad.features.featureset import FeatureSet, PackRows
from funad.features.preprocessing import preprocess

_FORWARD_COUNT = 0
# One live extractor per process (keyed by backbone key + device): repeated calls skip the rebuild.
_EXTRACTOR: tuple[tuple[str, str], FeatureExtractor] | None = None


def forward_count() -> int:
    """Images passed through a backbone in this process (tests and benchmarks check cache hits)."""
    return _FORWARD_COUNT


def reset_forward_count() -> None:
    global _FORWARD_COUNT
    _FORWARD_COUNT = 0


class _Images(torch.utils.data.Dataset):
    """Records -> tensors, so DataLoader workers can decode images in parallel (num_workers > 0)."""

    def __init__(self, records: Sequence[ImageRecord], cfg: BackboneConfig) -> None:
        self.records, self.cfg = list(records), cfg

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        return preprocess(self.records[i], self.cfg)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _extractor(cfg: BackboneConfig, key: str, device: torch.device) -> FeatureExtractor:
    global _EXTRACTOR
    ident = (key, str(device))
    if _EXTRACTOR is None or _EXTRACTOR[0] != ident:
        _EXTRACTOR = None  # free the previous model before building the next
        _EXTRACTOR = (ident, build_extractor(cfg, device))
    return _EXTRACTOR[1]


def _compute(
    records: Sequence[ImageRecord],
    keys: Sequence[str],
    cfg: BackboneConfig,
    cache: FeatureCache,
    device: torch.device,
    batch_size: int,
    progress: bool,
    num_workers: int,
) -> None:
    """Run the backbone over `records` in batches and write one cache entry per image."""
    global _FORWARD_COUNT
    model = _extractor(cfg, cache.key, device)
    loader: torch.utils.data.DataLoader | None = None
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            _Images(records, cfg), batch_size=batch_size, shuffle=False, num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        batches = iter(loader)
    bar = tqdm(total=len(records), desc=f"features {cfg.name}", unit="img", file=sys.stderr,
               disable=not progress)
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            x = next(batches) if loader is not None else torch.stack([preprocess(r, cfg) for r in chunk])
            with torch.inference_mode():
                # fp16 on the device: half the transfer, the same bits as numpy's conversion
                feats = model(x.to(device, non_blocking=True)).half().cpu().numpy()
            _FORWARD_COUNT += len(chunk)
            for j, k in enumerate(keys[start : start + batch_size]):
                try:
                    cache.write_entry(k, feats[j])
                except ValueError as e:
                    raise BackboneError(f"{chunk[j].path}: {e}") from e
            bar.update(len(chunk))
    finally:
        bar.close()


def _open_or_build_pack(
    cache: FeatureCache,
    records: Sequence[ImageRecord],
    keys: list[str],
    cfg: BackboneConfig,
    device: str | torch.device | None,
    batch_size: int,
    progress: bool,
    num_workers: int,
    verify_checksums: bool,
) -> np.memmap:
    """The pack of `keys` (in order), after computing the entries that are missing."""
    pack = cache.open_pack(keys, verify_checksum=verify_checksums)
    if pack is not None:
        return pack
    todo: dict[str, ImageRecord] = {}
    for r, k in zip(records, keys, strict=True):
        if k not in todo and cache.read_entry(k, verify_checksum=verify_checksums) is None:
            todo[k] = r
    if todo:
        _compute(list(todo.values()), list(todo), cfg, cache, _resolve_device(device),
                 batch_size, progress, num_workers)
    cache.build_pack(keys)
    pack = cache.open_pack(keys, verify_checksum=False)
    if pack is None:
        raise RuntimeError(f"{cache.root}: feature pack could not be reopened after writing it")
    return pack


def extract_features(
    records: Sequence[ImageRecord],
    cfg: BackboneConfig,
    cache_dir: Path,
    *,
    within: Sequence[ImageRecord] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    progress: bool = True,
    num_workers: int = 0,
    verify_checksums: bool = True,
) -> FeatureSet:
    """Features of `records` (in order), computed only for images not yet in the cache.

    Returns a FeatureSet whose cls [N, C] and patches [N, H, W, C] are read-only fp16 views into one
    memory-mapped pack file; labels come from record.label, masks are None (see load_masks).
    within: a superset of `records` (a split's whole category, as the features stage packs it):
    the arrays are then `PackRows` of THAT pack (or plain views where the rows are one run), so
    every split of a category shares one file instead of writing its own pack. Records outside
    `within` (e.g. augmented copies) fall back to a pack of exactly `records`.
    verify_checksums=False skips the sha256 check of entries and packs (shape/dtype are always checked).
    """
    records = list(records)
    gh, gw, c = feature_dim(cfg)
    cache = open_cache(Path(cache_dir), cfg)
    labels = np.asarray([r.label for r in records], dtype=np.int8)
    ids = [r.image_id for r in records]
    if not records:
        return FeatureSet(ids, np.zeros((0, c), np.float16), np.zeros((0, gh, gw, c), np.float16), labels)

    build = (cfg, device, batch_size, progress, num_workers, verify_checksums)
    keys = [entry_key(r.path, r.augment) for r in records]  # memoised: within costs no second read
    if within is not None:
        within = list(within)
        wkeys = [entry_key(r.path, r.augment) for r in within]
        first = {k: i for i, k in reversed(list(enumerate(wkeys)))}
        if all(k in first for k in keys):
            pack = _open_or_build_pack(cache, within, wkeys, *build)
            rows = np.asarray([first[k] for k in keys], dtype=np.int64)
            return _feature_set(ids, pack, rows, labels, (gh, gw, c))
    pack = _open_or_build_pack(cache, records, keys, *build)
    return _feature_set(ids, pack, np.arange(len(records)), labels, (gh, gw, c))


def _feature_set(
    ids: list[str], pack: np.memmap, rows: np.ndarray, labels: np.ndarray, grid: tuple[int, int, int]
) -> FeatureSet:
    """FeatureSet of the pack's `rows`: plain memmap views when they are one ascending run."""
    gh, gw, c = grid
    cls = pack[:, 0, :]
    patches = pack[:, 1:, :].reshape(pack.shape[0], gh, gw, c)
    start = int(rows[0])
    if np.array_equal(rows, np.arange(start, start + len(rows))):
        stop = start + len(rows)
        return FeatureSet(ids, cls[start:stop], patches[start:stop], labels)
    return FeatureSet(ids, PackRows(cls, rows), PackRows(patches, rows), labels)
