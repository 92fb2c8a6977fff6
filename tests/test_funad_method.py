"""FunAD method: settings, Local-Net size, determinism, diagnostics, oracle, end-to-end ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from funad.features import FeatureSet, PackRows
from funad.methods import FitContext, create_method, default_settings
from funad.methods.funad import DIAG_KEYS, FunAD, FunADSettings
from funad.methods.localnet import LocalNet, count_parameters
from funad.search import faiss_available

GRID, CH = 4, 8
FAST = {"epochs": 4, "batch_size": 8, "lr": 1e-3}


pytestmark = pytest.mark.usefixtures("one_thread")


def _featureset(n: int, anomalous: list[int], seed: int, readonly: bool = False) -> FeatureSet:
    """Random features; anomalous images get a shifted 2x2 block of patches."""
    rng = np.random.default_rng(seed)
    cls = rng.normal(size=(n, CH)).astype(np.float16)
    patches = rng.normal(size=(n, GRID, GRID, CH)).astype(np.float32)
    labels = np.zeros(n, np.int8)
    for i in anomalous:
        patches[i, :2, :2] += 3.0
        labels[i] = 1
    patches16 = patches.astype(np.float16)
    if readonly:
        cls.flags.writeable = False
        patches16.flags.writeable = False
    return FeatureSet([f"img{i}" for i in range(n)], cls, patches16, labels)


@pytest.fixture(scope="module")
def pool() -> FeatureSet:
    return _featureset(20, [0, 1], seed=0)


@pytest.fixture(scope="module")
def test_set() -> FeatureSet:
    return _featureset(12, list(range(6)), seed=1)


def _fit_score(
    train: FeatureSet, test: FeatureSet, seed: int = 0, **params: object
) -> tuple[FunAD, np.ndarray]:
    m = create_method("funad", {**FAST, **params})
    assert isinstance(m, FunAD)
    ctx = FitContext(seed=seed, map_size=16)
    m.fit(train, ctx)
    return m, m.score(test, ctx).image


def test_settings_defaults_and_validation() -> None:
    d = default_settings("funad")
    expected = {
        "tau_n": 0.5,
        "tau_c": 0.9,
        "eta": 0.5,
        "keep_ratio": 0.5,
        "k": 2,
        "eps0": 0.01,
        "lam": 2.5,
        "lr": 2e-5,
        "momentum": 0.2,
        "batch_size": 32,
        "epochs": 1500,
        "sigma_mode": "batch_std",
        "bank_every": 1,
        "exclude_own_image": False,
        "ms_loss": "l1",
        "noise_aliasing": False,
        "unseeded_init": False,
        "reference_quirks": False,
        "precision": "fp32",
        "drop_last": True,
    }
    for key, value in expected.items():
        assert d[key] == value, key
    for bad in (
        {"tau_n": 0.9, "tau_c": 0.5},
        {"epochs": 0},
        {"eta": 0.0},
        {"k": 3, "rerank": 2},
        {"precision": "fp8"},
        {"unknown": 1},
        {"reference_quirks": True, "noise_aliasing": False},
    ):
        with pytest.raises(ValidationError):
            FunADSettings(**bad)
    q = FunADSettings(reference_quirks=True)
    assert q.noise_aliasing and q.unseeded_init


def test_localnet_parameter_count() -> None:
    assert count_parameters(LocalNet(1536, torch.Generator().manual_seed(0))) == 4_066_049


def test_fit_score_deterministic_and_seed_sensitive(pool: FeatureSet, test_set: FeatureSet) -> None:
    m1, s1 = _fit_score(pool, test_set, seed=0)
    _, s2 = _fit_score(pool, test_set, seed=0)
    _, s3 = _fit_score(pool, test_set, seed=1)
    assert np.array_equal(s1, s2)
    assert not np.array_equal(s1, s3)
    maps = m1.score(test_set, FitContext(map_size=16)).maps
    assert maps is not None and maps.shape == (12, 16, 16) and maps.dtype == np.float32


def test_end_to_end_ranks_anomalies_higher() -> None:
    train = _featureset(24, [0, 1], seed=2)
    test = _featureset(16, list(range(8)), seed=3)
    _, scores = _fit_score(train, test, seed=0, epochs=6)
    labels = np.array([1] * 8 + [0] * 8)
    assert roc_auc_score(labels, scores) > 0.8


def test_history_diagnostics_and_no_oracle(pool: FeatureSet) -> None:
    rows: list[dict] = []
    m = create_method("funad", FAST)
    m.fit(pool, FitContext(seed=0, report=rows.append))
    assert len(m.history) == FAST["epochs"] and rows == m.history
    for i, row in enumerate(m.history):
        assert row["epoch"] == i + 1 and row["iteration"] == (i + 1) * (20 // 8)
        for key in ("loss", "loss_bce", "loss_ms", *[f"diag_{k}" for k in DIAG_KEYS]):
            assert key in row, key
        assert "eval_image_auroc" not in row
        assert row["diag_bank_size"] == row["diag_bank_images"] * GRID * GRID
        assert 1 <= row["diag_bank_images"] <= row["diag_candidates"] <= 20
    assert set(m.diagnostics) == set(DIAG_KEYS) == set(type(m).diagnostic_names)
    assert m.diagnostics["pos_frac"] == m.history[-1]["diag_pos_frac"]
    assert m.oracle == {}


def test_oracle_recorded_with_evaluate(pool: FeatureSet, test_set: FeatureSet) -> None:
    labels = np.array([1] * 6 + [0] * 6)
    calls: list[int] = []

    def evaluate(method: FunAD) -> dict[str, float]:
        calls.append(1)
        img = roc_auc_score(labels, method.score(test_set, FitContext(map_size=16)).image)
        return {"image_auroc": float(img), "pixel_auroc": 0.5}

    m = create_method("funad", FAST)
    m.fit(pool, FitContext(seed=0, evaluate=evaluate, eval_every=2))
    assert len(calls) == 2
    evaluated = [r for r in m.history if "eval_image_auroc" in r]
    assert [r["epoch"] for r in evaluated] == [2, 4]
    best = max(evaluated, key=lambda r: 0.5 * (r["eval_image_auroc"] + r["eval_pixel_auroc"]))
    assert m.oracle["oracle_epoch"] == best["epoch"]
    assert m.oracle["oracle_image_auroc"] == best["eval_image_auroc"]
    # the headline model is the last epoch's: evaluate did not change training
    _, plain = _fit_score(pool, test_set, seed=0)
    assert np.array_equal(m.score(test_set, FitContext(map_size=16)).image, plain)


def test_labels_never_change_training(test_set: FeatureSet) -> None:
    clean = _featureset(20, [0, 1], seed=0)
    relabelled = FeatureSet(clean.image_ids, clean.cls, clean.patches, np.zeros(20, np.int8))
    m1, s1 = _fit_score(clean, test_set)
    m2, s2 = _fit_score(relabelled, test_set)
    assert np.array_equal(s1, s2)
    assert np.isnan(m2.diagnostics["pl_precision"]) and np.isnan(m2.diagnostics["pl_recall"])
    assert m2.diagnostics["cand_injected_frac"] == 0.0
    assert m1.history[0]["loss"] == m2.history[0]["loss"]


def test_small_pool_is_one_batch_and_readonly_features(test_set: FeatureSet) -> None:
    train = _featureset(5, [0], seed=4, readonly=True)
    before = train.patches.copy()
    m, scores = _fit_score(train, test_set, epochs=2, batch_size=32)
    assert [r["iteration"] for r in m.history] == [1, 2]
    assert np.array_equal(train.patches, before) and np.isfinite(scores).all()


VARIANTS = [
    {"bank_every": 3},
    {"exclude_own_image": True},
    {"reference_quirks": True},
    {"sigma_mode": "fixed", "sigma": 0.3, "ms_loss": "l2"},
    {"precision": "bf16"},
    {"precision": "bf16", "train_precision": "bf16"},
    {"precision": "tf32", "keep_ratio": 2.0, "drop_last": False},
] + ([{"knn_backend": "faiss", "exclude_own_image": True}] if faiss_available() else [])


@pytest.mark.parametrize("params", VARIANTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_variants_run(pool: FeatureSet, test_set: FeatureSet, params: dict) -> None:
    m, scores = _fit_score(pool, test_set, epochs=2, **params)
    assert np.isfinite(scores).all() and scores.shape == (12,)
    assert np.isfinite(m.history[-1]["loss"])


def test_faiss_and_torch_backends_agree(pool: FeatureSet, test_set: FeatureSet) -> None:
    if not faiss_available():
        pytest.skip("faiss not installed")
    _, a = _fit_score(pool, test_set, epochs=2, knn_backend="torch")
    _, b = _fit_score(pool, test_set, epochs=2, knn_backend="faiss")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)



def test_unseeded_init_differs_between_runs_even_after_global_seeding(
    pool: FeatureSet, test_set: FeatureSet
) -> None:
    """Quirk 2 must not be undone by a runner that seeds the global RNG before fit (funad.run does)."""

    def scores(**params: object) -> np.ndarray:
        torch.manual_seed(0)
        return _fit_score(pool, test_set, epochs=1, **params)[1]

    assert np.array_equal(scores(), scores())
    assert not np.array_equal(scores(unseeded_init=True), scores(unseeded_init=True))


@pytest.mark.parametrize("params", [{}, {"bank_every": 2}], ids=["fused", "bank_every=2"])
def test_pool_read_through_pack_rows_trains_identically(test_set: FeatureSet, params: dict) -> None:
    """A split given as rows of a larger (read-only) category array trains and scores exactly as
    the same rows gathered into arrays of their own."""
    category = _featureset(30, [3, 17], seed=6, readonly=True)
    rows = np.array([17, 0, 5, 3, 29, 11, 8, 2, 21, 14, 9, 26, 1, 19, 6, 23, 12, 4, 27, 15])
    gathered = category.subset(rows)
    shared = FeatureSet(
        gathered.image_ids, PackRows(category.cls, rows), PackRows(category.patches, rows), gathered.labels
    )
    m1, s1 = _fit_score(gathered, test_set, epochs=2, **params)
    m2, s2 = _fit_score(shared, test_set, epochs=2, **params)
    assert np.array_equal(s1, s2)
    assert [h["loss"] for h in m1.history] == [h["loss"] for h in m2.history]


def test_bf16_band_rows_are_padded_to_few_shapes() -> None:
    """Under bf16 autocast oneDNN keeps a kernel per shape: the band's varying row count is padded
    to at most 4 sizes per power of two (< n/2 extra rows), with zero rows appended."""
    from funad.methods.funad import _bucket_rows

    sizes = set()
    for n in range(1, 5001):
        out = _bucket_rows(torch.ones(n, 3))
        m = out.shape[0]
        assert n <= m < n + max(1, n / 2) and torch.equal(out[:n], torch.ones(n, 3))
        assert not out[n:].any()
        sizes.add(m)
    assert len(sizes) <= 4 * 13 + 1  # 2^12 < 5000 <= 2^13


def test_cost_is_the_epoch_count() -> None:
    """Cells are launched longest first: FunAD's relative cost is its epochs, a one-shot method's 1."""
    from funad.methods import method_class

    funad = method_class("funad")
    assert funad.cost(funad.Settings(epochs=7)) == 7.0
    assert funad.cost(funad.Settings()) == float(FunADSettings().epochs)
    patchcore = method_class("patchcore")
    assert patchcore.cost(patchcore.Settings()) == 1.0


def test_torch_pool_shares_the_arrays_on_the_cpu() -> None:
    """The pool's tensors are views of the (read-only) arrays, never copies; a PackRows split reads the
    one category array through its row list, and indexing gives exactly the gathered rows."""
    category = _featureset(9, [2], seed=7, readonly=True)
    cls, patches = category.torch_pool("cpu")
    assert isinstance(cls, torch.Tensor) and isinstance(patches, torch.Tensor)
    assert cls.data_ptr() == category.cls.ctypes.data
    assert patches.data_ptr() == category.patches.ctypes.data and patches.shape == (9, GRID * GRID, CH)
    rows = np.array([5, 0, 8, 3])
    split = FeatureSet(
        [category.image_ids[i] for i in rows],
        PackRows(category.cls, rows),
        PackRows(category.patches, rows),
        category.labels[rows],
    )
    s_cls, s_pat = split.torch_pool("cpu")
    assert s_cls.shape == (4, CH) and s_pat.shape == (4, GRID * GRID, CH)
    assert s_pat.base.data_ptr() == category.patches.ctypes.data  # the category's memory, not a copy
    assert s_cls.base.data_ptr() == category.cls.ctypes.data
    want = category.patches[rows].reshape(4, GRID * GRID, CH)
    assert np.array_equal(s_pat[torch.tensor([3, 1])].numpy(), want[[3, 1]])
    assert np.array_equal(s_pat[1:3].numpy(), want[1:3])
    assert np.array_equal(s_cls[torch.arange(4)].numpy(), category.cls[rows])
