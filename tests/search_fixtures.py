"""What the search tests and the IRMB tests share: both search paths, a float64 distance, random images."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

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
