"""The certified searches (funad.search: nearest, batch_search, mutual_pairs) against brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from search_fixtures import (  # noqa: F401 (search_kernels: a fixture)
    images,
    key_error_ratio,
    key_error_sets,
    search_kernels,
    sqdist64,
)

from funad import search
from funad.methods import irmb
from funad.search import SearchOptions
from funad.search.blocks import block_topk
from funad.search.rerank import exact_rerank

BACKENDS = ["torch"] + (["faiss"] if search.faiss_available() else [])


pytestmark = pytest.mark.usefixtures("one_thread", "search_kernels")


def _brute_pairs(z: np.ndarray) -> set[tuple[int, int]]:
    """Loop: each row's nearest other row (ties -> smallest index), then mutual pairs u < v."""
    n = z.shape[0]
    nn = []
    for u in range(n):
        best, arg = math.inf, -1
        for v in range(n):
            if v == u:
                continue
            d = sqdist64(z[u], z[v])
            if d < best:  # strict: the first (smallest) index wins a tie
                best, arg = d, v
        nn.append(arg)
    return {(u, nn[u]) for u in range(n) if nn[nn[u]] == u and u < nn[u]}


def _features_with_ties(seed: int = 0, n: int = 70, dim: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim)).astype(np.float32)
    z[20] = z[10]
    z[30] = z[10]  # a triple of duplicates: 10 <-> 20 is the pair, 30 points to 10
    z[41] = z[40]  # a duplicate pair
    z[55] = z[50] + 1e-3  # a near-duplicate pair
    # an exact tie: 62 is equally near 63 and 64 (dyadic values, so fp32 differences are exact)
    z[62] = np.round(z[62] * 8) / 8
    step = np.eye(dim, dtype=np.float32)[0] * 0.125
    z[63] = z[62] + step
    z[64] = z[62] - step
    return z


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [7, 4096])
def test_mutual_pairs_match_brute_force_with_ties(backend: str, chunk: int) -> None:
    z = _features_with_ties()
    u, v = search.mutual_pairs(torch.from_numpy(z), SearchOptions(chunk=chunk, backend=backend))
    got = set(zip(u.tolist(), v.tolist(), strict=True))
    want = _brute_pairs(z)
    assert got == want
    assert (10, 20) in got and (40, 41) in got and (10, 30) not in got
    assert (62, 63) in got and (62, 64) not in got
    assert len(got) == u.numel()  # each pair once
    assert bool((u < v).all())


def test_mutual_pairs_bf16_and_tf32_on_separated_data() -> None:
    z = _features_with_ties(seed=3) * 5.0 + 40.0  # large common offset: tests the mean-centring
    want = _brute_pairs(z)
    for precision in ("bf16", "tf32"):
        u, v = search.mutual_pairs(torch.from_numpy(z), SearchOptions(chunk=16, precision=precision))
        assert set(zip(u.tolist(), v.tolist(), strict=True)) == want


def test_mutual_pairs_degenerate() -> None:
    u, v = search.mutual_pairs(torch.zeros(1, 4))
    assert u.numel() == 0 and v.numel() == 0
    u, v = search.mutual_pairs(torch.zeros(3, 4))  # all identical: 0<->1, 2 -> 0
    assert u.tolist() == [0] and v.tolist() == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_matches_brute_force_with_owner_exclusion(backend: str) -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(25, 5)).astype(np.float32)
    b = rng.normal(size=(40, 5)).astype(np.float32)
    q_owner = rng.integers(0, 4, size=25)
    b_owner = rng.integers(0, 4, size=40)
    for owners in (False, True):
        exclude = (
            search.Exclusion(query_owner=torch.from_numpy(q_owner), bank_owner=torch.from_numpy(b_owner))
            if owners
            else search.NO_EXCLUSION
        )
        options = SearchOptions(rerank=5, chunk=6, backend=backend)
        dist, idx = search.nearest(torch.from_numpy(q), torch.from_numpy(b), 3, options, exclude)
        for i in range(25):
            cands = [(sqdist64(q[i], b[j]), j) for j in range(40) if not owners or b_owner[j] != q_owner[i]]
            cands.sort()
            np.testing.assert_allclose(dist[i].numpy(), [c[0] for c in cands[:3]], rtol=1e-5, atol=1e-6)
            assert idx[i].tolist() == [c[1] for c in cands[:3]]


