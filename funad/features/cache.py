"""On-disk feature cache: one verified fp16 entry per image, plus memory-mapped per-set packs.

In funad.features (layering: see its __init__) this module imports only `backbone`. It is the one
home of every cache key: `backbone_key` (the directory: backbone, weights and preprocessing),
`entry_key` (one image as the backbone sees it) and `pack_key` (one ordered list of entries), and of
the layout below (`open_cache`).

Layout under `<cache_dir>/<backbone_key>/`:
    backbone.json                 what this directory holds (human-readable)
    entries/<k[:2]>/<k>.npy       [1 + H*W, C] float16, row 0 = CLS; k = sha256(image bytes + augment)
    entries/<k[:2]>/<k>.json      {"shape", "dtype", "sha256"} of the data: detects truncation/bit rot
    packs/<p>.npy                 [N, 1 + H*W, C] float16 for one ordered image list; p = hash of the keys
    packs/<p>.json                {"shape", "dtype", "sha256", "keys"}

Why packs: several trial processes reading the same category open one file with mmap and share the
page cache instead of each holding a private copy.

Concurrency: every file is written to a temp file in the same directory and moved into place with
os.replace. The two files of an entry (data + sidecar) are swapped in under an exclusive flock on
`<backbone_key>/.lock`, and readers hold a shared lock while reading the pair, so a reader never pairs
one writer's data with another writer's sidecar. Two processes computing the same entry just both
write it; the last one wins and both are valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from funad.features.backbone import (
    BackboneConfig,
    feature_dim,
    resolved_layers,
    resolved_mean_std,
    weights_identity,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: atomic replace still holds, pairing may race
    fcntl = None  # type: ignore[assignment]

#: Bump when the stored feature layout or the forward pass changes: it invalidates every cache entry.
FORMAT_VERSION = 1
DTYPE = np.dtype(np.float16)


# ---------------------------------------------------------------------------------------------
# Keys: every name in the cache is built here


def backbone_key(cfg: BackboneConfig) -> str:
    """Directory name of this backbone's cache: readable prefix + hash of everything that changes features."""
    mean, std = resolved_mean_std(cfg)
    ident = {
        "format": FORMAT_VERSION,
        "name": cfg.name,
        "weights": weights_identity(cfg),
        "resize": cfg.resize,
        "crop": cfg.crop,
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "layers": None if (lay := resolved_layers(cfg)) is None else list(lay),
    }
    if cfg.border_context:  # only when on: the keys of existing caches stay as they were
        ident["border_context"] = True
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in cfg.name)
    return f"{safe}-{cfg.weights_kind}-{digest}"


def key_description(cfg: BackboneConfig) -> dict[str, Any]:
    """Human-readable record of what a cache directory holds (written next to the entries)."""
    mean, std = resolved_mean_std(cfg)
    lay = resolved_layers(cfg)
    return {
        "format": FORMAT_VERSION,
        "config": cfg.model_dump(mode="json"),
        "weights_identity": weights_identity(cfg),
        "mean": list(mean),
        "std": list(std),
        "layers": None if lay is None else list(lay),
        "feature_dim": list(feature_dim(cfg)),
    }


def entry_key(image_path: Path, augment: int | None) -> str:
    """Content address of one image as the backbone sees it: file bytes plus the augment seed.

    Memoised on (path, size, mtime) like backbone.file_sha256: a cell keys its category once for
    the train split and once for the test split, and a reused worker keys it again in every cell.
    """
    st = os.stat(image_path)
    return _entry_key(str(Path(image_path).resolve()), st.st_size, st.st_mtime_ns, augment)


