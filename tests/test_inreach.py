"""InReaCh: association, channels and trim against brute-force loops, planted and concentration cases,
settings, determinism, seed order, positional columns, exact scoring, the cost benchmark at tiny shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patch_fixtures import make_fs
from pydantic import ValidationError

from funad.maps import grid_to_maps
from funad.methods import create_method, default_settings
from funad.methods.base import FitContext
from funad.methods.inreach import (
    SIGMA_MAP_SIZE,
    InReaCh,
    InReaChSettings,
    associate,
    build_channels,
    positional_columns,
    seed_permutation,
    spread_keep,
    transpose_score,
)
from funad.search import faiss_available
from funad.search.pairs import compare_rows, cross_nearest, mutual_nearest, seed_columns

CTX = FitContext(seed=0, map_size=32)
RAW = {"aggregation_kernel": 1, "embed_dim": None, "positional": "off"}


# ----------------------------------------------------------------------------- brute force
def sqd(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum())


def brute_association(x: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Spec loops: every later image vs every earlier seed, smallest distance wins (ties: lowest seed)."""
    n, p, _ = x.shape
    out = {
        "dist": np.full((n, p), np.inf),
        "seed": np.full((n, p), -1),
        "patch": np.full((n, p), -1),
        "mutual": np.zeros((n, p), bool),
    }
    for c in range(1, n):
        for xi in range(p):
            for s in range(min(k, c)):
                ds = [sqd(x[c, xi], x[s, y]) for y in range(p)]
                m = int(np.argmin(ds))  # first minimum
                if ds[m] < out["dist"][c, xi]:
                    back = [sqd(x[c, q], x[s, m]) for q in range(p)]
                    out["dist"][c, xi], out["seed"][c, xi], out["patch"][c, xi] = ds[m], s, m
                    out["mutual"][c, xi] = int(np.argmin(back)) == xi
    return out


