"""Search precisions: their names, the matmul setting and operand dtype of each, and its key-error model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    """The name itself, or ValueError for a name not in PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """fp32 matmuls at full precision ("highest") or TF32 ("high") inside the block, restored after.

    bf16 is handled by casting the operands (see `search_dtype`), so it runs fp32 matmuls as "highest".
    """
    check_precision(precision)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def search_dtype(precision: str) -> torch.dtype:
    """Operand dtype of the pool-scoring and search matmuls."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


#: error allowance of the approximate keys per precision: (rho, beta) in
#: |key - exact| <= rho * |key| + beta * (n_query + n_max), n = squared norms around the bank mean.
#: rho covers the GEMM output rounding (bf16 keys carry 8 significant bits: <= 2^-8 relative; we
#: allow 2^-7); beta the fp32 accumulation over the inner width and the input rounding. Both are
#: well above the errors measured on the benchmark shapes (see benchmarks/RESULTS.md).
KEY_SLACK = {"fp32": (2.0**-20, 2.0**-16), "tf32": (2.0**-9, 2.0**-13), "bf16": (2.0**-7, 2.0**-12)}


def key_beta(precision: str, n_query: torch.Tensor, n_max: torch.Tensor | float) -> torch.Tensor:
    """Each query row's absolute key-error allowance, beta * (n_query + n_max) (see KEY_SLACK)."""
    return (n_query + n_max) * KEY_SLACK[precision][1]
