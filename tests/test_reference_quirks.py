"""The rivals as their authors released them (issue 24): the `reference_quirks` switch of every method, the
contamination setting InReaCh's needs, and PatchCore's and SoftPatch's released behaviour against float64
loops written from the description of the released code (docs/protocol.md). InReaCh's own departures are
tested in test_inreach.py, nearest upsampling in test_knn_maps.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from patch_fixtures import make_fs, synthetic
from pydantic import ValidationError
from sklearn.neighbors import LocalOutlierFactor

from funad.features import FeatureSet
from funad.maps import grid_to_maps
from funad.methods import create_method, method_class
from funad.methods.base import FitContext
from funad.methods.coreset import (
    coreset_size,
    greedy_coreset,
    random_projection_matrix,
    released_start_points,
)
from funad.methods.patchcore import PatchCore, aggregate_patches, embed_patches, unfold_pool
from funad.methods.softpatch import LOF_PROJECTION_SEED_OFFSET, SoftPatch, linear_quantile, removed_patches
from harness.spec import SpecError, load_spec

CTX = FitContext(seed=3, map_size=24)

#: what the released code runs, as issue 24 describes it (hand-written: the RELEASED tables must equal it)
PATCHCORE_RELEASED = {"squared_distance": True, "reweight": False, "aggregation": "released",
                      "coreset_start": "released", "truncate_coreset": True}
EXPECTED_RELEASED: dict[str, dict[str, Any]] = {
    "patchcore": PATCHCORE_RELEASED,
    "softpatch": {**PATCHCORE_RELEASED, "lof_k": 5, "projection_per_use": True, "denoise_in_greedy": True,
                  "strict_quantile": True},
    "inreach": {"swapped_filing": True, "nearest_upsampling": True, "strict_trim": True,
                "keep_duplicates": True, "seed_order": "pool"},
    "funad": {"noise_aliasing": True, "unseeded_init": True},
}


# ----------------------------------------------------------------------------- the switch
@pytest.mark.parametrize("method", sorted(EXPECTED_RELEASED))
def test_reference_quirks_sets_every_released_value_and_refuses_a_contrary_one(method: str) -> None:
    cls = method_class(method).Settings
    assert cls.RELEASED == EXPECTED_RELEASED[method]
    paper, released = cls(), cls(reference_quirks=True)
    for name, value in cls.RELEASED.items():
        assert getattr(paper, name) != value, f"{name}: the default is the paper, not the released code"
        assert getattr(released, name) == value
        assert cls(reference_quirks=True, **{name: value}) == released  # saying it again is fine
        with pytest.raises(ValidationError, match=f"reference_quirks=True contradicts {name}="):
            cls(reference_quirks=True, **{name: getattr(paper, name)})
    assert cls(**released.model_dump()) == released  # round trip
    # every other setting keeps its default
    others = set(paper.model_dump()) - set(cls.RELEASED) - {"reference_quirks"}
    assert {k: getattr(released, k) for k in others} == {k: getattr(paper, k) for k in others}


def _sweep(tmp_path: Path, contamination: dict[str, Any], inreach: dict[str, Any]) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({
        "name": "s", "datasets": [{"kind": "synthetic", "categories": ["brick"]}],
        "contamination": contamination,
        "methods": {"inreach": inreach, "patchcore": {"reference_quirks": True}},
    }))
    return p


def test_sweep_validation_refuses_inreach_reference_quirks_without_the_appended_pool(tmp_path: Path) -> None:
    bad = _sweep(tmp_path, {"ratios": [0.1]}, {"reference_quirks": [False, True]})
    with pytest.raises(SpecError) as exc:
        load_spec(bad, check_data=False)
    assert exc.value.problems == [
        f"{bad}: methods.inreach.reference_quirks: needs contamination.pool_order: appended, got sorted "
        "(allowed: contamination.pool_order: appended, or reference_quirks left at its default)"
    ]
    ok = load_spec(_sweep(tmp_path, {"ratios": [0.1], "pool_order": "appended"}, {"reference_quirks": True}),
                   check_data=False)
    assert ok.method_points()["inreach"][0].settings.seed_order == "pool"
    load_spec(_sweep(tmp_path, {"ratios": [0.1]}, {"seed_order": "pool"}), check_data=False)  # alone: any


# ----------------------------------------------------------------------------- aggregation and pooling
def brute_neighbourhood(x: np.ndarray, n: int, i: int, j: int, k: int) -> list[tuple[int, int] | None]:
    """The k x k places around (i, j), row-major; None where the place is outside the grid."""
    _, h, w, _ = x.shape
    r = k // 2
    return [(a, b) if 0 <= a < h and 0 <= b < w else None
            for a in range(i - r, i + r + 1) for b in range(j - r, j + r + 1)]


def brute_aggregate(x: np.ndarray, k: int, zero_pad: bool) -> np.ndarray:
    """k x k mean per channel: over the existing neighbours, or over all k*k places with zeros outside."""
    out = np.zeros_like(x)
    nn, h, w, c = x.shape
    for n in range(nn):
        for i in range(h):
            for j in range(w):
                places = [q for q in brute_neighbourhood(x, n, i, j, k) if q is not None]
                total = sum(x[n, a, b] for a, b in places)
                out[n, i, j] = total / (k * k if zero_pad else len(places))
    return out


def brute_unfold_pool(x: np.ndarray, k: int, dim: int | None) -> np.ndarray:
    """The released embedding: each cell's zero-padded k x k neighbourhood flattened channel-major
    (channel 0's k*k values, then channel 1's...), then adaptive average pooling to `dim` values (bin t
    covers floor(t L / dim) .. ceil((t + 1) L / dim) - 1 of the L values)."""
    nn, h, w, c = x.shape
    rows = []
    for n in range(nn):
        for i in range(h):
            for j in range(w):
                places = brute_neighbourhood(x, n, i, j, k)
                v = [0.0 if q is None else x[n, q[0], q[1], ch] for ch in range(c) for q in places]
                if dim is not None:
                    ln = len(v)
                    v = [float(np.mean(v[t * ln // dim : -(-(t + 1) * ln // dim)])) for t in range(dim)]
                rows.append(v)
    return np.asarray(rows).reshape(nn, h, w, -1)


def test_zero_padded_aggregation_equals_loops_and_scales_the_border() -> None:
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 3))
    for zero_pad in (False, True):
        got = aggregate_patches(torch.tensor(x), 3, zero_pad=zero_pad).numpy()
        np.testing.assert_allclose(got, brute_aggregate(x, 3, zero_pad), rtol=1e-12, atol=1e-12)
    ones = aggregate_patches(torch.ones(1, 3, 3, 1, dtype=torch.float64), 3, zero_pad=True)[0, :, :, 0]
    edge, corner = 6 / 9, 4 / 9
    want = [[corner, edge, corner], [edge, 1, edge], [corner, edge, corner]]
    np.testing.assert_allclose(ones.numpy(), want)


@pytest.mark.parametrize(("c", "k", "dim"), [(5, 3, 7), (2, 3, 30), (4, 3, None), (6, 1, 4), (3, 3, 3)])
def test_released_unfold_pool_equals_loops(c: int, k: int, dim: int | None) -> None:
    x = np.random.default_rng(c + k).standard_normal((2, 4, 3, c))
    got = unfold_pool(torch.tensor(x), k, dim).numpy()
    np.testing.assert_allclose(got, brute_unfold_pool(x, k, dim), rtol=1e-12, atol=1e-12)
    if dim == c:  # bins of exactly one channel's k*k values: the zero-padded k x k mean of each channel
        np.testing.assert_allclose(got, brute_aggregate(x, k, True), rtol=1e-12, atol=1e-12)


def test_embed_patches_released_from_float16_and_always_pools() -> None:
    x = np.random.default_rng(1).standard_normal((3, 4, 4, 2)).astype(np.float16)
    got = embed_patches(x, 3, 32, aggregation="released", chunk_images=2)  # 18 values pooled UP to 32
    assert got.shape == (3, 4, 4, 32) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), brute_unfold_pool(x.astype(np.float64), 3, 32), rtol=1e-6)
    zero = embed_patches(x, 3, None, aggregation="zero_pad")
    np.testing.assert_allclose(zero.numpy(), brute_aggregate(x.astype(np.float64), 3, True), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown aggregation"):
        embed_patches(x, 3, None, aggregation="max")


# ----------------------------------------------------------------------------- coreset
def brute_released_greedy(
    x: np.ndarray, n_select: int, starts: list[int], pickable: np.ndarray | None = None
) -> list[int]:
    """The released approximate greedy on features x: every point starts at its mean Euclidean
    distance to the starting points; each step picks the largest (first maximum) and lowers every
    point's value to its distance to the pick, times the point's 0/1 weight when given."""
    n = len(x)
    w = np.ones(n) if pickable is None else pickable.astype(float)
    cur = [float(np.mean([np.linalg.norm(x[i] - x[s]) for s in starts])) for i in range(n)]
    picks = []
    for _ in range(n_select):
        i = int(np.argmax(cur))
        picks.append(i)
        cur = [min(cur[j], float(np.linalg.norm(x[j] - x[i])) * w[j]) for j in range(n)]
    return picks


def test_coreset_size_truncates_like_the_released_code() -> None:
    cases = ((19, 0.1, 2, 1), (15, 0.1, 2, 1), (25, 0.1, 2, 2), (288, 0.1, 29, 28), (5, 0.1, 1, 1),
             (10, 1.0, 10, 10))
    for n, ratio, rounded, truncated in cases:
        assert coreset_size(n, ratio) == rounded and coreset_size(n, ratio, truncate=True) == truncated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_released_greedy_start_equals_loops(seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((150, 6))
    starts = released_start_points(150, 10, seed)
    assert len(set(starts.tolist())) == 10 and torch.equal(starts, released_start_points(150, 10, seed))
    got = greedy_coreset(torch.tensor(x), 20, projection=0, seed=seed, start_points=10)
    assert got.tolist() == brute_released_greedy(x, 20, starts.tolist())
    assert got.tolist() != greedy_coreset(torch.tensor(x), 20, projection=0, seed=seed).tolist()
    assert released_start_points(4, 10, seed).sort().values.tolist() == [0, 1, 2, 3]  # all when n <= count


def test_released_greedy_with_unpickable_points_equals_loops() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((120, 4))
    x[7] += 30.0  # far from everything: the first pick, which the released weights do not touch
    pickable = rng.random(120) > 0.3
    pickable[7] = False
    want = brute_released_greedy(x, 25, released_start_points(120, 10, 4).tolist(), pickable)
    assert want[0] == 7 and all(pickable[i] for i in want[1:])
    got = greedy_coreset(torch.tensor(x), 25, projection=0, seed=4, start_points=10,
                         pickable=torch.tensor(pickable))
    assert got.tolist() == want


def test_linear_quantile_is_numpys() -> None:
    v = np.random.default_rng(6).random(437)
    for q in (0.0, 0.15, 0.5, 0.85, 1.0):
        assert linear_quantile(torch.tensor(v), q) == pytest.approx(float(np.quantile(v, q)), abs=1e-15)
    assert linear_quantile(torch.tensor([1.0, 2.0, 4.0]), 0.75) == 3.0  # pos 1.5: between 2 and 4


def test_removal_strictly_above_the_quantile_by_hand() -> None:
    def removed(values: list[float], ratio: float, strict: bool) -> list[int]:
        return sorted(removed_patches(torch.tensor(values), ratio, strict).tolist())

    five = [0.0, 1.0, 2.0, 3.0, 4.0]  # the 0.75 quantile is exactly 3: not strictly above it
    assert removed(five, 0.25, True) == [4] == removed(five, 0.25, False)
    assert removed([1.0, 1.0, 1.0, 1.0, 2.0], 0.2, True) == [4]  # threshold 1.2
    assert removed([1.0] * 5, 0.2, True) == [] and removed([1.0] * 5, 0.2, False) == [0]  # ties: stable order
    ramp = [float(v) for v in range(432)]  # pos 0.85 * 431 = 366.35: 65 above it, floor(0.15 * 432) = 64
    assert removed(ramp, 0.15, True) == list(range(367, 432))
    assert removed(ramp, 0.15, False) == list(range(368, 432))
    assert removed([0.5, 0.2], 0.0, True) == [] == removed([0.5, 0.2], 0.0, False)


# ----------------------------------------------------------------------------- whole methods against loops
def features64(fs: FeatureSet, dim: int) -> np.ndarray:
    """The released embedding of a FeatureSet's float16 patches, in float64 loops: [N, H*W, dim]."""
    x = brute_unfold_pool(np.asarray(fs.patches, dtype=np.float64), 3, dim)
    return x.reshape(x.shape[0], -1, dim)


