"""The in-memory view of cached backbone features that every method consumes.

The bottom of funad.features (layering: see its __init__): it imports no other module of the package,
so a method that only reads features never loads the backbone layer (torch, timm).

Arrays may be read-only memory maps of the on-disk cache, or `PackRows` (a split's rows of the
category's memory map): methods must never write into them, and should convert only the slices
they need (so N concurrent trials share one page-cached copy). `FeatureSet.torch_pool` is the one
way a method reads the whole pool as tensors without copying it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported on use: `import funad.methods` stays free of it
    import torch

#: images a non-finite-features error names before it counts the rest
_NAMED = 5


class PackRows:
    """Rows `rows` of the array `base` (a read-only memory map), gathered only when read.

    A contamination split is a scattered subset of a category's images. Every split reads the ONE
    category pack through its own row list, so concurrent trials of different ratios and seeds share
    the same page-cached file, and the cache holds no per-split copy. Indexing (an int, a slice or
    an index array on the first axis, optionally followed by more indices) returns an ordinary
    array of just those rows; `np.asarray` gathers every row (a copy: avoid on large pools).
    """

    def __init__(self, base: np.ndarray, rows: np.ndarray | list[int]) -> None:
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1:
            raise ValueError(f"PackRows: rows must be 1-D, got shape {self.rows.shape}")
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= base.shape[0]):
            raise ValueError(f"PackRows: rows outside 0..{base.shape[0] - 1}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.rows.shape[0]), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        picked = self.rows[first]
        out = self.base[picked]
        if not rest:
            return out
        return out[rest] if np.ndim(picked) == 0 else out[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.base[self.rows]
        return out if dtype is None else out.astype(dtype)

    def reshape(self, *shape: Any) -> PackRows:
        """Reshape the per-row dimensions; the first dimension must stay the number of rows."""
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else tuple(shape)
        if dims[0] not in (-1, len(self)):
            raise ValueError(f"PackRows.reshape: the first dimension must stay {len(self)}, got {dims}")
        return PackRows(self.base.reshape(self.base.shape[0], *dims[1:]), self.rows)


class TensorRows:
    """The torch side of a `PackRows`: rows `rows` of the tensor `base`, gathered on indexing.

    Supports what a method reading the pool needs (`shape`, `device`, [slice], [index tensor]);
    every read is a gather into a new tensor, so the shared memory-mapped pack is never copied whole.
    """

    def __init__(self, base: torch.Tensor, rows: torch.Tensor) -> None:
        self.base, self.rows = base, rows

    @property
    def shape(self) -> torch.Size:
        import torch

        return torch.Size((self.rows.shape[0], *self.base.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.base.device

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        return self.base[self.rows[key]]


@dataclass
class FeatureSet:
    """Features of N images from one backbone.

    image_ids: N stable ids (ImageRecord.image_id), in order.
    cls:       [N, C] float16 (np.ndarray or PackRows), the global ("CLS") descriptor of each
               image (ViT CLS token after the final norm; for a CNN the global mean of the same
               feature map).
    patches:   [N, H, W, C] float16 (np.ndarray or PackRows) patch tokens on the backbone's grid
               (e.g. 28x28).
    labels:    [N] int8 ground truth, 0 normal / 1 anomalous. For the training pool this marks the
               injected images and is for diagnostics ONLY: no method may train on it.
    masks:     [N, S, S] bool ground-truth masks at the evaluation size S (224), or None
               (training pool, or an image-level dataset).
    """

    image_ids: list[str]
    cls: np.ndarray | PackRows
    patches: np.ndarray | PackRows
    labels: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if self.cls.shape[0] != n or self.patches.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError(
                f"FeatureSet arrays disagree on N: ids {n}, cls {self.cls.shape}, "
                f"patches {self.patches.shape}, labels {self.labels.shape}"
            )
        if self.masks is not None and self.masks.shape[0] != n:
            raise ValueError(f"FeatureSet masks {self.masks.shape} do not match N={n}")

    @property
    def n(self) -> int:
        return len(self.image_ids)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    @property
    def channels(self) -> int:
        return int(self.patches.shape[3])

    def check_finite(self, what: str = "features", chunk: int = 64) -> None:
        """Raise ValueError naming the images whose features hold NaN or inf.

        A broken weights file, or activations beyond float16's range (+-65504) when the cache stores
        them, would otherwise run through every method and end as NaN scores or metrics of garbage.
        Reads `chunk` images at a time, so a memory-mapped pool is never copied whole.
        """
        bad: list[str] = []
        for start in range(0, self.n, chunk):
            stop = min(start + chunk, self.n)
            ok = np.ones(stop - start, dtype=bool)
            for part in (self.cls[start:stop], self.patches[start:stop]):
                ok &= np.isfinite(np.asarray(part)).reshape(stop - start, -1).all(axis=1)
            bad += [self.image_ids[start + i] for i in np.flatnonzero(~ok)]
        if bad:
            shown = ", ".join(bad[:_NAMED]) + (f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else "")
            raise ValueError(
                f"{what}: NaN or inf in the features of {len(bad)} of {self.n} images ({shown}): the "
                "backbone's weights are broken, or its activations exceed the float16 range (+-65504) the "
                "cache stores them in; check the weights file, or choose other backbone layers"
            )

    def subset(self, index: np.ndarray | list[int]) -> FeatureSet:
        idx = np.asarray(index, dtype=np.int64)
        return FeatureSet(
            image_ids=[self.image_ids[i] for i in idx],
            cls=_rows_of(self.cls, idx),
            patches=_rows_of(self.patches, idx),
            labels=self.labels[idx],
            masks=None if self.masks is None else self.masks[idx],
        )

    def torch_pool(
        self, device: torch.device | str
    ) -> tuple[torch.Tensor | TensorRows, torch.Tensor | TensorRows]:
        """(cls [N, C], patches [N, H*W, C]) in the cache dtype, for a method that reads the pool often.

        On the CPU these are read-only views of the (memory-mapped) arrays, or `TensorRows` over the
        pack for a `PackRows` split, so concurrent trials of one category share the page-cached pack
        instead of each holding a private copy; nothing may write into them (every use must be a
        gather or a cast into a new tensor: a write into a read-only map would fault). On a GPU this
        is the one host->device copy.
        """
        import torch

        dev = torch.device(device)
        patches = self.patches.reshape(self.n, -1, self.channels)
        return _pool_tensor(self.cls, dev), _pool_tensor(patches, dev)


def _pool_tensor(a: np.ndarray | PackRows, dev: torch.device) -> torch.Tensor | TensorRows:
    """One pool array as a tensor: a shared view on the CPU (see `FeatureSet.torch_pool`)."""
    import torch

    if isinstance(a, PackRows):
        if dev.type == "cpu":
            return TensorRows(_read_only_tensor(a.base, dev), torch.from_numpy(a.rows))
        return torch.from_numpy(np.asarray(a)).to(dev)
    return _read_only_tensor(a, dev)


def _read_only_tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    """a as a tensor: on the CPU a view of the (read-only) array, on a GPU a device copy."""
    import torch

    if dev.type == "cpu":
        with warnings.catch_warnings():  # torch warns that the array is not writable: we never write
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


def _rows_of(a: np.ndarray | PackRows, idx: np.ndarray) -> np.ndarray | PackRows:
    """a[idx], staying a shared view (PackRows) where a is one."""
    return PackRows(a.base, a.rows[idx]) if isinstance(a, PackRows) else a[idx]


def float32_on(rows: np.ndarray, device: Any) -> Any:
    """A chunk of fp16 feature rows as a float32 tensor on `device`. On a GPU the fp16 rows travel
    (from pinned memory, half the bytes) and are upcast there; on the CPU one float32 copy. The values
    are the same either way: fp16 -> fp32 is exact."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.from_numpy(np.array(rows, dtype=np.float32))
    host = torch.from_numpy(np.ascontiguousarray(rows))
    return host.pin_memory().to(dev, non_blocking=True).float()