def test_auto_backend_rule() -> None:
    """`auto`, per search kind and device type: the certified searches always torch, the flat search faiss on
    the CPU where faiss is installed; explicit names stay; unknown names and kinds are refused."""
    from funad.search.backends import CERTIFIED, FLAT, resolve_backend

    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda", 0), torch.device("meta")
    flat_cpu = "faiss" if search.faiss_available() else "torch"
    want = {(CERTIFIED, cpu): "torch", (CERTIFIED, cuda): "torch", (CERTIFIED, meta): "torch",
            (FLAT, cpu): flat_cpu, (FLAT, cuda): "torch", (FLAT, meta): "torch"}
    for (kind, dev), backend in want.items():
        assert resolve_backend("auto", kind, dev) == backend, (kind, dev)
        assert resolve_backend("torch", kind, dev) == "torch"
    with pytest.raises(ValueError, match="unknown search backend 'annoy'"):
        resolve_backend("annoy", FLAT, cpu)
    with pytest.raises(ValueError, match="unknown search kind"):
        resolve_backend("auto", "approximate", cpu)


def test_options_are_checked_once_where_they_are_made() -> None:
    """Every bad option value fails when the options are built, k > rerank when a search is asked,
    and an owner exclusion needs both sides."""
    for bad, message in (
        ({"precision": "fp16"}, "unknown precision 'fp16'"),
        ({"backend": "annoy"}, "unknown search backend 'annoy'"),
        ({"rerank": 0}, "rerank >= 1"),
        ({"chunk": 0}, "chunk >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            SearchOptions(**bad)
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"nearest: need 1 <= k <= rerank, got k=3, rerank=2"):
        search.nearest(q, q, 3, SearchOptions(rerank=2))
    with pytest.raises(ValueError, match=r"batch_search: need 1 <= k <= rerank"):
        search.batch_search(q, None, None, 0)
    with pytest.raises(ValueError, match="both query_owner and bank_owner"):
        search.Exclusion(query_owner=torch.zeros(4, dtype=torch.long))
    assert SearchOptions().certifies and not SearchOptions(precision="bf16").certifies
    assert SearchOptions(precision="bf16", certify=True).certifies
    if search.faiss_available():
        with pytest.raises(ValueError, match="symmetric pass runs on torch"):
            search.batch_search(q, None, None, 1, SearchOptions(backend="faiss"))


def test_nearest_missing_neighbours_are_inf() -> None:
    q = torch.randn(3, 4)
    dist, idx = search.nearest(q, torch.randn(1, 4), 2)
    assert torch.isinf(dist[:, 1]).all() and (idx[:, 1] == -1).all()
    assert torch.isfinite(dist[:, 0]).all()


# ---- the one builder of augmented-GEMM operands -------------------------------------------
@pytest.mark.parametrize("split", [False, True])
def test_distance_operands_layout_and_distances(split: bool) -> None:
    """L_i . R_j = ||c_i - c_j||^2 (float64 data: against brute force to 1e-9; the bf16 split: norm hi + lo
    within 2^-16 of the rounded points' norms), the right side derived from the left bit for bit, rows
    gathered in order, zero padding up to the alignment."""
    from funad.search.operands import distance_operands, extra_columns, right_rows

    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 13, generator=g, dtype=torch.float64) * 3 + 20
    x = x.float() if split else x  # bf16 operands come from fp32 features
    mu = x.mean(0)
    rows = torch.randperm(300, generator=g)[:280]
    dtype = torch.bfloat16 if split else torch.float64
    left, right, nrm = distance_operands(x, mu=mu, dtype=dtype, split=split, align=32, rows=rows)
    used = 13 + extra_columns(split)
    assert left.shape == right.shape == (280, 32) and left.dtype == right.dtype == dtype
    assert not left[:, used:].any() and not right[:, used:].any()
    c = (x[rows] - mu).to(dtype)
    assert torch.equal(left[:, :13], c) and torch.equal(right, right_rows(left, 13, split))
    exact = ((c.double()[:, None, :] - c.double()[None]) ** 2).sum(-1)
    if split:
        assert nrm.dtype == torch.float32
        torch.testing.assert_close(nrm.double(), (c.double() ** 2).sum(1), rtol=1e-6, atol=0)
        parts = left[:, 13:15].double().sum(1)
        assert ((parts - nrm.double()).abs() <= 2.0**-16 * nrm.double()).all()
        torch.testing.assert_close(right[:, 15:17].double().sum(1), parts, rtol=0, atol=0)
        keys = left.double() @ right.double().T  # the GEMM in float64: only the operand rounding is left
        assert ((keys - exact).abs() <= 2.0**-15 * (nrm.double()[:, None] + nrm.double()[None])).all()
    else:
        torch.testing.assert_close(left @ right.T, exact, rtol=0, atol=1e-9)
    no_right = distance_operands(x, right=False)
    assert no_right[1] is None and no_right[0].shape == (300, 15) and torch.equal(no_right[0][:, :13], x)
    assert no_right[0].dtype == x.dtype


