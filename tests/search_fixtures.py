"""What the search tests and the IRMB tests share: both search paths, a float64 distance, random images."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from funad import native


@pytest.fixture(params=["native", "torch"])
def search_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A test using this runs with the compiled selection/re-rank kernels and with the torch path."""
    monkeypatch.setenv("FUNAD_NATIVE", "1" if request.param == "native" else "0")
    native.reset()
    if request.param == "native":
        if native._compiler() is None:
            pytest.skip("no C compiler: only the torch path runs here")
        assert native.library() is not None
    else:
        assert native.library() is None
    yield request.param
    native.reset()


def sqdist64(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float((diff * diff).sum())


def images(seed: int, n_img: int, n_patch: int, dim: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n_img, n_patch, dim)) * scale).astype(np.float32)


# ---- the key-error model (funad.search.precision.KEY_SLACK), measured ----------------------------
def key_error_sets(dim: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(query [512 or 256, dim], bank [1024, dim]) fp32 sets on which the ranking keys' errors are measured:
    realistic ones (clustered patch features; queries far from the bank mean next to a ring of near-ties;
    bf16-exact near duplicates) and adversarial ones for fp32 (points along the diagonal, so the rounding
    errors of all coordinates line up; heavy (Pareto) tails, a large common offset and one coordinate 100x the
    others)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(40, dim, generator=g) * 3
    pick = torch.randint(0, 40, (1024,), generator=g)
    clustered = protos[pick] + 0.3 * torch.randn(1024, dim, generator=g) + 5
    far = torch.zeros(dim)
    far[0] = 200.0
    dirs = torch.randn(512, dim, generator=g)
    ring = torch.cat([-far + torch.randn(512, dim, generator=g), far + dirs / dirs.norm(dim=1, keepdim=True)])
    t = torch.randn(1024, 1, generator=g) * 4
    diagonal = t * torch.ones(dim) + 0.01 * torch.randn(1024, dim, generator=g)
    u = torch.rand(1024, dim, generator=g).clamp(min=1e-6)
    heavy = torch.sign(u - 0.5) * ((2 * (u - 0.5).abs()).clamp(min=1e-3) ** -0.5 - 1)  # Pareto tails, index 2
    heavy[:, 3] *= 100
    heavy += 1000.0
    dup = torch.randn(1024, dim, generator=g).bfloat16().float()
    dup_q = dup[:512].clone()
    dup_q[:, 0] += 2.0**-6
    return {
        "clustered": (clustered[:512] + 0.05 * torch.randn(512, dim, generator=g), clustered),
        "far_ring": (far + 1e-3 * torch.randn(256, dim, generator=g), ring),
        "near_duplicates": (dup_q, dup),
        "diagonal": (diagonal[:512] + 0.01 * torch.randn(512, dim, generator=g), diagonal),
        "heavy_offset": (heavy[:512] + 0.1 * torch.randn(512, dim, generator=g), heavy),
    }


def key_error_ratio(
    query: torch.Tensor, bank: torch.Tensor, precision: str, near: int | None = None
) -> float:
    """max |key - exact| / (rho |key| + beta (n_q + n_max)) over (query, bank) pairs (each query's `near`
    exactly nearest only, when given): <= 1 where the keys keep KEY_SLACK[precision]. Keys as the torch
    stream makes them (`ranking_operands`, one GEMM in the precision); exact: float64 of the fp32 inputs."""
    from funad.search.operands import centre, ranking_operands
    from funad.search.precision import KEY_SLACK, matmul_precision

    mu = centre(bank)
    _, right, nb = ranking_operands(bank, mu, precision)
    left, _, nq = ranking_operands(query, mu, precision)
    with matmul_precision(precision):
        keys = (left @ right.T).double()
    q, b = query.double() - bank.double().mean(0), bank.double() - bank.double().mean(0)
    exact = (q * q).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * q @ b.T
    rho, beta = KEY_SLACK[precision]
    ratio = (keys - exact).abs() / (rho * keys.abs() + beta * (nq.double()[:, None] + float(nb.max())))
    if near is not None:
        ratio = ratio.gather(1, torch.topk(exact, near, dim=1, largest=False).indices)
    return float(ratio.max())