@lru_cache(maxsize=1 << 16)
def _entry_key(path: str, size: int, mtime_ns: int, augment: int | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(b"\0augment:" + (b"none" if augment is None else str(int(augment)).encode()))
    return h.hexdigest()


def pack_key(keys: Sequence[str]) -> str:
    """Name of the pack of these entry keys, in this order."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def open_cache(cache_dir: Path, cfg: BackboneConfig) -> FeatureCache:
    """The cache of cfg's features under `cache_dir` (`<cache_dir>/<backbone_key>`), described once."""
    gh, gw, c = feature_dim(cfg)
    cache = FeatureCache(Path(cache_dir) / backbone_key(cfg), (1 + gh * gw, c))
    cache.write_description(key_description(cfg))
    return cache


# ---------------------------------------------------------------------------------------------
# Files


def _sha256_array(arr: np.ndarray, chunk_rows: int = 64) -> str:
    """sha256 of the C-order bytes, in chunks so a memory-mapped pack is never copied whole."""
    h = hashlib.sha256()
    if arr.ndim == 0 or arr.shape[0] == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()
    for i in range(0, arr.shape[0], chunk_rows):
        h.update(np.ascontiguousarray(arr[i : i + chunk_rows]).tobytes())
    return h.hexdigest()


def _write_atomic_bytes(path: Path, data: bytes) -> Path:
    """Write to a temp file next to `path` (same filesystem) and return the temp path (not yet moved)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp)


def _write_temp_npy(path: Path, arr: np.ndarray) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp)


class FeatureCache:
    """Entries and packs of one backbone key (see the module docstring for the layout)."""

    def __init__(self, root: Path, entry_shape: tuple[int, int]) -> None:
        self.root = Path(root)
        self.entry_shape = (int(entry_shape[0]), int(entry_shape[1]))
        (self.root / "entries").mkdir(parents=True, exist_ok=True)
        (self.root / "packs").mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / ".lock"
        self._lock_path.touch(exist_ok=True)

    @property
    def key(self) -> str:
        """The backbone key this directory is named by."""
        return self.root.name

    # -- locking ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        with open(self._lock_path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def write_description(self, desc: dict[str, Any]) -> None:
        """backbone.json, once (it never changes for a given key)."""
        path = self.root / "backbone.json"
        if not path.exists():
            tmp = _write_atomic_bytes(path, json.dumps(desc, indent=2, sort_keys=True).encode())
            os.replace(tmp, path)

    # -- entries ------------------------------------------------------------------------------

    def entry_paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / "entries" / key[:2]
        return d / f"{key}.npy", d / f"{key}.json"

    def read_entry(self, key: str, *, verify_checksum: bool = True) -> np.ndarray | None:
        """The entry's array, or None when it is missing, truncated, of the wrong shape/dtype or corrupt."""
        data_path, meta_path = self.entry_paths(key)
        with self._lock(exclusive=False):
            try:
                meta = json.loads(meta_path.read_text())
                arr = np.load(data_path, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                return None
        if arr.dtype != DTYPE or arr.shape != self.entry_shape:
            return None
        if meta.get("shape") != list(self.entry_shape) or meta.get("dtype") != DTYPE.str:
            return None
        if verify_checksum and meta.get("sha256") != _sha256_array(arr):
            return None
        return arr

    def write_entry(self, key: str, arr: np.ndarray) -> None:
        """Atomically store one image's [1 + H*W, C] features as fp16."""
        arr = np.ascontiguousarray(arr, dtype=DTYPE)
        if arr.shape != self.entry_shape:
            raise ValueError(f"feature entry shape {arr.shape} != expected {self.entry_shape}")
        if not np.isfinite(arr).all():
            raise ValueError(
                f"non-finite features for entry {key} (fp16 overflow?); not caching them"
            )
        data_path, meta_path = self.entry_paths(key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"shape": list(arr.shape), "dtype": DTYPE.str, "sha256": _sha256_array(arr)}
        tmp_data = _write_temp_npy(data_path, arr)
        tmp_meta = _write_atomic_bytes(meta_path, json.dumps(meta).encode())
        with self._lock(exclusive=True):
            os.replace(tmp_data, data_path)
            os.replace(tmp_meta, meta_path)

    # -- packs --------------------------------------------------------------------------------

    def pack_paths(self, pkey: str) -> tuple[Path, Path]:
        d = self.root / "packs"
        return d / f"{pkey}.npy", d / f"{pkey}.json"

    def open_pack(self, keys: Sequence[str], *, verify_checksum: bool = True) -> np.memmap | None:
        """The pack for this ordered key list as a read-only memmap, or None if absent or invalid."""
        data_path, meta_path = self.pack_paths(pack_key(keys))
        shape = (len(keys), *self.entry_shape)
        with self._lock(exclusive=False):
            try:
                meta = json.loads(meta_path.read_text())
                arr = np.load(data_path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                return None
        if not isinstance(arr, np.memmap) or arr.dtype != DTYPE or arr.shape != shape:
            return None
        if meta.get("shape") != list(shape) or meta.get("keys") != list(keys):
            return None
        ident = _file_identity(data_path)
        if verify_checksum and ident not in _VERIFIED_PACKS:
            if meta.get("sha256") != _sha256_array(arr):
                return None
            _VERIFIED_PACKS.add(ident)
        with contextlib.suppress(OSError):
            # the sidecar's mtime = last use, for prune_packs; the pack's own mtime stays part of
            # its identity, so a pack changed in place is checksummed again
            os.utime(meta_path)
        # one mapping per pack and process: the train and test views of a category (and the next
        # cell of a reused worker) share it, so touched pages count once in this process's RSS
        arr = _OPEN_PACKS.pop(ident, arr)
        _OPEN_PACKS[ident] = arr
        while len(_OPEN_PACKS) > _OPEN_PACKS_MAX:
            _OPEN_PACKS.pop(next(iter(_OPEN_PACKS)))
        return arr

    def build_pack(self, keys: Sequence[str]) -> None:
        """Concatenate existing (verified) entries, in order, into one atomically written pack."""
        data_path, meta_path = self.pack_paths(pack_key(keys))
        shape = (len(keys), *self.entry_shape)
        fd, tmp = tempfile.mkstemp(dir=data_path.parent, prefix=f".{data_path.name}.", suffix=".tmp")
        os.close(fd)
        tmp_data = Path(tmp)
        try:
            out = np.lib.format.open_memmap(tmp_data, mode="w+", dtype=DTYPE, shape=shape)
            h = hashlib.sha256()
            for i, k in enumerate(keys):
                arr = self.read_entry(k, verify_checksum=False)
                if arr is None:
                    raise RuntimeError(f"feature cache entry {k} vanished or broke while packing")
                out[i] = arr
                h.update(arr.tobytes())
            out.flush()
            del out
            with open(tmp_data, "rb+") as f:
                os.fsync(f.fileno())
            meta = {"shape": list(shape), "dtype": DTYPE.str, "sha256": h.hexdigest(), "keys": list(keys)}
            tmp_meta = _write_atomic_bytes(meta_path, json.dumps(meta).encode())
            with self._lock(exclusive=True):
                os.replace(tmp_data, data_path)
                os.replace(tmp_meta, meta_path)
        finally:
            if tmp_data.exists():
                tmp_data.unlink()


#: packs this process has checksummed, by (path, inode, size, mtime): a split that reads its
#: category's pack again (the test split after the train split, the next cell of a reused worker)
#: does not hash the whole file again, but a pack replaced or rewritten since is checked anew
_VERIFIED_PACKS: set[tuple[str, int, int, int]] = set()
#: the memmaps this process has open, most recently used last (at most _OPEN_PACKS_MAX)
_OPEN_PACKS: dict[tuple[str, int, int, int], np.memmap] = {}
_OPEN_PACKS_MAX = 8


def _file_identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns


def prune_packs(cache_dir: Path, *, older_than_s: float) -> int:
    """Delete packs unused for `older_than_s` seconds under every backbone key; returns how many.

    Packs duplicate their entries (one per ordered image list: a category's, plus one per split that
    holds images outside it, e.g. augmented copies), so a long sweep can accumulate them; entries
    are kept. A process that still has a deleted pack mapped keeps
    reading it safely (POSIX unlink semantics); the next request simply rebuilds it from the entries.
    """
    cutoff = time.time() - older_than_s
    removed = 0
    for data_path in Path(cache_dir).glob("*/packs/*.npy"):
        with contextlib.suppress(FileNotFoundError):
            meta_path = data_path.with_suffix(".json")
            last_use = (meta_path if meta_path.exists() else data_path).stat().st_mtime
            if last_use < cutoff:
                data_path.unlink()
                data_path.with_suffix(".json").unlink(missing_ok=True)
                removed += 1
    return removed
