"""Which backend a search runs on: the backend names, faiss's presence, and the ONE rule for `auto`.

Every place that meets `knn_backend: auto` (the certified searches of `funad.search.nearest`, FUN-AD's
choice of its fused pass, the flat `knn` of PatchCore and SoftPatch) resolves it with `resolve_backend`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

import torch

#: the backend a setting may name (the type of every method's `knn_backend`)
Backend = Literal["auto", "torch", "faiss"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: the two kinds of search, which `auto` resolves differently (see AUTO_BACKEND)
CERTIFIED = "certified"  # nearest / batch_search / mutual_pairs: stage-1 candidates + exact re-rank
FLAT = "flat"  # knn: one flat search, distances straight from it (PatchCore, SoftPatch)

#: what `auto` means, per (search kind, device type). Any other device type means torch, and faiss means
#: torch where faiss is not installed.
#: - certified search: torch on every device. Only the torch stream has a key-error model, which lets the
#:   exact re-rank skip hopeless candidates and lets `certify` prove a row exact (faiss's keys come with
#:   none: every candidate is re-ranked and no row is certified), and only torch can share the symmetric
#:   blocks of FUN-AD's fused bank + pair pass. faiss is not faster by enough to give that up.
#: - flat search: faiss on the CPU, where its flat index beats the torch matmul form at PatchCore's shapes;
#:   torch on CUDA until `make gpu-check` has timed faiss-gpu against it (`searches.auto_should_pick`).
#: The measurements behind both choices are in benchmarks/RESULTS.md ("knn_backend: auto").
AUTO_BACKEND: dict[tuple[str, str], str] = {
    (CERTIFIED, "cpu"): "torch",
    (CERTIFIED, "cuda"): "torch",
    (FLAT, "cpu"): "faiss",
    (FLAT, "cuda"): "torch",
}


@lru_cache(maxsize=1)
def faiss_available() -> bool:
    """Whether the optional faiss extra ('cpu' or 'gpu') is installed."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def faiss_gpus() -> int:
    """GPUs faiss can use (0 without faiss or with the CPU build)."""
    if not faiss_available():
        return 0
    import faiss

    return int(faiss.get_num_gpus())


def check_backend(backend: str) -> str:
    """The name itself, or ValueError for a name not in BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, kind: str, device: torch.device) -> str:
    """The backend (`torch` or `faiss`) that `backend` means for a search of `kind` on tensors on `device`.

    An explicit `faiss` without faiss installed is an error here, before any work is done.
    """
    if check_backend(backend) == "faiss" and not faiss_available():
        raise RuntimeError("search backend 'faiss' requested but faiss is not installed (extra cpu or gpu)")
    if backend != "auto":
        return backend
    if kind not in (CERTIFIED, FLAT):
        raise ValueError(f"unknown search kind {kind!r}; use {CERTIFIED!r} or {FLAT!r}")
    choice = AUTO_BACKEND.get((kind, device.type), "torch")
    return choice if choice != "faiss" or faiss_available() else "torch"