def nearest_sq(q: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: the squared distance to its nearest bank row, and that row's index."""
    d = np.array([[float(((a - b) ** 2).sum()) for b in bank] for a in q])
    return d.min(1), d.argmin(1)


def score_released(train: FeatureSet, test: FeatureSet, method: str, settings: dict[str, Any]):
    m = create_method(method, {"reference_quirks": True, "embed_dim": 16, "coreset_projection": 0} | settings)
    assert isinstance(m, PatchCore)
    m.fit(train, CTX)
    return m, m.score(test, CTX)


def test_patchcore_as_released_equals_loops() -> None:
    train, test, _ = synthetic(seed=2, g=6, c=5, n_train=8, n_anom=4)
    m, s = score_released(train, test, "patchcore", {})
    tr = features64(train, 16).reshape(-1, 16)
    starts = released_start_points(len(tr), 10, CTX.seed).tolist()
    picks = brute_released_greedy(tr, int(0.1 * len(tr)), starts)
    assert len(picks) == 28 == coreset_size(len(tr), 0.1) - 1  # 28.8 truncated, not rounded to 29
    np.testing.assert_allclose(m.bank.numpy(), tr[picks], rtol=1e-5, atol=1e-6)
    d2, _ = nearest_sq(features64(test, 16).reshape(-1, 16), tr[picks])
    grid = d2.reshape(test.n, 6, 6)
    np.testing.assert_allclose(s.image, grid.reshape(test.n, -1).max(1), rtol=1e-4)  # plain max of d^2
    np.testing.assert_allclose(s.maps, grid_to_maps(grid, size=24, sigma=4.0), rtol=1e-4, atol=1e-6)


def brute_lof_weights(x: np.ndarray, k: int) -> np.ndarray:
    """[N, P] LOF of every patch among the N images' patches at its position (scikit-learn), clamped at 0."""
    n, p, _ = x.shape
    out = np.zeros((n, p))
    for q in range(p):
        out[:, q] = -LocalOutlierFactor(n_neighbors=k).fit(x[:, q]).negative_outlier_factor_
    return out.clip(min=0.0)


def test_softpatch_as_released_equals_loops() -> None:
    train, test, _ = synthetic(seed=4, g=6, c=5, n_train=10, n_anom=4, n_inject=2)
    m, s = score_released(train, test, "softpatch", {})
    x = features64(train, 16)
    w = brute_lof_weights(x, 5).reshape(-1)  # k = 5, the released model's default
    removed = {i for i in range(len(w)) if w[i] > np.quantile(w, 0.85)}  # strictly above the quantile
    assert len(removed) == math.floor(0.15 * len(w)) + 1  # here one more than the floor
    pickable = np.array([i not in removed for i in range(len(w))])
    budget = int(0.1 * len(w))  # of ALL patches, removed ones included
    starts = released_start_points(len(w), 10, CTX.seed).tolist()
    picks = brute_released_greedy(x.reshape(-1, 16), budget, starts, pickable)
    assert m.diagnostics["removed_frac"] == len(removed) / len(w)
    np.testing.assert_allclose(m.bank.numpy(), x.reshape(-1, 16)[picks], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.bank_weight.numpy(), w[picks], rtol=1e-4)
    d2, nn = nearest_sq(features64(test, 16).reshape(-1, 16), x.reshape(-1, 16)[picks])
    grid = (d2 * w[picks][nn]).reshape(test.n, 6, 6)  # d^2 * w, not d * w
    np.testing.assert_allclose(s.image, grid.reshape(test.n, -1).max(1), rtol=1e-4)
    np.testing.assert_allclose(s.maps, grid_to_maps(grid, size=24, sigma=4.0), rtol=1e-4, atol=1e-6)


def test_softpatch_projection_per_use_draws_the_discriminator_its_own_matrix() -> None:
    train, _, _ = synthetic(seed=5, g=4, c=5, n_train=12)
    x = np.asarray(train.patches, dtype=np.float64).reshape(train.n, 16, 5)
    weights = {}
    for per_use in (False, True):
        m = SoftPatch(settings=SoftPatch.Settings(
            aggregation_kernel=1, embed_dim=None, coreset_projection=3, lof_k=5, denoise_ratio=0.0,
            coreset_ratio=1.0, projection_per_use=per_use))  # every patch in the bank: bank_weight = all w
        m.fit(train, CTX)
        weights[per_use] = m.bank_weight.numpy().reshape(train.n, 16)
        seed = CTX.seed + (LOF_PROJECTION_SEED_OFFSET if per_use else 0)
        proj = random_projection_matrix(5, 3, seed, dtype=torch.float64).numpy()
        np.testing.assert_allclose(weights[per_use], brute_lof_weights(x @ proj, 5), rtol=1e-4)
    assert not np.allclose(weights[False], weights[True])


def test_squared_distance_alone_squares_the_patch_scores() -> None:
    train, test, _ = synthetic(seed=6, g=5, c=6, n_train=10, n_inject=2)
    feats = torch.tensor(np.asarray(test.patches, dtype=np.float32)).reshape(-1, 6)
    for method in ("patchcore", "softpatch"):
        lin = create_method(method, {"aggregation_kernel": 1, "embed_dim": None})
        sq = create_method(method, {"aggregation_kernel": 1, "embed_dim": None, "squared_distance": True})
        for m in (lin, sq):
            assert isinstance(m, PatchCore)
            m.fit(train, CTX)
        torch.testing.assert_close(sq.bank, lin.bank)  # the fit does not depend on it
        s_lin, dist, nn = lin.patch_scores(feats)
        s_sq, dist2, nn2 = sq.patch_scores(feats)
        assert torch.equal(dist, dist2) and torch.equal(nn, nn2)
        w = torch.ones_like(dist) if lin.bank_weight is None else lin.bank_weight[nn]
        torch.testing.assert_close(s_lin, dist * w)
        torch.testing.assert_close(s_sq, dist.square() * w, rtol=1e-5, atol=1e-6)


def test_reference_settings_run_through_make_fs_shapes() -> None:
    # tiny pools and a one-image pool still work with every released setting on
    x = np.random.default_rng(7).standard_normal((1, 3, 3, 4))
    for method in ("patchcore", "softpatch"):
        m = create_method(method, {"reference_quirks": True, "embed_dim": 8})
        m.fit(make_fs(x, np.zeros(1)), CTX)
        s = m.score(make_fs(x, np.zeros(1)), CTX)
        assert np.isfinite(s.image).all() and s.maps.shape == (1, 24, 24)
