"""Toy patch-level feature sets shared by the PatchCore and SoftPatch tests."""

from __future__ import annotations

import numpy as np

from funad.features import FeatureSet


def make_fs(x: np.ndarray, labels: np.ndarray, masks: bool = False) -> FeatureSet:
    """FeatureSet over float16 patches made read-only, as the on-disk memmaps are."""
    n, _, _, c = x.shape
    patches = x.astype(np.float16)
    patches.flags.writeable = False
    return FeatureSet(
        image_ids=[f"img{i}" for i in range(n)],
        cls=np.zeros((n, c), np.float16),
        patches=patches,
        labels=np.asarray(labels, np.int8),
        masks=np.zeros((n, 32, 32), bool) if masks else None,
    )


def synthetic(seed: int = 0, g: int = 8, c: int = 16, n_train: int = 30, n_anom: int = 10, n_inject: int = 0):
    """Normal patches ~ N(0, I); anomalous images carry a 3x3 blob shifted in a random direction.

    Returns (train, test, test_labels). Injected training images are near-duplicates of the first
    `n_inject` test anomalies, which stay in the test set (the overlap setting, where plain
    PatchCore suffers most).
    """
    rng = np.random.default_rng(seed)
    test = rng.standard_normal((10 + n_anom, g, g, c)).astype(np.float32)
    for j in range(n_anom):
        r, q = rng.integers(0, g - 2, size=2)
        test[10 + j, r : r + 3, q : q + 3] += 1.5 * rng.standard_normal(c).astype(np.float32)
    labels = np.r_[np.zeros(10), np.ones(n_anom)].astype(np.int8)
    train = rng.standard_normal((n_train, g, g, c)).astype(np.float32)
    inj = test[10 : 10 + n_inject] + 0.05 * rng.standard_normal((n_inject, g, g, c)).astype(np.float32)
    train = np.concatenate([train, inj])
    train_labels = np.r_[np.zeros(n_train), np.ones(n_inject)]
    return make_fs(train, train_labels), make_fs(test, labels, masks=True), labels
