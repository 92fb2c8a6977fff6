"""PatchCore and its coreset: vectorised code vs brute-force loops, scikit-learn, and end-to-end ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patch_fixtures import make_fs, synthetic
from pydantic import ValidationError
from sklearn.metrics import pairwise_distances, roc_auc_score

from funad.maps import grid_to_maps
from funad.methods.base import FitContext
from funad.methods.coreset import coreset_size, coverage_radius, greedy_coreset, project
from funad.methods.patchcore import (
    PatchCore,
    PatchCoreSettings,
    aggregate_patches,
    embed_patches,
    pool_channels,
    reweight_factors,
    support_indices,
)

CTX = FitContext(seed=0, map_size=32)


# ----------------------------------------------------------------------------- helpers
def brute_greedy(x: np.ndarray, first: int, n_select: int) -> list[int]:
    """Exhaustive k-center greedy: every step recomputes all point-to-selected distances in loops."""
    selected = [first]
    while len(selected) < n_select:
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in selected:
                continue
            d = min(float(np.sqrt(((x[i] - x[j]) ** 2).sum())) for j in selected)
            if d > best_d:
                best, best_d = i, d
        selected.append(best)
    return selected


def manifold(seed: int, n: int = 300, dim: int = 32) -> torch.Tensor:
    """Points near a 3-d subspace plus a few small far clusters: coverage needs the rare points."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, dim, generator=g, dtype=torch.float64) + 0.05 * torch.randn(
        n, dim, generator=g, dtype=torch.float64
    )
    for j in range(4):
        x[j * 5 : j * 5 + 5] += 8.0 * torch.randn(dim, generator=g, dtype=torch.float64)
    return x


# ----------------------------------------------------------------------------- coreset
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_greedy_matches_exhaustive(seed: int) -> None:
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = greedy_coreset(x, 15, projection=0, seed=seed).tolist()
    assert got == brute_greedy(x.numpy(), got[0], 15)
    assert len(set(got)) == 15


