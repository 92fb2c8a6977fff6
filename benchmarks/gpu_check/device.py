"""The device helpers: everything only a GPU does (synchronisation, memory statistics, sync counting, the
device name) is here and small, so the CPU run exercises the rest of the check."""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]


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
