"""The compiled search kernels (funad.native) against brute force, and their fallback."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from funad import native, search

#: block b's entries enter with index OFF * b + position (OFF > every block side)
OFF = 10_000


@pytest.fixture()
def kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNAD_NATIVE", "1")
    native.reset()
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the torch path runs (tested in test_search)")
    assert native.library() is not None, "a C compiler is here but the kernels did not build"
    yield
    native.reset()


def _blocks(dtype: torch.dtype, shape: tuple[int, int], n: int, seed: int) -> list[torch.Tensor]:
    """Integer-valued keys (many exact ties), negative keys, and +inf rows/columns (masked)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n):
        d = (torch.randint(-5, 200, shape, generator=g) * (b + 1)).to(dtype)
        d[3, :] = float("inf")
        d[:, 7] = float("inf")
        out.append(d)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(300, 520), (70, 130), (9, 33), (2048, 64)])
@pytest.mark.parametrize("k", [1, 2, 8])
def test_merges_keep_a_k_smallest_set_of_everything_seen(
    kernels: None, dtype: torch.dtype, shape: tuple[int, int], k: int
) -> None:
    """After merging several blocks (with offsets) into the row sets and the column sets, each set
    holds the k smallest values of its line over all blocks (as torch.topk finds them), every
    index points at an entry of that value, and no entry is taken twice."""
    blocks = _blocks(dtype, shape, 3, seed=k + shape[0])
    rows, cols = shape
    rv, ri = torch.full((rows, k), float("inf")), torch.zeros((rows, k), dtype=torch.int64)
    cv, ci = torch.full((cols, k), float("inf")), torch.zeros((cols, k), dtype=torch.int64)
    for b, d in enumerate(blocks):
        native.merge_rows(d, rv, ri, OFF * b)
        native.merge_cols(d, cv, ci, OFF * b)
    by_row = torch.cat([d.float() for d in blocks], dim=1)  # column OFF*b + c -> b * cols + c
    by_col = torch.cat([d.float().T for d in blocks], dim=1)
    for vals, idx, lines, width in ((rv, ri, by_row, cols), (cv, ci, by_col, rows)):
        kk = min(k, lines.shape[1])
        want = torch.topk(lines, kk, dim=1, largest=False).values
        assert torch.equal(torch.sort(vals, dim=1).values[:, :kk], want)
        finite = torch.isfinite(vals)
        flat = (idx // OFF) * width + idx % OFF
        assert bool((idx % OFF < width).all())
        assert torch.equal(lines.gather(1, flat.clamp(max=lines.shape[1] - 1))[finite], vals[finite])
        for r in range(0, vals.shape[0], 7):
            taken = flat[r][finite[r]]
            assert taken.unique().numel() == taken.numel()


def test_merge_with_fewer_entries_than_k_leaves_empty_slots(kernels: None) -> None:
    d = torch.tensor([[3.0, float("inf"), 1.0]])
    vals, idx = torch.full((1, 8), float("inf")), torch.zeros((1, 8), dtype=torch.int64)
    native.merge_rows(d, vals, idx, 0)
    assert sorted(vals[0].tolist())[:3] == [1.0, 3.0, float("inf")]
    assert set(idx[0][torch.isfinite(vals[0])].tolist()) == {0, 2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dim", [1536, 37, 5])
def test_pair_sqdist_equals_float64(kernels: None, dtype: torch.dtype, dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    q = (torch.randn(50, dim, generator=g) * 3 + 10).to(dtype)
    s = (torch.randn(80, dim, generator=g) * 3 + 10).to(dtype)
    qi = torch.randint(0, 50, (3000,), generator=g)
    si = torch.randint(0, 80, (3000,), generator=g)
    si[:50] = qi[:50]  # identical rows: exactly 0
    q2, s2 = q[:, :], torch.cat([q, s])[50:]
    want = ((q2[qi].double() - s2[si].double()) ** 2).sum(1)
    got = native.pair_sqdist(q2, s2, qi, si)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    same = native.pair_sqdist(q, q, qi[:50], qi[:50])
    assert torch.equal(same, torch.zeros(50))
    with pytest.raises(IndexError, match="source row"):
        native.pair_sqdist(q, s, qi[:2], torch.tensor([0, 80]))


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNAD_NATIVE", "0")
    native.reset()
    try:
        assert native.library() is None
        assert not native.usable(torch.zeros(2, 2))
    finally:
        native.reset()


def test_failed_build_warns_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken compiler: one warning naming the problem, no library, no half-written file."""
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fake compiler: refusing' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FUNAD_NATIVE", "1")
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("FUNAD_NATIVE_DIR", str(tmp_path / "build"))
    native.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="funad.native"):
            assert native.library() is None
        assert "fake compiler: refusing" in caplog.text
        assert not list((tmp_path / "build").iterdir())
    finally:
        native.reset()


def test_gpu_and_mixed_dtypes_take_the_torch_path(kernels: None) -> None:
    assert native.usable(torch.zeros(2, 2), torch.zeros(2, 2))
    assert not native.usable(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bfloat16))
    assert not native.usable(torch.zeros(2, 2, dtype=torch.float16))
    assert not native.usable(torch.zeros(2, 2, device="meta"))


def test_status_reports_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provenance never triggers a build: None until a search asks for the library."""
    monkeypatch.setenv("FUNAD_NATIVE", "1")
    native.reset()
    try:
        assert native.status() is None
        monkeypatch.setenv("FUNAD_NATIVE", "0")
        assert native.status() is None  # no search asked yet
        assert not native.usable(torch.zeros(2, 2))
        assert native.status() == "off"
        monkeypatch.setenv("FUNAD_NATIVE", "1")
        native.reset()
        if native._compiler() is not None:
            assert native.library() is not None
            assert native.status() is None  # built, but no search asked since the reset
            assert native.usable(torch.zeros(2, 2))
            assert native.status().startswith("funad_kernels_")
    finally:
        native.reset()


def test_versions_column_follows_the_first_search(kernels: None) -> None:
    """The row's `versions` names the kernel build once a search used it, even after an earlier
    row of the same (reused) process was written before any search."""
    from harness import versions

    native.reset()
    assert json.loads(versions.versions_json())["funad_native"] is None
    search.nearest(torch.randn(5, 4), torch.randn(6, 4), 2)
    assert json.loads(versions.versions_json())["funad_native"].startswith("funad_kernels_")


def test_provenance_is_per_cell(kernels: None) -> None:
    """A reused worker: after reset_usage() (a new cell), status() is None until this cell searches."""
    native.reset()
    assert native.usable(torch.zeros(2, 2))
    assert native.status().startswith("funad_kernels_")
    native.reset_usage()
    assert native.status() is None
    native.usable(torch.zeros(2, 2))
    assert native.status().startswith("funad_kernels_")


def _I64(*shape: int) -> torch.Tensor:  # noqa: N802 - reads like a dtype in the cases below
    return torch.zeros(*shape, dtype=torch.int64)


@pytest.mark.parametrize(
    "call",
    [
        lambda: native.merge_rows(torch.zeros(4, 8), torch.zeros(3, 2), _I64(3, 2), 0),
        lambda: native.merge_rows(torch.zeros(4, 8), torch.zeros(4, 2), _I64(4, 2).int(), 0),
        lambda: native.merge_cols(torch.zeros(4, 8), torch.zeros(8, 2).T.contiguous().T, _I64(8, 2), 0),
        lambda: native.merge_rows(torch.zeros(8, 4).T, torch.zeros(4, 2), _I64(4, 2), 0),
        lambda: native.pair_sqdist(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(1, dtype=torch.int64),
                                   torch.zeros(1, dtype=torch.int64)),
        lambda: native.pair_sqdist(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bfloat16),
                                   torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)),
    ],
    ids=["lines", "index-dtype", "strided-sets", "strided-block", "width", "mixed-dtype"],
)
def test_bad_kernel_arguments_raise_value_error(kernels: None, call) -> None:
    """The C loops trust their arguments: a bad call is a ValueError (kept under python -O), not a crash."""
    with pytest.raises(ValueError):
        call()