def test_first_point_is_seeded() -> None:
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    firsts = {int(greedy_coreset(x, 3, projection=0, seed=s)[0]) for s in range(8)}
    assert len(firsts) > 1
    assert torch.equal(greedy_coreset(x, 20, seed=5), greedy_coreset(x, 20, seed=5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projected_greedy_coverage(seed: int) -> None:
    x = manifold(seed)
    exact = coverage_radius(x, greedy_coreset(x, 30, projection=0, seed=seed))
    approx = coverage_radius(x, greedy_coreset(x, 30, projection=8, seed=seed))
    rand = coverage_radius(x, torch.randperm(300, generator=torch.Generator().manual_seed(seed))[:30])
    assert approx <= 1.5 * exact
    assert approx < rand


def test_coreset_handles_duplicates_and_sizes() -> None:
    x = torch.zeros(10, 3)
    x[0] = 1.0
    sel = greedy_coreset(x, 10, projection=0, seed=0)
    assert sorted(sel.tolist()) == list(range(10))
    assert coreset_size(5, 0.01) == 1
    assert coreset_size(100, 0.1) == 10
    assert coreset_size(3, 1.0) == 3


def test_projection_preserves_distances_roughly() -> None:
    x = torch.randn(50, 256, generator=torch.Generator().manual_seed(0))
    p = project(x, 128, seed=3)
    assert p.shape == (50, 128)
    ratio = torch.pdist(p) / torch.pdist(x)
    assert 0.7 < float(ratio.min()) and float(ratio.max()) < 1.3
    assert project(x, 0, seed=3) is x and project(x, 512, seed=3) is x


# ----------------------------------------------------------------------------- features
def test_aggregation_matches_loop_mean() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    got = aggregate_patches(torch.from_numpy(x), 3).numpy()
    want = np.zeros_like(x)
    for n in range(2):
        for i in range(5):
            for j in range(4):
                nb = [
                    x[n, a, b]
                    for a in range(i - 1, i + 2)
                    for b in range(j - 1, j + 2)
                    if 0 <= a < 5 and 0 <= b < 4
                ]
                want[n, i, j] = np.mean(nb, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    t = torch.from_numpy(x)
    assert torch.equal(aggregate_patches(t, 1), t)  # a 1x1 neighbourhood is the patch itself


def test_channel_pooling_matches_adaptive_bins() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 10)).astype(np.float32)
    got = pool_channels(torch.from_numpy(x), 4).numpy()
    want = np.stack(
        [x[:, (i * 10) // 4 : -((-(i + 1) * 10) // 4)].mean(1) for i in range(4)], axis=1
    )  # bin i = [floor(iC/D), ceil((i+1)C/D))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    t = torch.from_numpy(x)
    assert torch.equal(pool_channels(t, None), t) and torch.equal(pool_channels(t, 32), t)  # no pooling
    torch.testing.assert_close(pool_channels(t, 10), t)  # D = C: bins of one channel each


def test_embed_reads_memmap_without_writing(tmp_path) -> None:
    path = tmp_path / "p.npy"
    arr = np.random.default_rng(0).standard_normal((3, 4, 4, 6)).astype(np.float16)
    np.save(path, arr)
    mm = np.load(path, mmap_mode="r")
    out = embed_patches(mm, 3, 4, chunk_images=2)
    want = pool_channels(aggregate_patches(torch.from_numpy(arr.astype(np.float32)), 3), 4)
    torch.testing.assert_close(out, want)
    np.testing.assert_array_equal(np.load(path), arr)


# ----------------------------------------------------------------------------- scoring
def test_reweight_formula_direct() -> None:
    d_star = torch.tensor([1.0, 2.0, 50.0], dtype=torch.float64)
    d_sup = torch.tensor([[1.0, 1.5, 3.0], [2.0, 2.0, 2.0], [50.0, 700.0, 800.0]], dtype=torch.float64)
    got = reweight_factors(d_star, d_sup).numpy()
    want = [1 - np.exp(1.0) / (np.exp(1.0) + np.exp(1.5) + np.exp(3.0)), 1 - 1 / 3, 1.0]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isfinite(got).all()


def test_scores_match_brute_force() -> None:
    """Patch distances, maps' grid and the reweighted image score vs a direct numpy computation."""
    train, test, _ = synthetic(seed=3, g=5, c=6, n_train=6, n_anom=2)
    m = PatchCore(settings=PatchCoreSettings(coreset_ratio=0.3, embed_dim=4))
    m.fit(train, CTX)
    out = m.score(test, CTX)
    bank = m.bank.double().numpy()
    feats = embed_patches(test.patches, 3, 4).double().numpy()
    grids = np.stack([pairwise_distances(feats[i].reshape(-1, 4), bank).min(1) for i in range(test.n)])
    want_maps = grid_to_maps(torch.from_numpy(grids.reshape(test.n, 5, 5)).float(), size=32, sigma=4.0)
    np.testing.assert_allclose(out.maps, want_maps, rtol=1e-4, atol=1e-5)
    for i in range(test.n):
        f = feats[i].reshape(-1, 4)
        d = pairwise_distances(f, bank)
        patch = d.min(1)
        t = int(np.argmax(patch))
        m_star = int(np.argmin(d[t]))
        to_mstar = np.linalg.norm(bank - bank[m_star], axis=1)
        to_mstar[m_star] = -1.0  # m* is its own first support member
        support = np.argsort(to_mstar, kind="stable")[:3]
        ds = np.array([np.linalg.norm(f[t] - bank[j]) for j in support])
        w = 1.0 - np.exp(ds[0]) / np.exp(ds).sum()
        assert out.image[i] == pytest.approx(w * patch[t], rel=1e-3)
    assert out.maps.dtype == np.float32


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_support_is_m_star_then_its_nearest_others_with_duplicates(backend: str) -> None:
    """support_indices: m* first, then its b-1 nearest OTHER memory features; a duplicate of m* (distance 0)
    is one of those others and cannot displace m* itself (brute-force order; no other ties in the data)."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    bank = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    bank[17] = bank[3]  # an exact duplicate of m* = 3
    m_star = torch.tensor([3, 17, 25, 0])
    got = support_indices(bank, m_star, 3, backend)
    d = torch.cdist(bank.double(), bank.double())
    for row, m in zip(got.tolist(), m_star.tolist(), strict=True):
        others = [j for j in torch.argsort(d[m], stable=True).tolist() if j != m]
        assert row == [m, *others[:2]], (m, row)
    assert got[0, 1] == 17 and got[1, 1] == 3  # the duplicates are each other's nearest other


def test_faiss_backend_agrees() -> None:
    pytest.importorskip("faiss")
    train, test, _ = synthetic(seed=1, g=6, c=8, n_train=8, n_anom=2)
    a = PatchCore(settings=PatchCoreSettings(knn_backend="torch"))
    b = PatchCore(settings=PatchCoreSettings(knn_backend="faiss"))
    a.fit(train, CTX)
    b.fit(train, CTX)
    np.testing.assert_allclose(a.score(test, CTX).image, b.score(test, CTX).image, rtol=1e-4)


# ----------------------------------------------------------------------------- end to end
def test_clean_pool_ranks_anomalies_first() -> None:
    train, test, labels = synthetic(seed=0)
    m = PatchCore(settings=PatchCoreSettings())
    m.fit(train, CTX)
    out = m.score(test, CTX)
    assert roc_auc_score(labels, out.image) > 0.9
    assert m.diagnostics["bank_injected_frac"] == 0.0
    assert m.diagnostics["bank_size"] == coreset_size(30 * 64, 0.1)
    assert set(m.diagnostics) == set(PatchCore.diagnostic_names)
    assert m.history == [{"epoch": 0, "iteration": 0, **{f"diag_{k}": v for k, v in m.diagnostics.items()}}]


def test_contaminated_pool_puts_injected_patches_in_bank() -> None:
    train, test, labels = synthetic(seed=0, n_inject=6)
    m = PatchCore(settings=PatchCoreSettings())
    m.fit(train, CTX)
    assert m.diagnostics["bank_injected_frac"] > 6 / 36  # greedy coverage favours the rare patches
    assert roc_auc_score(labels, m.score(test, CTX).image) < 0.9


def test_same_seed_same_scores_and_reweight_switch() -> None:
    train, test, _ = synthetic(seed=2, n_train=12, n_anom=4)
    runs = []
    for _ in range(2):
        m = PatchCore(settings=PatchCoreSettings(coreset_ratio=0.05))
        m.fit(train, FitContext(seed=7, map_size=32))
        runs.append(m.score(test, FitContext(seed=7, map_size=32)))
    np.testing.assert_array_equal(runs[0].image, runs[1].image)
    np.testing.assert_array_equal(runs[0].maps, runs[1].maps)
    plain = PatchCore(settings=PatchCoreSettings(coreset_ratio=0.05, reweight=False))
    plain.fit(train, FitContext(seed=7, map_size=32))
    raw = plain.score(test, FitContext(seed=7, map_size=32))
    assert np.all(runs[0].image <= raw.image + 1e-6)  # weights lie in (0, 1]
    assert np.all(runs[0].image > 0)


def test_tiny_grid_tiny_pool_and_image_level_data() -> None:
    """A one-row bank (no reweighting: b = 1) and a 1x1 grid: scores are plain distances to the bank,
    by hand; image-level test data (no masks) still gets maps."""
    rng = np.random.default_rng(0)
    one = make_fs(rng.standard_normal((1, 2, 2, 5)), np.zeros(1))
    m = PatchCore(settings=PatchCoreSettings(coreset_ratio=0.01))
    m.fit(one, CTX)
    pool = embed_patches(one.patches, 3, 1024).reshape(-1, 5)
    assert m.bank.shape == (1, 5) and any(torch.equal(m.bank[0], row) for row in pool)
    test = make_fs(rng.standard_normal((3, 2, 2, 5)), np.zeros(3))  # masks None: image-level data
    out = m.score(test, CTX)
    grid = torch.linalg.vector_norm(embed_patches(test.patches, 3, 1024) - m.bank[0], dim=-1)  # [3, 2, 2]
    np.testing.assert_allclose(out.image, grid.amax(dim=(1, 2)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.maps, grid_to_maps(grid, size=32, sigma=4.0), rtol=1e-5, atol=1e-6)
    two = PatchCore(settings=PatchCoreSettings(coreset_ratio=0.5, aggregation_kernel=1, embed_dim=None))
    train2 = make_fs(rng.standard_normal((2, 1, 1, 3)), np.zeros(2))
    two.fit(train2, CTX)
    rows = torch.from_numpy(train2.patches.astype(np.float32)).reshape(2, 3)
    assert two.bank.shape == (1, 3) and any(torch.equal(two.bank[0], r) for r in rows)
    test2 = make_fs(rng.standard_normal((2, 1, 1, 3)), np.zeros(2))
    out = two.score(test2, CTX)
    want = np.linalg.norm(test2.patches.astype(np.float32).reshape(2, 3) - two.bank[0].numpy(), axis=1)
    np.testing.assert_allclose(out.image, want, rtol=1e-5)
    np.testing.assert_allclose(out.maps, np.broadcast_to(want[:, None, None], (2, 32, 32)), rtol=1e-5)


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        PatchCoreSettings(unknown=1)
    with pytest.raises(ValidationError):
        PatchCoreSettings(aggregation_kernel=2)
    with pytest.raises(ValidationError):
        PatchCoreSettings(coreset_ratio=0.0)
    with pytest.raises(ValidationError):
        PatchCoreSettings(knn_backend="annoy")
    with pytest.raises(RuntimeError):
        PatchCore(settings=PatchCoreSettings()).score(synthetic(n_train=2, n_anom=1)[1], CTX)
