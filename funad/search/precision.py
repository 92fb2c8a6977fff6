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


#: error allowance of the approximate ranking keys per precision: (rho, beta) in
#:     |key - exact| <= rho * |key| + beta * (n_query + n_max),
#: n = squared norms around the bank mean (n_max: the bank's largest). rho covers the output rounding of
#: bf16 keys (8 significant bits: <= 2^-8 relative; we allow 2^-7), beta the rounding of the centred inputs
#: and of the accumulation over the GEMM's inner width.
#: These values are MEASURED, not derived. A worst-case rounding bound exists (about W u times the sum of
#: the W inner-product terms' magnitudes, u the unit roundoff), but real GEMMs stay far below it, and
#: certifying against it would search nearly every row again. What the measurements say
#: (tests/test_search.py measures the largest error on the sets of tests/search_fixtures.py, numbers in
#: benchmarks/RESULTS.md): fp32 stays far inside its allowance on every set, adversarial ones included;
#: bf16 stays inside on realistic features but is exceeded where the rounding errors of the coordinates
#: line up (one coordinate dominating every norm), so there a near-tie may be pruned; tf32 is only
#: measured where a CPU runs it (as fp32: CPU matmuls ignore the TF32 setting), not on a GPU.
KEY_SLACK = {"fp32": (2.0**-20, 2.0**-16), "tf32": (2.0**-9, 2.0**-13), "bf16": (2.0**-7, 2.0**-12)}


def key_beta(precision: str, n_query: torch.Tensor, n_max: torch.Tensor | float) -> torch.Tensor:
    """Each query row's absolute key-error allowance, beta * (n_query + n_max) (see KEY_SLACK)."""
    return (n_query + n_max) * KEY_SLACK[precision][1]
