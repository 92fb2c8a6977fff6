"""IRMB steps (funad.methods.irmb) against independent brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from search_fixtures import images, search_kernels, sqdist64  # noqa: F401 (search_kernels: a fixture)

from funad import search
from funad.methods import irmb
from funad.methods.localnet import LocalNet

pytestmark = pytest.mark.usefixtures("one_thread", "search_kernels")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_self_match_skipped_batch_image_in_bank(precision: str) -> None:
    """A batch image that is in the bank gets δ2 (its nearest OTHER bank patch), not 0."""
    z = images(2, 4, 9, 6, scale=3.0) + 20.0  # big norms: the matmul form alone would miss eps0 in bf16
    bank = torch.from_numpy(z[[0, 2]].reshape(-1, 6))  # images 0 and 2 in the bank
    query = torch.from_numpy(z[[0, 1]].reshape(-1, 6))  # batch: image 0 (in bank) and 1 (not)
    dist, _ = search.nearest(query, bank, 2, search.SearchOptions(precision=precision))
    d = irmb.skip_self_distance(dist, 0.01)
    bank_np = bank.numpy()
    for i, row in enumerate(query.numpy()):
        all_d = sorted(sqdist64(row, br) for br in bank_np)
        want = all_d[1] if i < 9 else all_d[0]
        assert all_d[0] == 0.0 or i >= 9
        assert d[i].item() == pytest.approx(want, rel=1e-5)
        assert d[i].item() > 0


def test_eps0_threshold_rule() -> None:
    sq = torch.tensor(
        [[0.005, 0.3], [0.02, 0.5], [0.0, 0.0], [0.001, 0.009], [0.0, float("inf")], [0.01, 0.2]]
    )
    d = irmb.skip_self_distance(sq, eps0=0.01)
    assert d.tolist() == pytest.approx([0.3, 0.02, 0.0, 0.0, 0.0, 0.01])
    # via vectors: a bank row at squared distance 0.005 counts as a self-match
    q = torch.zeros(1, 3)
    bank = torch.tensor([[0.05, 0.05, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    d = irmb.skip_self_distance(search.nearest(q, bank, 2)[0], eps0=0.01)
    assert d.item() == pytest.approx(1.0)
    # k = 3: the first nonzero of δ1..δ3
    sq3 = torch.tensor([[0.0, 0.0, 0.7], [0.0, 0.4, 0.7]])
    assert irmb.skip_self_distance(sq3, 0.01).tolist() == pytest.approx([0.7, 0.4])


def test_exclude_own_image_brute_force() -> None:
    z = images(4, 5, 6, 4)
    in_bank = np.array([0, 1, 3])
    bank = torch.from_numpy(z[in_bank].reshape(-1, 4))
    bank_owner = torch.from_numpy(np.repeat(in_bank, 6))
    batch = np.array([1, 2, 3])
    query = torch.from_numpy(z[batch].reshape(-1, 4))
    q_owner = torch.from_numpy(np.repeat(batch, 6))
    exclude = search.Exclusion(query_owner=q_owner, bank_owner=bank_owner)
    dist, _ = search.nearest(query, bank, 2, exclude=exclude)
    d = irmb.own_excluded_distance(dist)
    for i in range(len(batch) * 6):
        own = batch[i // 6]
        want = min(sqdist64(z[own, i % 6], z[img, j]) for img in in_bank if img != own for j in range(6))
        assert d[i].item() == pytest.approx(want, rel=1e-5)


def test_minmax_and_labels() -> None:
    d = torch.full((10,), 3.7)
    dn = irmb.minmax(d)
    assert torch.equal(dn, torch.zeros(10))
    y, band, _ = irmb.pseudo_labels(d, 0.5, 0.9)
    assert not y.any() and not band.any()
    rng = np.random.default_rng(5)
    dd = rng.random(200).astype(np.float32) * 4 + 1
    y, band, dn = irmb.pseudo_labels(torch.from_numpy(dd), 0.5, 0.9)
    ref = (dd - dd.min()) / (dd.max() - dd.min())
    np.testing.assert_allclose(dn.numpy(), ref, rtol=1e-5, atol=1e-6)
    for i in range(200):
        assert bool(y[i]) == (dn[i].item() > 0.5)
        assert bool(band[i]) == (0.5 < dn[i].item() < 0.9)


def test_candidates_and_bank_draw() -> None:
    s = torch.tensor([0.1, 0.9, 0.2, 0.5, 0.3, 0.95])
    cand = irmb.select_candidates(s, 0.5)
    ref = (s - s.min()) / (s.max() - s.min()) < 0.5
    assert torch.equal(cand, ref)
    assert torch.equal(irmb.select_candidates(torch.ones(4), 0.5), torch.ones(4, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    cand = torch.tensor([True, False, True, True, True, False, True])  # |C| = 5
    counts = torch.zeros(7)
    for _ in range(400):
        r = irmb.draw_bank_images(cand, 0.5, g)
        assert r.numel() == 2 and cand[r].all() and bool((r[1:] > r[:-1]).all())
        counts[r] += 1
    assert counts[~cand].sum() == 0
    assert (counts[cand] / 400 - 0.4).abs().max() < 0.1  # uniform: each candidate with prob 2/5
    assert irmb.draw_bank_images(cand, 1.0, g).tolist() == [0, 2, 3, 4, 6]
    assert irmb.draw_bank_images(cand, 1e-6, g).numel() == 1  # guard |R| >= 1


def test_noise_sigma_definition_and_band_only() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 9, 7)).astype(np.float32) * rng.random(7).astype(np.float32)
    sigma = irmb.noise_sigma(torch.from_numpy(x))
    ref = x.astype(np.float64).std(axis=0, ddof=1).max(axis=0)
    np.testing.assert_allclose(sigma.numpy(), ref, rtol=1e-5)
    assert torch.equal(irmb.noise_sigma(torch.from_numpy(x[:1])), torch.zeros(7))

    flat = torch.from_numpy(x.reshape(-1, 7))
    band = torch.from_numpy(rng.random(45) < 0.3)
    noised = irmb.add_band_noise(flat, band, sigma, torch.Generator().manual_seed(9))
    assert torch.equal(flat, torch.from_numpy(x.reshape(-1, 7)))  # input untouched
    assert torch.equal(noised[~band], flat[~band])  # bit-identical outside the band
    assert bool((noised[band] != flat[band]).all())
    eps = torch.randn((int(band.sum()), 7), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(noised[band], flat[band] + eps * sigma, rtol=0, atol=0)
    fixed = irmb.add_band_noise(flat, band, 0.1, torch.Generator().manual_seed(9))
    torch.testing.assert_close(fixed[band], flat[band] + eps * 0.1, rtol=0, atol=0)


def _bce_loop(p: np.ndarray, y: np.ndarray) -> float:
    pos = [math.log(p[i]) for i in range(len(p)) if y[i] == 1]
    neg = [math.log(1 - p[i]) for i in range(len(p)) if y[i] == 0]
    total = 0.0
    if pos:
        total -= sum(pos) / len(pos)
    if neg:
        total -= sum(neg) / len(neg)
    return total


def test_balanced_bce() -> None:
    rng = np.random.default_rng(7)
    logits = torch.from_numpy(rng.normal(size=50) * 2)
    p = torch.sigmoid(logits).numpy()
    for y in (rng.random(50) < 0.2, np.ones(50, bool), np.zeros(50, bool)):
        got = irmb.balanced_bce(logits, torch.from_numpy(y)).item()
        assert got == pytest.approx(_bce_loop(p, y.astype(int)), rel=1e-9)
    only_pos = irmb.balanced_bce(logits, torch.ones(50, dtype=torch.bool)).item()
    assert only_pos == pytest.approx(-np.log(p).mean(), rel=1e-9)


def test_mutual_smoothness() -> None:
    rng = np.random.default_rng(8)
    p = torch.from_numpy(rng.random(30))
    u = torch.tensor([0, 3, 5, 7])
    v = torch.tensor([1, 4, 9, 20])
    l1 = sum(abs(p[a].item() - p[b].item()) for a, b in zip(u.tolist(), v.tolist(), strict=True)) / 4
    l2 = sum((p[a].item() - p[b].item()) ** 2 for a, b in zip(u.tolist(), v.tolist(), strict=True)) / 4
    assert irmb.mutual_smoothness(p[u], p[v], "l1").item() == pytest.approx(0.5 * l1)
    assert irmb.mutual_smoothness(p[u], p[v], "l2").item() == pytest.approx(0.5 * l2)
    assert irmb.mutual_smoothness(p[:0], p[:0]).item() == 0.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_score_pool_matches_per_image_loop(precision: str) -> None:
    torch.manual_seed(0)
    net = LocalNet(8, torch.Generator().manual_seed(1))
    cls = torch.randn(5, 4).half()
    pat = torch.randn(5, 6, 4).half()
    scores, z = irmb.score_pool(net, cls, pat, chunk=2, precision=precision)
    tol = 1e-5 if precision == "fp32" else 3e-2
    with torch.no_grad():
        for i in range(5):
            x = torch.cat([cls[i].float().expand(6, 4), pat[i].float()], 1)
            torch.testing.assert_close(z[i].float(), net.adapt(x), rtol=tol, atol=tol)
            assert scores[i].item() == pytest.approx(net(x).max().item(), abs=tol)


def _descriptors(cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """The reference: [B, C], [B, P, C] -> full raw descriptors [cls ; t] [B, P, 2C] fp32."""
    b, p, c = patches.shape
    return torch.cat([cls.float()[:, None, :].expand(b, p, c), patches.float()], dim=2)


def test_split_training_forward_matches_full_descriptors() -> None:
    """The training step's split adaptor (clean rows) and row-wise descriptors (noised rows) give the
    same logits, gradients and noise sigma as the full [cls ; t] descriptors of the batch."""
    from funad.methods.funad import _descriptor_rows, _descriptor_sigma

    g = torch.Generator().manual_seed(3)
    cls, pat = torch.randn(3, 4, generator=g).half(), torch.randn(3, 5, 4, generator=g).half()
    x = _descriptors(cls, pat)
    torch.testing.assert_close(_descriptor_sigma(cls.float(), pat.float()), irmb.noise_sigma(x))
    rows = torch.tensor([0, 6, 14])
    torch.testing.assert_close(_descriptor_rows(cls, pat, rows), x.reshape(-1, 8)[rows], rtol=0, atol=0)
    grads = []
    for split in (False, True):
        net = LocalNet(8, torch.Generator().manual_seed(1))
        if split:
            z = net.adapt_split(cls.float(), pat.float()).reshape(-1, 8)
            logits = net.head_logits(z)
        else:
            logits = net.logits(x.reshape(-1, 8))
        logits.sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