def brute_links(x: np.ndarray, k: int, swapped: bool = False) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Every channel (root (seed, patch) -> members) from the brute-force association: a mutual link of
    compare patch (c, q) to its best seed s at patch m files member (c, q) under root (s, m), or, as the
    released code does (`swapped`), member (c, m) under root (s, q)."""
    n, p, _ = x.shape
    a = brute_association(x, k)
    chans: dict[tuple[int, int], list[tuple[int, int]]] = {
        (s, m): [(s, m)] for s in range(min(k, n)) for m in range(p)
    }
    for c in range(n):
        for q in range(p):
            if a["mutual"][c, q]:
                s, m = int(a["seed"][c, q]), int(a["patch"][c, q])
                if swapped:
                    chans[(s, q)].append((c, m))
                else:
                    chans[(s, m)].append((c, q))
    return chans


def brute_channels(
    x: np.ndarray, k: int, min_len: int, rule: str, tau: float
) -> tuple[set[tuple[int, int]], dict[tuple[int, int], list[tuple[int, int]]]]:
    """(memory as (position, patch) set, the kept channels) from the brute-force association."""
    chans = brute_links(x, k)
    memory: set[tuple[int, int]] = set()
    kept: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for root, mem in chans.items():
        if len(mem) <= min_len:
            continue
        f = np.array([x[c, q] for c, q in mem])
        r = np.linalg.norm(f - f.mean(0), axis=1)
        bound = tau * r.std() if rule == "reference" else r.mean() + tau * r.std()
        mem2 = [e for e, rr in zip(mem, r, strict=True) if rr <= bound]
        if len(mem2) > min_len:
            kept[root] = mem2
            memory.update(mem2)
    return memory, kept


def structured(n: int, p: int, d: int, noise: float, seed: int) -> np.ndarray:
    """[n, p, d] float16-exact values: a prototype per cell plus noise (so channels form)."""
    rng = np.random.default_rng(seed)
    protos = 3.0 * rng.standard_normal((p, d))
    x = protos[None] + noise * rng.standard_normal((n, p, d))
    return x.astype(np.float16).astype(np.float64)


def fs_of(x: np.ndarray, labels: np.ndarray | None = None):
    """[N, P, D] with P a square -> FeatureSet [N, g, g, D]."""
    n, p, d = x.shape
    g = int(round(p**0.5))
    return make_fs(x.reshape(n, g, g, d), np.zeros(n) if labels is None else labels)


def fit(x: np.ndarray, ctx: FitContext = CTX, labels: np.ndarray | None = None, **settings) -> InReaCh:
    m = create_method("inreach", {**RAW, **settings})
    assert isinstance(m, InReaCh)
    m.fit(fs_of(x, labels), ctx)
    return m


def memory_set(m: InReaCh, p: int) -> set[tuple[int, int]]:
    """The memory as (position in association order, patch), comparable with brute_channels."""
    assert m.memory_index is not None and m.order is not None
    pos_of = {int(v): i for i, v in enumerate(m.order.tolist())}
    return {(pos_of[int(f) // p], int(f) % p) for f in m.memory_index.tolist()}


# ----------------------------------------------------------------------------- pairs
def test_mutual_nearest_matches_loops() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((13, 5)), rng.standard_normal((11, 5))
    r = mutual_nearest(torch.tensor(a), torch.tensor(b))
    for i in range(13):
        ds = [sqd(a[i], b[j]) for j in range(11)]
        m = int(np.argmin(ds))
        back = int(np.argmin([sqd(a[q], b[m]) for q in range(13)]))
        assert int(r.index[i]) == m and bool(r.mutual[i]) == (back == i)
        assert float(r.dist[i]) == pytest.approx(ds[m], rel=1e-9, abs=1e-12)


def test_cross_nearest_ties_go_to_the_lowest_index_and_widths_are_checked() -> None:
    # integer coordinates: every distance exact, duplicates tie exactly
    seed = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    comp = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.5]]])
    r = cross_nearest(seed_columns(compare_rows(seed)), compare_rows(comp))
    # compare 0 and 1 both -> seed 1 (duplicate seed 2 loses the tie); seed 1's nearest is compare 0
    assert r.index.tolist() == [[1, 1, 0]] and r.mutual.tolist() == [[True, False, True]]
    assert r.dist.tolist() == [[0.0, 0.0, 0.25]]
    with pytest.raises(ValueError, match="widths differ"):
        cross_nearest(seed_columns(compare_rows(seed)), compare_rows(comp[..., :1]))


# ----------------------------------------------------------------------------- association
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_association_equals_brute_force_any_chunk(kind: str) -> None:
    n, p, d, k = 6, 9, 3, 3
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, p, d)) if kind == "random" else structured(n, p, d, 0.8, 2)
    ref = brute_association(x, k)
    assert ref["mutual"].any() and not ref["mutual"].all()
    for dtype in (torch.float64, torch.float32):
        rows = compare_rows(torch.tensor(x - x.mean((0, 1)), dtype=dtype))
        for chunk in (1, 2, 4, 64):  # 4 divides none of the per-seed compare counts 5, 4, 3
            a = associate(rows, k, chunk)
            assert np.array_equal(a.seed.numpy(), ref["seed"]), (dtype, chunk)
            assert np.array_equal(a.patch.numpy(), ref["patch"]), (dtype, chunk)
            assert np.array_equal(a.mutual.numpy(), ref["mutual"]), (dtype, chunk)
            np.testing.assert_allclose(a.dist.numpy()[1:], ref["dist"][1:], rtol=1e-4, atol=1e-5)
            assert torch.isinf(a.dist[0]).all() and (a.seed[0] == -1).all()


def test_association_ties_lowest_seed_and_patch() -> None:
    # small integers, not centred: all distances exact, so the tie rules alone decide
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(6, 9, 3)).astype(np.float64)
    ref = brute_association(x, 3)
    a = associate(compare_rows(torch.tensor(x)), 3, 2)
    for key in ("seed", "patch", "mutual"):
        assert np.array_equal(getattr(a, key).numpy(), ref[key]), key


@pytest.mark.parametrize(
    ("min_len", "rule", "tau"), [(3, "reference", 5.0), (1, "reference", 1.5), (2, "mean_plus", 0.5)]
)
def test_fit_memory_equals_brute_force_and_chunks_agree(min_len: int, rule: str, tau: float) -> None:
    n, p, d, k = 6, 9, 3, 3
    x = structured(n, p, d, 0.6, 4)
    settings = {"assoc_depth": k, "min_channel_length": min_len, "spread_rule": rule, "max_channel_std": tau}
    models = [fit(x, chunk_images=c, **settings) for c in (1, 2, 64)]
    order = models[0].order
    assert order is not None
    expected, kept = brute_channels(x[order.numpy()], k, min_len, rule, tau)
    assert kept, "the case must keep some channel"
    for m in models:
        assert memory_set(m, p) == expected
        assert torch.equal(m.memory_index, models[0].memory_index)
        assert torch.equal(m.memory, models[0].memory)
        assert m.diagnostics["memory_size"] == len(expected)
        assert m.diagnostics["channels_kept"] == len(kept)


def test_trim_removes_something_in_the_brute_force_case() -> None:
    # guards the case above: with tau = 1.5 the trim is exercised (it drops members), not a no-op
    x = structured(6, 9, 3, 0.6, 4)
    m = fit(x, assoc_depth=3, min_channel_length=1, max_channel_std=1.5)
    assert 0.0 < m.diagnostics["trim_frac"] < 1.0


def test_channel_invariants() -> None:
    n, p, k, min_len = 12, 16, 4, 3
    x = structured(n, p, 4, 1.2, 5)
    rows = compare_rows(torch.tensor(x - x.mean((0, 1)), dtype=torch.float32))
    a = associate(rows, k, 5)
    ch = build_channels(
        a, rows.reshape(n * p, -1)[:, :-2], k, min_channel_length=min_len, rule="reference", tau=3.0
    )
    chan, flat = ch.chan.numpy(), ch.flat.numpy()
    roots = np.arange(k * p)
    assert np.array_equal(chan[: k * p], roots) and np.array_equal(flat[: k * p], roots)  # root = seed patch
    members = flat[k * p :]
    assert len(np.unique(members)) == len(members)  # a patch is a member of at most one channel
    assert (members // p >= 1).all() and (chan < k * p).all()  # roots are seed patches
    for c in np.unique(chan):
        sel = chan == c
        imgs = flat[sel] // p
        assert len(np.unique(imgs)) == len(imgs)  # at most one entry per image
        for mask in (ch.spanned, ch.kept):
            s = int(mask.numpy()[sel].sum())
            assert s == 0 or s > min_len
    assert ch.kept.sum() > 0 and (ch.kept <= ch.trimmed).all() and (ch.trimmed <= ch.spanned).all()
    # every stage bites here: span filter, trim, span filter again
    assert len(chan) > ch.spanned.sum() > ch.trimmed.sum() > ch.kept.sum()


# ----------------------------------------------------------------------------- spread trim
def _keep(values: list[float], rule: str, tau: float) -> list[bool]:
    x = torch.tensor(values, dtype=torch.float32)[:, None]
    return spread_keep(
        x, torch.arange(len(values)), torch.zeros(len(values), dtype=torch.int64), rule=rule, tau=tau
    ).tolist()


def test_trim_boundary_on_a_hand_made_channel() -> None:
    # mean 0, radii 1 1 3 3: mean radius 2, sigma 1; the far pair sits exactly on each rule's bound
    ch = [-1.0, 1.0, -3.0, 3.0]
    assert _keep(ch, "reference", 3.0) == [True] * 4  # r = 3 = tau * sigma is kept (<=)
    assert _keep(ch, "reference", 2.999) == [True, True, False, False]
    assert _keep(ch, "mean_plus", 1.0) == [True] * 4  # r = 3 = 2 + 1 * sigma
    assert _keep(ch, "mean_plus", 0.999) == [True, True, False, False]


def test_trim_sigma_zero() -> None:
    assert _keep([0.3] * 5, "reference", 5.0) == [True] * 5  # identical members: r = 0 = sigma
    assert _keep([-1.0, 1.0, -1.0, 1.0], "reference", 5.0) == [False] * 4  # equal radii 1 > 0
    assert _keep([-1.0, 1.0, -1.0, 1.0], "mean_plus", 5.0) == [True] * 4


def test_trim_groups_channels_like_loops() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 5))
    rows = rng.permutation(40)[:30]
    chan = rng.integers(0, 4, size=30) * 7  # sparse channel ids, interleaved entries
    for rule, tau in (("reference", 1.5), ("mean_plus", 0.3)):
        got = spread_keep(
            torch.tensor(x), torch.tensor(rows), torch.tensor(chan), rule=rule, tau=tau, chunk=7
        )
        for c in np.unique(chan):
            sel = chan == c
            f = x[rows[sel]]
            r = np.linalg.norm(f - f.mean(0), axis=1)
            bound = tau * r.std() if rule == "reference" else r.mean() + tau * r.std()
            assert got.numpy()[sel].tolist() == (r <= bound).tolist()
    with pytest.raises(ValueError, match="unknown rule"):
        spread_keep(torch.tensor(x), torch.tensor(rows), torch.tensor(chan), rule="max", tau=1.0)


# ----------------------------------------------------------------------------- planted outliers
def planted(n: int = 40, noise_seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [n, 16, 16], outlier directions [64, 16], noise basis [16, 2]): 16 prototypes (norm 10) on the
    fixed cells of a 4x4 grid (the same for every noise_seed), noise in a 2-D subspace (sigma 0.05)."""
    rng = np.random.default_rng(7)
    d = 16
    protos = rng.standard_normal((16, d))
    protos *= 10.0 / np.linalg.norm(protos, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((d, 2)))[0]
    dirs = rng.standard_normal((64, d))
    noise = np.random.default_rng(noise_seed).standard_normal((n, 16, 2))
    return protos[None] + (0.05 * noise) @ basis.T, dirs, basis


