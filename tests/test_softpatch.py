"""SoftPatch: outlier scores vs scikit-learn / numpy loops, denoising diagnostics, and noisy-pool ranking."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from patch_fixtures import make_fs, synthetic
from pydantic import ValidationError
from sklearn.metrics import pairwise_distances, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor

from funad.methods.base import FitContext
from funad.methods.outliers import gaussian_scores, knn_scores, lof_scores, outlier_scores
from funad.methods.patchcore import PatchCore, PatchCoreSettings, embed_patches
from funad.methods.softpatch import SoftPatch, SoftPatchSettings, position_scores, soft_weights

CTX = FitContext(seed=0, map_size=32)


# ----------------------------------------------------------------------------- helpers
def sets(seed: int, b: int = 3, n: int = 25, c: int = 4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """B independent point sets with a couple of planted outliers each."""
    x = torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[:, :2] += 4.0
    return x


# ----------------------------------------------------------------------------- outlier scores
@pytest.mark.parametrize("k", [1, 3, 6, 24, 40])
def test_lof_matches_sklearn(k: int) -> None:
    x = sets(seed=k)
    got = lof_scores(x, k).numpy()
    for i in range(x.shape[0]):
        with pytest.warns(UserWarning) if k >= x.shape[1] else nullcontext():
            clf = LocalOutlierFactor(n_neighbors=k).fit(x[i].numpy())
        np.testing.assert_allclose(got[i], -clf.negative_outlier_factor_, rtol=1e-9)


def test_lof_float32_close_to_sklearn() -> None:
    x = sets(seed=11, dtype=torch.float32)
    got = lof_scores(x, 6).numpy()
    for i in range(x.shape[0]):
        want = -LocalOutlierFactor(n_neighbors=6).fit(x[i].double().numpy()).negative_outlier_factor_
        np.testing.assert_allclose(got[i], want, rtol=1e-4)


def test_knn_scores_match_loops() -> None:
    x = sets(seed=2)
    got = knn_scores(x, 4).numpy()
    for b in range(x.shape[0]):
        pts = x[b].numpy()
        for i in range(len(pts)):
            d = sorted(math.dist(pts[i], pts[j]) for j in range(len(pts)) if j != i)
            assert got[b, i] == pytest.approx(np.mean(d[:4]), rel=1e-9)
    assert torch.equal(knn_scores(x[:, :1], 4), torch.zeros(3, 1, dtype=x.dtype))


@pytest.mark.parametrize("n", [8, 30])
def test_gaussian_scores_match_loops(n: int) -> None:
    x = sets(seed=n, n=n, c=10)
    got = gaussian_scores(x, shrinkage=0.1, ridge=1e-6).numpy()
    for b in range(x.shape[0]):
        pts = x[b].numpy()
        cov = np.cov(pts, rowvar=False)
        mu = np.trace(cov) / cov.shape[0]
        cov_s = 0.9 * cov + (0.1 * mu + 1e-6 * max(mu, 1.0)) * np.eye(cov.shape[0])
        inv = np.linalg.inv(cov_s)
        m = pts.mean(0)
        for i in range(n):
            v = pts[i] - m
            assert got[b, i] == pytest.approx(math.sqrt(v @ inv @ v), rel=1e-8)
    same = torch.ones(1, 5, 3, dtype=torch.float64)
    assert torch.isfinite(gaussian_scores(same)).all()


@pytest.mark.parametrize("method", ["lof", "knn", "gaussian"])
def test_chunking_does_not_change_scores(method: str) -> None:
    x = sets(seed=5, b=7)
    full = outlier_scores(x, method, 5)
    chunked = outlier_scores(x, method, 5, max_elements=1)
    torch.testing.assert_close(full, chunked)
    assert full[:, :2].mean() > full[:, 2:].mean()  # planted outliers score higher
    with pytest.raises(ValueError):
        outlier_scores(x, "isolation", 5)


def test_position_scores_are_per_position() -> None:
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.standard_normal((9, 3, 2, 5)))
    got = position_scores(feats, "lof", 4, projection=0, seed=0)
    for h in range(3):
        for w in range(2):
            want = -LocalOutlierFactor(n_neighbors=4).fit(feats[:, h, w].numpy()).negative_outlier_factor_
            np.testing.assert_allclose(got[:, h, w].numpy(), want, rtol=1e-9)


def test_soft_weights_normalise_inliers_to_one() -> None:
    s = torch.tensor([[[1.0]], [[2.0]], [[4.0]]])
    assert torch.equal(soft_weights(s, "lof"), s)
    torch.testing.assert_close(soft_weights(s, "knn"), s / 2.0)
    assert torch.equal(soft_weights(torch.zeros(3, 1, 1), "gaussian"), torch.ones(3, 1, 1))


# ----------------------------------------------------------------------------- the method
def test_soft_weighted_scores_match_brute_force() -> None:
    train, test, _ = synthetic(seed=4, g=5, c=6, n_train=8, n_anom=2, n_inject=1)
    m = SoftPatch(settings=SoftPatchSettings(coreset_ratio=0.3, embed_dim=None, reweight=False))
    m.fit(train, CTX)
    assert m.bank_weight is not None and m.bank_weight.shape[0] == m.bank.shape[0]
    out = m.score(test, CTX)
    bank, wts = m.bank.double().numpy(), m.bank_weight.double().numpy()
    feats = embed_patches(test.patches, 3, None).double().numpy().reshape(test.n, -1, 6)
    for i in range(test.n):
        d = pairwise_distances(feats[i], bank)
        nn = d.argmin(1)
        assert out.image[i] == pytest.approx((d.min(1) * wts[nn]).max(), rel=1e-3)


def test_clean_pool_ranks_anomalies_first() -> None:
    train, test, labels = synthetic(seed=0)
    m = SoftPatch(settings=SoftPatchSettings())
    m.fit(train, CTX)
    assert roc_auc_score(labels, m.score(test, CTX).image) > 0.9
    assert m.diagnostics["removed_frac"] == pytest.approx(0.15, abs=1e-3)
    assert m.diagnostics["removed_injected_frac"] == 0.0
    assert set(m.diagnostics) == set(SoftPatch.diagnostic_names)
    assert m.history == [{"epoch": 0, "iteration": 0, **{f"diag_{k}": v for k, v in m.diagnostics.items()}}]


@pytest.mark.parametrize("disc", ["lof", "knn", "gaussian"])
def test_contaminated_pool_softpatch_beats_patchcore(disc: str) -> None:
    train, test, labels = synthetic(seed=0, n_inject=6)
    share = 6 / 36
    pc = PatchCore(settings=PatchCoreSettings())
    pc.fit(train, CTX)
    auc_pc = roc_auc_score(labels, pc.score(test, CTX).image)
    sp = SoftPatch(settings=SoftPatchSettings(noise_discriminator=disc))
    sp.fit(train, CTX)
    auc_sp = roc_auc_score(labels, sp.score(test, CTX).image)
    assert sp.diagnostics["removed_injected_frac"] > 1.8 * share
    assert sp.diagnostics["bank_injected_frac"] < pc.diagnostics["bank_injected_frac"]
    assert auc_sp > auc_pc + 0.1
    assert auc_sp > 0.9


def test_same_seed_same_scores() -> None:
    train, test, _ = synthetic(seed=1, n_train=12, n_anom=4, n_inject=2)
    outs = []
    for _ in range(2):
        m = SoftPatch(settings=SoftPatchSettings(coreset_ratio=0.05))
        m.fit(train, FitContext(seed=3, map_size=32))
        outs.append((m.score(test, FitContext(seed=3, map_size=32)), dict(m.diagnostics)))
    np.testing.assert_array_equal(outs[0][0].image, outs[1][0].image)
    np.testing.assert_array_equal(outs[0][0].maps, outs[1][0].maps)
    assert outs[0][1] == outs[1][1]


def test_tiny_pools_and_grids() -> None:
    rng = np.random.default_rng(0)
    test = make_fs(rng.standard_normal((3, 2, 2, 5)), np.zeros(3))  # image-level: masks None
    for n in (1, 2, 3):
        m = SoftPatch(settings=SoftPatchSettings(coreset_ratio=0.01))
        m.fit(make_fs(rng.standard_normal((n, 2, 2, 5)), np.zeros(n)), CTX)
        out = m.score(test, CTX)
        assert m.bank.shape[0] >= 1
        assert np.isfinite(out.image).all() and out.maps.shape == (3, 32, 32)
    assert m.diagnostics["removed_frac"] == pytest.approx(1 / 12)  # floor(0.15 * 12) of 12 patches
    single = SoftPatch(settings=SoftPatchSettings())
    single.fit(make_fs(rng.standard_normal((1, 1, 1, 5)), np.zeros(1)), CTX)
    assert single.diagnostics["removed_frac"] == 0.0 and math.isnan(
        single.diagnostics["removed_injected_frac"]
    )


def test_settings_are_validated() -> None:
    assert SoftPatchSettings().model_dump()["lof_k"] == 6
    with pytest.raises(ValidationError):
        SoftPatchSettings(noise_discriminator="iforest")
    with pytest.raises(ValidationError):
        SoftPatchSettings(denoise_ratio=1.0)
    with pytest.raises(ValidationError):
        SoftPatchSettings(extra=True)


def test_without_denoising_it_is_patchcore() -> None:
    """denoise_ratio=0 and soft_weight=False must reproduce PatchCore exactly (same bank, same scores)."""
    train, test, _ = synthetic(seed=5, n_train=10, n_anom=3, n_inject=2)
    pc = PatchCore(settings=PatchCoreSettings())
    sp = SoftPatch(settings=SoftPatchSettings(denoise_ratio=0.0, soft_weight=False))
    pc.fit(train, CTX)
    sp.fit(train, CTX)
    assert sp.bank_weight is None and torch.equal(pc.bank, sp.bank)
    np.testing.assert_array_equal(pc.score(test, CTX).image, sp.score(test, CTX).image)


def test_registry_builds_both_methods() -> None:
    from funad.methods import available, create_method

    assert {"patchcore", "softpatch"} <= set(available())
    m = create_method("softpatch", {"noise_discriminator": "gaussian", "lof_k": 3})
    assert isinstance(m, SoftPatch) and m.settings.lof_k == 3
    assert type(create_method("patchcore")) is PatchCore
