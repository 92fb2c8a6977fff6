"""kNN backends against a brute-force search; map post-processing against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from funad.maps import gaussian_blur, grid_to_maps
from funad.search import faiss_available, knn


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_matches_brute_force(backend: str) -> None:
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(500, 24, generator=g)
    query = torch.randn(130, 24, generator=g)
    d, i = knn(query, bank, k=3, backend=backend, chunk=37)
    brute = ((query[:, None, :].double() - bank[None].double()) ** 2).sum(-1)
    bd, bi = torch.topk(brute, 3, dim=1, largest=False)
    assert torch.equal(i, bi)
    assert torch.allclose(d.double(), bd, rtol=1e-4, atol=1e-4)


def test_knn_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        knn(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="fewer than k"):
        knn(torch.zeros(3, 4), torch.zeros(1, 4), k=2)


def test_blur_matches_scipy_gaussian_filter() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 40, 40)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x), 4.0).numpy()
    ref = np.stack([ndimage.gaussian_filter(m, 4.0, mode="reflect", truncate=4.0) for m in x])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_grid_to_maps_shape_and_constant() -> None:
    maps = grid_to_maps(np.full((3, 7, 7), 0.25), size=56, sigma=4.0)
    assert maps.shape == (3, 56, 56) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, 0.25, atol=1e-6)


@pytest.mark.parametrize(("h", "size"), [(4, 32), (7, 56), (3, 7)])
def test_nearest_upsampling_repeats_each_cell_over_its_stride(h: int, size: int) -> None:
    rng = np.random.default_rng(h)
    g = rng.random((2, h, h)).astype(np.float32)
    up = np.zeros((2, size, size), np.float32)
    for i in range(size):
        for j in range(size):
            up[:, i, j] = g[:, i * h // size, j * h // size]  # stride size / h (nearest cell otherwise)
    np.testing.assert_array_equal(grid_to_maps(g, size=size, sigma=0.0, upsample="nearest"), up)
    blurred = gaussian_blur(torch.from_numpy(up), 1.5).numpy()
    np.testing.assert_array_equal(grid_to_maps(g, size=size, sigma=1.5, upsample="nearest"), blurred)
    with pytest.raises(ValueError, match="unknown upsample"):
        grid_to_maps(g, size=size, upsample="bicubic")