def _outlier(dirs: np.ndarray, i: int) -> np.ndarray:
    return 50.0 * dirs[i] / np.linalg.norm(dirs[i])


def test_planted_outliers_stay_out_and_top_the_maps() -> None:
    x, dirs, _ = planted()
    planted_at = [(5, 3), (11, 0), (17, 9), (23, 15), (31, 6)]
    for i, (img, cell) in enumerate(planted_at):
        x[img, cell] = _outlier(dirs, i)
    labels = np.zeros(40)
    labels[[img for img, _ in planted_at]] = 1
    m = fit(x, labels=labels, assoc_depth=3)
    flat = set(m.memory_index.tolist())
    assert not {img * 16 + cell for img, cell in planted_at} & flat  # MNN excludes unique outliers
    nominal = 40 * 16 - len(planted_at)
    assert len(flat) >= 0.9 * nominal
    frac = np.mean([labels[f // 16] for f in m.memory_index.tolist()])
    assert m.diagnostics["memory_injected_frac"] == pytest.approx(frac)
    # test images: two nominal, two with an outlier cell
    test, _, _ = planted(4, noise_seed=8)
    test[2, 5], test[3, 10] = _outlier(dirs, 10), _outlier(dirs, 11)
    ctx = FitContext(seed=0, map_size=64)
    s = m.score(fs_of(test), ctx)
    assert s.maps.shape == (4, 64, 64) and s.image.dtype == np.float32
    assert min(s.image[2:]) > max(s.image[:2])
    for img, cell in ((2, 5), (3, 10)):
        r, c = np.unravel_index(np.argmax(s.maps[img]), (64, 64))
        assert (r // 16, c // 16) == divmod(cell, 4)


def test_a_defect_repeated_with_a_seed_enters_the_memory() -> None:
    x, dirs, basis = planted()
    rng = np.random.default_rng(9)
    defect = _outlier(dirs, 0)
    images = [0, 14, 22, 35]  # image 0 is a seed in pool order
    for img in images:
        x[img, 7] = defect + basis @ (0.05 * rng.standard_normal(2))
    m = fit(x, assoc_depth=3, seed_order="pool")
    flat = set(m.memory_index.tolist())
    assert {img * 16 + 7 for img in images} <= flat
    # the same defect in only three images (span 3, not > 3) stays out
    x2, _, _ = planted()
    for img in images[:3]:
        x2[img, 7] = defect + basis @ (0.05 * rng.standard_normal(2))
    m2 = fit(x2, assoc_depth=3, seed_order="pool")
    assert not {img * 16 + 7 for img in images[:3]} & set(m2.memory_index.tolist())


def test_concentrated_radii_empty_reference_but_not_mean_plus() -> None:
    rng = np.random.default_rng(10)
    d = 64
    protos = rng.standard_normal((16, d))
    protos *= 10.0 / np.linalg.norm(protos, axis=1, keepdims=True)
    x = protos[None] + 0.05 * rng.standard_normal((40, 16, d))  # isotropic: radii concentrate
    with pytest.raises(ValueError, match="empty memory"):
        fit(x, assoc_depth=3)
    m = fit(x, assoc_depth=3, spread_rule="mean_plus")
    assert m.diagnostics["memory_size"] >= 0.9 * 40 * 16
    assert m.diagnostics["trim_frac"] < 0.1


def test_empty_pool_and_tiny_pool_raise() -> None:
    m = create_method("inreach", RAW)
    with pytest.raises(ValueError, match="empty training pool"):
        m.fit(make_fs(np.zeros((0, 2, 2, 3)), np.zeros(0)), CTX)
    with pytest.raises(ValueError, match="empty memory.*min_channel_length=3"):
        fit(structured(3, 4, 3, 0.1, 0))  # three images cannot span more than 3
    with pytest.raises(RuntimeError, match="before fit"):
        m.score(fs_of(structured(1, 4, 3, 0.1, 0)), CTX)


# ----------------------------------------------------------------------------- settings, order, determinism
def test_settings_defaults_and_validation() -> None:
    assert default_settings("inreach") == {
        "assoc_depth": 10,
        "min_channel_length": 3,
        "max_channel_std": 5.0,
        "spread_rule": "reference",
        "positional": "auto",
        "transpose_threshold": None,
        "pos_embed_weight": 5.0,
        "aggregation_kernel": 3,
        "embed_dim": 1024,
        "map_sigma": 13.0,
        "squared_distance": True,
        "seed_order": "random",
        "chunk_images": 64,
        "knn_backend": "auto",
        "max_memory": None,
        "reference_quirks": False,
        "swapped_filing": False,
        "nearest_upsampling": False,
        "strict_trim": False,
        "keep_duplicates": False,
    }
    for bad in (
        {"reference_quirks": True, "seed_order": "random"},
        {"reference_quirks": True, "strict_trim": False},
        {"assoc_depth": 0},
        {"aggregation_kernel": 2},
        {"max_channel_std": 0.0},
        {"spread_rule": "loose"},
        {"positional": "yes"},
        {"seed_order": "sorted"},
        {"chunk_images": 0},
        {"knn_backend": "annoy"},
        {"transpose_threshold": -1.0},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            InReaChSettings(**bad)


def test_deterministic_for_a_seed_and_seed_order() -> None:
    x = structured(20, 16, 4, 0.5, 11)
    a, b = fit(x, assoc_depth=4), fit(x, assoc_depth=4)
    assert torch.equal(a.memory, b.memory) and torch.equal(a.memory_index, b.memory_index)
    test = fs_of(structured(3, 16, 4, 0.5, 12))
    sa, sb = a.score(test, CTX), b.score(test, CTX)
    assert np.array_equal(sa.image, sb.image) and np.array_equal(sa.maps, sb.maps)
    assert torch.equal(a.order, torch.randperm(20, generator=torch.Generator().manual_seed(0)))
    other = fit(x, FitContext(seed=1, map_size=32), assoc_depth=4)
    assert not torch.equal(other.order, a.order)
    assert torch.equal(fit(x, assoc_depth=4, seed_order="pool").order, torch.arange(20))
    assert torch.equal(seed_permutation(20, "pool", 5), torch.arange(20))


def test_random_order_is_pool_order_of_the_permuted_pool() -> None:
    x = structured(20, 16, 4, 0.5, 13)
    r = fit(x, assoc_depth=4)
    perm = r.order.numpy()
    p = fit(x[perm], assoc_depth=4, seed_order="pool")
    torch.testing.assert_close(r.memory, p.memory)  # centres may differ in the last bit
    mapped = torch.tensor(perm)[p.memory_index // 16] * 16 + p.memory_index % 16
    assert torch.equal(mapped, r.memory_index)


def test_max_memory_is_a_seeded_subset() -> None:
    x = structured(20, 16, 4, 0.5, 14)
    full = fit(x, assoc_depth=4)
    capped = fit(x, assoc_depth=4, max_memory=50)
    assert capped.diagnostics["memory_size"] == 50 and capped.memory.shape[0] == 50
    assert set(capped.memory_index.tolist()) <= set(full.memory_index.tolist())
    assert torch.equal(capped.memory_index, fit(x, assoc_depth=4, max_memory=50).memory_index)


def test_diagnostics_and_history() -> None:
    m = fit(structured(20, 16, 4, 0.5, 15), assoc_depth=4)
    assert set(m.diagnostics) == set(InReaCh.diagnostic_names)
    assert m.diagnostics["positional"] == 0.0
    assert m.history == [{"epoch": 0, "iteration": 0, **{f"diag_{k}": v for k, v in m.diagnostics.items()}}]


# ----------------------------------------------------------------------------- positional columns
def test_positional_columns_by_hand() -> None:
    cols = positional_columns(2, 3, 6.0)
    expected = [[0, 0], [2, 0], [4, 0], [0, 3], [2, 3], [4, 3]]  # (w j / W, w i / H), row-major
    assert cols.tolist() == expected


def test_transpose_score_and_auto_decision() -> None:
    rng = np.random.default_rng(16)
    sym = rng.standard_normal((4, 4, 3))
    sym = sym + sym.transpose(1, 0, 2)  # mean map equal to its transpose
    noise = 0.1 * rng.standard_normal((10, 4, 4, 3))
    x_sym = torch.tensor(sym[None] + noise - noise.mean(0))  # the pool mean is exactly `sym`
    assert transpose_score(x_sym) == pytest.approx(0.0, abs=1e-12)
    layout = torch.tensor(rng.standard_normal((4, 4, 3))[None] + noise)
    mean = layout.mean(0)
    num = ((mean - mean.transpose(0, 1)) ** 2).sum(-1).mean()
    assert transpose_score(layout) == pytest.approx(float(num / ((layout - mean) ** 2).sum(-1).mean()))
    assert np.isnan(transpose_score(torch.zeros(3, 2, 4, 1)))
    x = layout.reshape(10, 16, 3).numpy().astype(np.float16).astype(np.float64)
    t = transpose_score(torch.tensor(x.reshape(10, 4, 4, 3), dtype=torch.float32))
    for positional, threshold, on in (
        ("auto", None, False),
        ("auto", t * 0.9, True),
        ("auto", t * 1.1, False),
        ("on", None, True),
        ("off", 0.0, False),
    ):
        m = fit(x, positional=positional, transpose_threshold=threshold, assoc_depth=3, min_channel_length=1)
        assert m.use_positional is on and m.diagnostics["positional"] == float(on)
        assert m.diagnostics["transpose_score"] == pytest.approx(t, rel=1e-5)
        assert m.memory.shape[1] == 3 + 2 * on


def test_positional_columns_make_a_misplaced_patch_anomalous() -> None:
    x, _, _ = planted(20)
    test = x[:1].copy()
    test[0, [0, 15]] = test[0, [15, 0]]  # two nominal patches swap cells
    for positional in ("off", "on"):
        m = fit(x, assoc_depth=3, positional=positional, pos_embed_weight=10.0)
        g = m.patch_scores(torch.tensor(test.reshape(1, 4, 4, 16), dtype=torch.float32))[0].flatten()
        if positional == "off":
            assert float(g.max()) < 0.1
        else:
            assert float(g[[0, 15]].min()) > 10.0 and float(g[1:15].max()) < 0.1


# ----------------------------------------------------------------------------- scoring
def test_scores_are_exact_nearest_memory_distances() -> None:
    x = structured(20, 16, 4, 0.5, 17)
    test = structured(3, 16, 4, 0.9, 18)
    for squared in (True, False):
        m = fit(x, assoc_depth=4, squared_distance=squared)
        bank = x.reshape(-1, 4)[m.memory_index.numpy()]
        q = test.reshape(-1, 4)
        brute = np.array([min(sqd(v, b) for b in bank) for v in q])
        brute = brute if squared else np.sqrt(brute)
        grid = m.patch_scores(torch.tensor(test.reshape(3, 4, 4, 4), dtype=torch.float32))
        np.testing.assert_allclose(grid.numpy().reshape(-1), brute, rtol=1e-4, atol=1e-5)
        ctx = FitContext(seed=0, map_size=48)
        s = m.score(fs_of(test), ctx)
        maps = grid_to_maps(grid, size=48, sigma=13.0 * 48 / SIGMA_MAP_SIZE)
        np.testing.assert_array_equal(s.maps, maps)
        np.testing.assert_array_equal(s.image, maps.reshape(3, -1).max(1))
    empty = m.score(fs_of(test[:0].reshape(0, 16, 4)), ctx)
    assert empty.image.shape == (0,) and empty.maps.shape == (0, 48, 48)
    with pytest.raises(ValueError, match="test grid"):
        m.patch_scores(torch.zeros(1, 2, 2, 4))


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_backend_gives_the_same_scores() -> None:
    x = structured(20, 16, 4, 0.5, 23)
    test = torch.tensor(structured(3, 16, 4, 0.9, 24).reshape(3, 4, 4, 4), dtype=torch.float32)
    ref = fit(x, assoc_depth=4).patch_scores(test)
    torch.testing.assert_close(fit(x, assoc_depth=4, knn_backend="faiss").patch_scores(test), ref)


def test_default_features_run_end_to_end() -> None:
    # the default PatchCore embedding (3x3 aggregation, channel pooling) and 'auto' positional
    x = structured(12, 16, 24, 0.3, 19)
    m = create_method("inreach", {"embed_dim": 8, "assoc_depth": 3})
    m.fit(fs_of(x), CTX)
    s = m.score(fs_of(structured(2, 16, 24, 0.3, 20)), CTX)
    assert m.memory.shape[1] == 8 and np.isfinite(s.image).all() and s.maps.shape == (2, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu() -> None:
    x = structured(20, 16, 4, 0.5, 21)
    test = fs_of(structured(3, 16, 4, 0.9, 22))
    cpu, gpu = fit(x, assoc_depth=4), fit(x, FitContext(seed=0, device="cuda", map_size=32), assoc_depth=4)
    assert torch.equal(cpu.memory_index, gpu.memory_index.cpu())
    np.testing.assert_allclose(
        cpu.score(test, CTX).image, gpu.score(test, FitContext(device="cuda", map_size=32)).image, rtol=1e-4
    )


# ----------------------------------------------------------------------------- cost benchmark
def test_bench_tiny() -> None:
    from benchmarks.inreach_bench import KEYS, TINY_SHAPES, run_inreach_bench

    res = run_inreach_bench(**TINY_SHAPES)
    assert set(KEYS) <= set(res)
    assert res["inreach_fit_s"] > 0 and res["inreach_score_s"] > 0 and res["inreach_assoc_efficiency"] > 0
    assert res["inreach_detail"]["matmul_samples"] >= 3  # before, during and after the fit
    assert 0 < res["inreach_detail"]["assoc_s"] < res["inreach_fit_s"]
    k = res["inreach_shapes"]["seeds"]
    n = TINY_SHAPES["pool"]
    assert res["inreach_shapes"]["pairs"] == k * n - k * (k + 1) // 2 == sum(n - 1 - s for s in range(k))


def test_bench_keys_reach_the_make_bench_json(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import json

    from benchmarks import irmb_bench, run
    from benchmarks.inreach_bench import KEYS

    real = irmb_bench.matmul_flops_per_s  # the FUN-AD part's full-size reference matmuls, made small
    monkeypatch.setattr(
        irmb_bench, "matmul_flops_per_s", lambda dt, **_: real(dt, m=256, k=64, n=256, repeats=3)
    )
    assert run.main(["--tiny", "--skip-sweep", "--repeats", "1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(isinstance(res[k], float) and res[k] > 0 for k in KEYS)
    assert res["inreach_shapes"]["pool"] == 12  # the --tiny shapes


# ----------------------------------------------------------------------------- the released code's departures
def brute_released_memory(
    x: np.ndarray, k: int, min_len: int, tau: float, *, swapped: bool, strict: bool, duplicates: bool
) -> list[tuple[int, int]]:
    """The memory as a sorted list of (position, patch), from the description of the released code:
    a link (c, q) -> (s, m) files member (c, m) under the channel rooted at (s, q) when `swapped`
    (else member (c, q) under (s, m)); the trim keeps r < tau * sigma when `strict` (else <=); every
    kept entry is a memory row when `duplicates` (else each patch once)."""
    chans = brute_links(x, k, swapped)
    memory: list[tuple[int, int]] = []
    for mem in chans.values():
        if len(mem) <= min_len:
            continue
        f = np.array([x[c, q] for c, q in mem])
        r = np.linalg.norm(f - f.mean(0), axis=1)
        bound = tau * r.std()
        mem2 = [e for e, rr in zip(mem, r, strict=True) if (rr < bound if strict else rr <= bound)]
        if len(mem2) > min_len:
            memory += mem2
    return sorted(memory) if duplicates else sorted(set(memory))


def shuffled(n: int, p: int, d: int, noise: float, seed: int) -> np.ndarray:
    """[n, p, d] float16-exact: every image holds the same p prototypes at its own permutation of the
    cells (a texture), so links join different cells and the two filings differ."""
    rng = np.random.default_rng(seed)
    protos = 3.0 * rng.standard_normal((p, d))
    x = np.stack([protos[rng.permutation(p)] for _ in range(n)]) + noise * rng.standard_normal((n, p, d))
    return x.astype(np.float16).astype(np.float64)


def memory_list(m: InReaCh, p: int) -> list[tuple[int, int]]:
    """The memory rows as a sorted list of (position in association order, patch), duplicates kept."""
    assert m.memory_index is not None and m.order is not None
    pos_of = {int(v): i for i, v in enumerate(m.order.tolist())}
    return sorted((pos_of[int(f) // p], int(f) % p) for f in m.memory_index.tolist())


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize(("min_len", "tau"), [(1, 5.0), (1, 1.2), (3, 1.6)])
def test_released_filing_trim_and_duplicates_equal_brute_force(
    swapped: bool, strict: bool, duplicates: bool, min_len: int, tau: float
) -> None:
    n, p, d, k = 12, 9, 3, 3
    x = shuffled(n, p, d, 0.4, 31)
    settings = {"assoc_depth": k, "min_channel_length": min_len, "max_channel_std": tau,
                "swapped_filing": swapped, "strict_trim": strict, "keep_duplicates": duplicates}
    models = [fit(x, chunk_images=c, **settings) for c in (1, 5, 64)]
    want = brute_released_memory(x[models[0].order.numpy()], k, min_len, tau,
                                 swapped=swapped, strict=strict, duplicates=duplicates)
    assert want, "the case must keep some memory"
    for m in models:
        assert memory_list(m, p) == want
        assert m.diagnostics["memory_size"] == len(want)
        rows = x.reshape(-1, d)[m.memory_index.numpy()] - x.reshape(-1, d).mean(0)
        np.testing.assert_allclose(m.memory.numpy(), rows, atol=1e-5)


def test_the_released_cases_bite() -> None:
    """Guards the brute-force case above: on it the two filings differ, duplicates occur, and the
    strict trim removes what the <= trim keeps."""
    n, p, k = 12, 9, 3
    x = shuffled(n, p, 3, 0.4, 31)

    def want(**kw: bool) -> list[tuple[int, int]]:
        flags = {"swapped": False, "strict": False, "duplicates": False} | kw
        return brute_released_memory(x, k, 1, 5.0, **flags)

    assert want() != want(swapped=True)
    assert len(want(duplicates=True)) > len(want()) and len(want(swapped=True, duplicates=True)) > len(
        want(swapped=True)
    )
    # identical members (sigma = 0): a channel of copies is kept by <=, trimmed whole by <
    copies = np.repeat(x[:1], n, axis=0)
    assert brute_released_memory(copies, k, 1, 5.0, swapped=False, strict=False, duplicates=False)
    assert not brute_released_memory(copies, k, 1, 5.0, swapped=False, strict=True, duplicates=False)


def test_strict_trim_on_a_hand_made_channel() -> None:
    # mean 0, radii 1 1 3 3: sigma 1, the far pair exactly on the bound 3 * sigma
    x = torch.tensor([-1.0, 1.0, -3.0, 3.0])[:, None]
    rows, chan = torch.arange(4), torch.zeros(4, dtype=torch.int64)
    near = [True, True, False, False]
    assert spread_keep(x, rows, chan, rule="reference", tau=3.0, strict=True).tolist() == near
    assert spread_keep(x, rows, chan, rule="reference", tau=3.001, strict=True).tolist() == [True] * 4
    assert spread_keep(x, rows, chan, rule="mean_plus", tau=1.0, strict=True).tolist() == near
    same = torch.full((5, 1), 0.3)
    kept = spread_keep(same, torch.arange(5), torch.zeros(5, dtype=torch.int64), rule="reference", tau=5.0,
                       strict=True)
    assert kept.tolist() == [False] * 5  # sigma = 0: r = 0 is not < 0


def test_nearest_upsampling_maps_repeat_the_cells_before_the_blur() -> None:
    from funad.maps import gaussian_blur

    x = structured(20, 16, 4, 0.5, 17)
    test = structured(3, 16, 4, 0.9, 18)
    m = fit(x, assoc_depth=4, nearest_upsampling=True)
    grid = m.patch_scores(torch.tensor(test.reshape(3, 4, 4, 4), dtype=torch.float32))
    s = m.score(fs_of(test), FitContext(seed=0, map_size=48))
    up = torch.zeros(3, 48, 48)
    for i in range(48):
        for j in range(48):
            up[:, i, j] = grid[:, i // 12, j // 12]  # stride 48 / 4 = 12 pixels
    maps = gaussian_blur(up, 13.0 * 48 / SIGMA_MAP_SIZE).numpy()
    np.testing.assert_array_equal(s.maps, maps)
    np.testing.assert_array_equal(s.image, maps.reshape(3, -1).max(1))
    assert not np.array_equal(s.maps, fit(x, assoc_depth=4).score(fs_of(test), FitContext(map_size=48)).maps)


def test_reference_quirks_sets_the_released_code_and_needs_the_appended_pool() -> None:
    from funad.data.contamination import SplitRule
    from funad.run import CellConfig

    q = InReaChSettings(reference_quirks=True)
    assert (q.swapped_filing, q.nearest_upsampling, q.strict_trim, q.keep_duplicates, q.seed_order) == (
        True, True, True, True, "pool")
    assert [(n.field, n.value) for n in q.split_needs()] == [("pool_order", "appended")]
    assert InReaChSettings(seed_order="pool").split_needs() == ()
    base = {"dataset": {"kind": "synthetic"}, "category": "brick", "backbone": {}, "method": "inreach",
            "settings": {"reference_quirks": True}}
    with pytest.raises(ValueError, match="reference_quirks needs the split's pool_order='appended'"):
        CellConfig.build(**base, split={"ratio": 0.1})
    cfg = CellConfig.build(**base, split={"ratio": 0.1, "pool_order": "appended"})
    assert cfg.split == SplitRule(ratio=0.1, pool_order="appended")
