"""The plain flat k-nearest-neighbour search (squared L2) with two backends, used by PatchCore and SoftPatch.

`torch`: chunked matmul form ||q||^2 - 2 q.b + ||b||^2, memory bounded by `chunk` queries, runs on
whatever device the tensors are on (TF32/bf16 follow torch's global matmul settings).
`faiss`: IndexFlatL2 (a GPU index when faiss sees a GPU and the data is on CUDA); faiss is an
optional extra ('cpu' or 'gpu'), so its absence is detected (`funad.search.backends`), not assumed.
Unlike `funad.search.nearest` there is no exact re-rank: distances carry the matmul's rounding.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from funad.search.backends import FLAT, faiss_gpus, resolve_backend


def _knn_torch(
    query: torch.Tensor, bank: torch.Tensor, k: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch backend: ||q||^2 - 2 q.b + ||b||^2 per chunk, the norms added after a plain GEMM.

    Not built by `funad.search.operands.distance_operands` (norms as GEMM columns): at PatchCore's
    widths that changes the rounding of most distances, so PatchCore's and SoftPatch's scores would not
    stay bit-identical.
    """
    bank = bank.float() if bank.dtype == torch.float16 and bank.device.type == "cpu" else bank
    bank_sq = (bank.float() * bank.float()).sum(1)
    out_d, out_i = [], []
    for start in range(0, query.shape[0], chunk):
        q = query[start : start + chunk].to(bank.dtype)
        d = (q.float() * q.float()).sum(1, keepdim=True) - 2.0 * (q @ bank.T).float() + bank_sq[None, :]
        d.clamp_(min=0.0)
        vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        out_d.append(vals)
        out_i.append(idx)
    return torch.cat(out_d), torch.cat(out_i)


def _knn_faiss(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    dim = bank.shape[1]
    device = query.device
    index: faiss.Index = faiss.IndexFlatL2(dim)
    if device.type == "cuda" and faiss_gpus() > 0:
        index = faiss.index_cpu_to_gpu(_gpu_resources(), device.index or 0, index)
    b = np.ascontiguousarray(bank.detach().float().cpu().numpy())
    q = np.ascontiguousarray(query.detach().float().cpu().numpy())
    index.add(b)
    d, i = index.search(q, k)
    return torch.from_numpy(d).to(device), torch.from_numpy(i).to(device)


@lru_cache(maxsize=1)
def _gpu_resources() -> Any:  # pragma: no cover - needs a GPU
    import faiss

    return faiss.StandardGpuResources()


def knn(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    backend: str = "auto",
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest squared L2 distances from each query row to the bank rows.

    Returns (sqdist [Q, k] float32 ascending, index [Q, k] int64). `auto`: the flat search's entry of
    `funad.search.backends.AUTO_BACKEND`. The two backends give the same neighbours up to exact ties and
    distances within fp32 rounding.
    """
    if bank.ndim != 2 or query.ndim != 2 or bank.shape[1] != query.shape[1]:
        raise ValueError(f"knn: shapes do not fit: query {tuple(query.shape)}, bank {tuple(bank.shape)}")
    if bank.shape[0] < k:
        raise ValueError(f"knn: bank has {bank.shape[0]} rows, fewer than k={k}")
    if resolve_backend(backend, FLAT, query.device) == "faiss":
        return _knn_faiss(query, bank, k)
    with torch.no_grad():
        return _knn_torch(query, bank, k, chunk)