# ---- the key-error model ---------------------------------------------------------------------
#: the sets where bf16 keys keep their (measured) allowance; on the others their rounding errors line up
BF16_HOLDS = ("clustered", "far_ring", "near_duplicates")


def test_key_errors_stay_below_the_slack() -> None:
    """KEY_SLACK is measured, not derived (see funad.search.precision): the largest key error over every
    (query, bank) pair stays below the allowance, in fp32 and tf32 (a CPU runs tf32 as fp32) on every set,
    adversarial ones included, and in bf16 on the realistic sets. This is the measurement behind it, so it
    fails if a change to the operands or the GEMM makes the keys worse than the model."""
    for name, (q, b) in key_error_sets(384).items():
        for precision in ("fp32", "tf32", "bf16"):
            if precision == "bf16" and name not in BF16_HOLDS:
                continue
            ratio = key_error_ratio(q, b, precision)
            assert ratio < 1.0, (name, precision, ratio)


# ---- fused bank + pair search (one symmetric pass) ----------------------------------------
def _brute_knn(q: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    d = np.array([sorted(sqdist64(row, b) for b in bank) for row in q])
    out = np.full((q.shape[0], k), np.inf)
    m = min(k, d.shape[1])
    out[:, :m] = d[:, :m]
    return out


@pytest.mark.parametrize("chunk", [5, 16, 4096])
@pytest.mark.parametrize("with_extra", [False, True])
def test_batch_search_matches_nearest_and_brute_pairs(chunk: int, with_extra: bool) -> None:
    """Bank distances = brute force over {members} + extra; pairs = brute force; ties included."""
    z = _features_with_ties(seed=11)  # 70 rows with duplicates and exact ties
    rng = np.random.default_rng(12)
    member = rng.random(70) < 0.4
    member[[10, 20, 40]] = True  # duplicates inside the bank: their distance to each other is 0
    extra = rng.normal(size=(23, z.shape[1])).astype(np.float32) if with_extra else None
    bank = z[member] if extra is None else np.concatenate([z[member], extra])
    dist, u, v = search.batch_search(
        torch.from_numpy(z),
        torch.from_numpy(member),
        None if extra is None else torch.from_numpy(extra),
        2,
        SearchOptions(chunk=chunk),
    )
    np.testing.assert_allclose(dist.numpy(), _brute_knn(z, bank, 2), rtol=1e-5, atol=1e-6)
    want_d, _ = search.nearest(torch.from_numpy(z), torch.from_numpy(bank), 2)
    np.testing.assert_allclose(dist.numpy(), want_d.numpy(), rtol=1e-6, atol=0)
    assert set(zip(u.tolist(), v.tolist(), strict=True)) == _brute_pairs(z)


def test_batch_search_labels_equal_reference_path() -> None:
    """Through the eps0 rule: fused distances give the same d as nearest() on the gathered bank."""
    z = images(13, 6, 12, 5, scale=2.0) + 7.0
    chosen = np.array([1, 2, 4])
    batch = np.array([4, 0, 2, 5])
    query = torch.from_numpy(z[batch].reshape(-1, 5))
    member = torch.from_numpy(np.repeat(np.isin(batch, chosen), 12))
    extra = torch.from_numpy(z[[1]].reshape(-1, 5))  # chosen but not in the batch
    for precision in ("fp32", "bf16"):
        dist, _, _ = search.batch_search(query, member, extra, 2, SearchOptions(chunk=7, precision=precision))
        bank = torch.from_numpy(z[chosen].reshape(-1, 5))
        ref, _ = search.nearest(query, bank, 2, SearchOptions(precision=precision))
        torch.testing.assert_close(irmb.skip_self_distance(dist, 0.01), irmb.skip_self_distance(ref, 0.01))


def test_batch_search_bank_smaller_than_k() -> None:
    z = torch.randn(6, 3)
    member = torch.tensor([True, False, False, False, False, False])
    dist, _, _ = search.batch_search(z, member, None, 2, SearchOptions(chunk=4))
    assert dist[0, 0].item() == 0.0 and torch.isinf(dist[0, 1])
    assert torch.isfinite(dist[1:, 0]).all() and torch.isinf(dist[1:, 1]).all()


# ---- two-level block top-k and the pruned re-rank (the paths large blocks take) ------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(256, 512), (512, 256), (96, 320), (256, 200), (64, 48)])
def test_block_topk_equals_topk_both_dims(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    """Same k smallest VALUES as torch.topk along either dim, indices pointing at them; ties and
    +inf entries included; shapes that are not multiples of the group width fall back."""
    g = torch.Generator().manual_seed(5)
    d = torch.randint(0, 40, shape, generator=g).to(dtype)  # many exact ties
    d[3, :] = float("inf")
    d[:, 7] = float("inf")
    for dim in (0, 1):
        for k in (1, 2, 8):
            vals, idx = block_topk(d, k, dim)
            ref = torch.topk(d.float(), k, dim=dim, largest=False).values
            torch.testing.assert_close(torch.sort(vals.float(), dim=dim).values, ref, rtol=0, atol=0)
            assert torch.equal(d.gather(dim, idx), vals)
            # the k indices of a line are distinct
            s = torch.sort(idx, dim=dim).values
            assert bool((s.diff(dim=dim) > 0).all())


def _brute_knn64(q: np.ndarray, bank: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    d = ((q[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)
    if skip_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_search_large_blocks_match_brute_force(precision: str) -> None:
    """Blocks of 256 rows take the two-level top-k and the pruned re-rank: bank distances within
    fp32 rounding of float64 brute force, and the mutual pairs exactly the brute-force ones."""
    rng = np.random.default_rng(21)
    protos = rng.normal(size=(40, 24)).astype(np.float32) * 3
    z = (protos[rng.integers(0, 40, 768)] + 0.3 * rng.normal(size=(768, 24))).astype(np.float32) + 5.0
    z[100] = z[400]  # an exact duplicate across blocks
    if precision == "bf16":
        z = torch.from_numpy(z).bfloat16().float().numpy()  # the points bf16 search actually sees
    member = np.zeros(768, dtype=bool)
    member[:320] = True
    extra = (protos[rng.integers(0, 40, 256)] + 0.3 * rng.normal(size=(256, 24))).astype(np.float32)
    bank = np.concatenate([z[member], extra])
    zt, mt, et = torch.from_numpy(z), torch.from_numpy(member), torch.from_numpy(extra)
    dist, u, v = search.batch_search(zt, mt, et, 2, SearchOptions(chunk=256, precision=precision))
    np.testing.assert_allclose(dist.numpy(), _brute_knn64(z, bank, 2), rtol=1e-5, atol=1e-4)
    d = ((z[:, None, :].astype(np.float64) - z[None].astype(np.float64)) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn_ = d.argmin(1)
    want = {(a, int(nn_[a])) for a in range(768) if nn_[nn_[a]] == a and a < nn_[a]}
    assert set(zip(u.tolist(), v.tolist(), strict=True)) == want


def test_pruned_rerank_equals_full_rerank() -> None:
    """The key-error pruning drops only candidates that cannot be among the k nearest, even where
    the approximate keys (errors up to the bf16 allowance) order the candidates wrongly."""
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(300, 16))
    radius = 1.0 + rng.uniform(-2e-3, 2e-3, (300, 1))  # all candidates within 0.4 % of each other
    source = torch.from_numpy(dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * radius).float()
    query = torch.zeros(50, 16)
    idx = torch.from_numpy(np.stack([rng.choice(300, 8, replace=False) for _ in range(50)]))
    exact_all = (source[idx] ** 2).sum(-1)
    approx = exact_all * (1 + 0.0075 * torch.from_numpy(rng.uniform(-1, 1, (50, 8))).float())
    approx[0, 3] = float("inf")
    assert not torch.equal(torch.argsort(approx[1:], 1)[:, :2], torch.argsort(exact_all[1:], 1)[:, :2])
    full = exact_rerank(query, source, approx, idx, 2)
    beta = torch.zeros(50)
    pruned = exact_rerank(query, source, approx, idx, 2, rho=2.0**-7, beta=beta)
    assert torch.equal(full[0], pruned[0]) and torch.equal(full[1], pruned[1])


def _far_ring(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries whose 60 nearest rows are within 1.2 % of each other in distance but sit far from
    the bank mean, so the fp32 ranking keys (error ~1e-7 x squared norm ~ 4e4) scramble their
    order while exact differences (gaps >= ~2e-4 of ~1) do not."""
    g = torch.Generator().manual_seed(seed)
    dim = 8
    far = torch.zeros(dim)
    far[0] = 200.0
    queries = far + 1e-6 * torch.randn(6, dim, generator=g, dtype=torch.float64)
    dirs = torch.randn(60, dim, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=1, keepdim=True)
    radius = 1.0 + 1e-4 * torch.randperm(60, generator=g).double()
    ring = far + dirs * radius[:, None]
    other = -far + torch.randn(200, dim, generator=g, dtype=torch.float64)
    bank = torch.cat([other, ring])
    return queries.float(), bank.float()


def test_certified_search_is_exact_where_the_candidates_are_not_enough() -> None:
    """fp32 default (certify): rows whose 8 approximate candidates cannot be shown to hold the
    nearest are searched again with more candidates, so the result equals exact brute force;
    without it (certify=False) some rows get a near-tie instead (so this test can fail)."""
    queries, bank = _far_ring(5)
    exact = ((queries[:, None, :].double() - bank[None].double()) ** 2).sum(-1)
    want_d, want_i = torch.sort(exact, dim=1, stable=True)
    d, i = search.nearest(queries, bank, 2)
    assert torch.equal(i, want_i[:, :2])
    torch.testing.assert_close(d.double(), want_d[:, :2], rtol=1e-6, atol=1e-6)
    _, i_loose = search.nearest(queries, bank, 2, SearchOptions(certify=False))
    assert not torch.equal(i_loose, want_i[:, :2])
    # the same through the fused batch search: the queries are batch rows, the ring the bank,
    # and each query's nearest other batch row is searched for the pairs
    z = torch.cat([queries, bank[200:]])
    member = torch.zeros(z.shape[0], dtype=torch.bool)
    member[6:] = True
    dist, u, v = search.batch_search(z, member, bank[:200], 2)
    full = torch.cat([bank[200:], bank[:200]])
    ex = ((z[:, None, :].double() - full[None].double()) ** 2).sum(-1)
    ex[torch.arange(6, 66), torch.arange(60)] = 0.0  # members match themselves at 0
    torch.testing.assert_close(dist.double(), torch.sort(ex, dim=1).values[:, :2], rtol=1e-6, atol=1e-6)
    pz = ((z[:, None, :].double() - z[None].double()) ** 2).sum(-1)
    pz.fill_diagonal_(float("inf"))
    nn_ = pz.argmin(1)
    want = {(a, int(nn_[a])) for a in range(z.shape[0]) if int(nn_[nn_[a]]) == a and a < int(nn_[a])}
    assert set(zip(u.tolist(), v.tolist(), strict=True)) == want


@pytest.mark.parametrize("chunk", [7, 64])
def test_own_row_excludes_exactly_the_own_column(chunk: int) -> None:
    """Row i never matches bank row own_row[i] (< 0: no exclusion), against float64 brute force."""
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(40, 16)).astype(np.float32)
    own = rng.integers(-1, 40, size=25)
    own[:5] = -1
    # half the queries ARE their own bank row, so the excluded column is their exact match
    query = np.where((np.arange(25) % 2 == 0)[:, None] & (own >= 0)[:, None], bank[np.maximum(own, 0)],
                     rng.normal(size=(25, 16)).astype(np.float32))
    k = 3
    dist, idx = search.nearest(torch.from_numpy(query), torch.from_numpy(bank), k, SearchOptions(chunk=chunk),
                               search.Exclusion(own_row=torch.from_numpy(own)))
    for i in range(25):
        d = np.array([sqdist64(query[i], b) for b in bank])
        if own[i] >= 0:
            d[own[i]] = np.inf
        want = np.argsort(d, kind="stable")[:k]
        assert idx[i].tolist() == want.tolist(), i
        np.testing.assert_allclose(dist[i].numpy(), d[want], rtol=1e-5, atol=1e-5)
