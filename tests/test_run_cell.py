"""One cell end to end, without Ray: a tiny MVTec-layout tree, the bundled CPU backbone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest_data import build_mvtec

from funad.data.contamination import SplitRule
from funad.run import METRIC_KEYS, CellConfig, pick_examples, run_cell

BACKBONE = {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("runcell")
    return build_mvtec(base / "mvtec", {"bottle": {"broken": 3, "scratch": 2}}, n_train=8, n_good=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


def test_pick_examples() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    labels = np.array([0, 1, 1, 1, 1, 0])
    picks = pick_examples(scores, labels, 1)
    assert picks == [(1, "best"), (4, "median"), (3, "worst")]  # 4 anomalies: upper middle by score
    assert all(labels[i] == 1 for i, _ in pick_examples(scores, labels, 5))
    assert len(pick_examples(scores, labels, 5)) == 4  # no image twice
    normal_only = pick_examples(scores, np.zeros(6, int), 1)
    assert normal_only[0] == (1, "best") and normal_only[-1] == (0, "worst")
    assert pick_examples(scores, labels, 0) == []


def test_patchcore_cell(tree: Path, cache: Path) -> None:
    cfg = CellConfig.build(
        dataset={"kind": "mvtec", "root": str(tree)},
        category="bottle",
        backbone=BACKBONE,
        method="patchcore",
        settings={"coreset_ratio": 0.5},
        split={"ratio": 0.25},
        seed=3,
        n_map_examples=1,
    )
    reports: list[dict] = []
    out = run_cell(cfg, feature_cache=cache, device="cpu", report=reports.append)
    assert set(out.metrics) == set(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert out.metrics[k] is not None and 0.0 <= out.metrics[k] <= 1.0, (k, out.metrics)
    s = out.split
    assert s.n_train_normal == 8 and s.n_injected == 2 and len(s.injected_ids) == 2
    assert out.n_train_pool == 10
    assert s.n_test_normal == 4 and s.n_test_anomalous == 3  # no overlap: injected left the test set
    assert len(out.scores) == 7 and {r["label"] for r in out.scores} == {0, 1}
    assert not {r["image_id"] for r in out.scores} & set(s.injected_ids)
    assert out.params["coreset_ratio"] == 0.5 and "map_sigma" in out.params  # defaults filled
    assert set(out.timings) == {"feature_s", "fit_s", "eval_s"} and all(v >= 0 for v in out.timings.values())
    assert out.device == "cpu" and out.pixel_level
    assert set(out.diagnostics) >= {"bank_size"}
    picks = [e["pick"] for e in out.map_examples]
    assert picks == ["best", "median", "worst"]
    ex = out.map_examples[0]
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    assert ex["map"].shape == (64, 64) and ex["mask"].shape == (64, 64) and ex["mask"].any()
    assert ex["label"] == 1 and ex["map_min"] <= ex["map"].min() and ex["map"].max() <= ex["map_max"]
    best = max(r["score"] for r in out.scores if r["label"] == 1)
    assert ex["score"] == pytest.approx(best)

    # same cell, same numbers (features now come from the cache)
    again = run_cell(cfg, feature_cache=cache, device="cpu")
    assert again.metrics == out.metrics and again.scores == out.scores

    # another split of the category (new seed and ratio) reads the same category pack: the cache
    # holds one pack for bottle, not one per split
    other = run_cell(dataclasses.replace(cfg, seed=4, split=SplitRule(ratio=0.1)), feature_cache=cache,
                     device="cpu")
    assert other.split.injected_ids != s.injected_ids
    assert len(list(cache.glob("*/packs/*.npy"))) == 1


def test_funad_cell_with_oracle_evaluation(tree: Path, cache: Path) -> None:
    cfg = CellConfig.build(
        dataset={"kind": "mvtec", "root": str(tree)},
        category="bottle",
        backbone=BACKBONE,
        method="funad",
        settings={"epochs": 2, "batch_size": 4},
        split={"ratio": 0.0},
        eval_every=1,
        n_map_examples=0,
    )
    reports: list[dict] = []
    out = run_cell(cfg, feature_cache=cache, device="cpu", report=reports.append)
    assert len(out.history) == 2 and len(reports) == 2
    assert all(h.get("eval_image_auroc") is not None for h in out.history)
    assert 0.0 <= out.oracle["oracle_image_auroc"] <= 1.0 and out.oracle["oracle_epoch"] in (1.0, 2.0)
    assert out.map_examples == [] and out.split.n_injected == 0
    assert all(0.0 <= out.metrics[k] <= 1.0 for k in METRIC_KEYS)


def test_a_cell_reports_only_its_own_use_of_the_native_kernels(
    tree: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reused worker: an earlier cell's kernel use must not reach this cell's `funad_native`."""
    import torch

    from funad import native

    monkeypatch.setenv("FUNAD_NATIVE", "0")
    native.reset()
    native.usable(torch.zeros(2, 2))  # the earlier cell asked for the kernels
    assert native.status() == "off"
    cfg = CellConfig.build(dataset={"kind": "mvtec", "root": str(tree)}, category="bottle", backbone=BACKBONE,
                     method="patchcore", settings={"coreset_ratio": 0.5, "knn_backend": "faiss"}, seed=0)
    run_cell(cfg, feature_cache=cache, device="cpu")
    assert native.status() is None  # this cell's searches (faiss) never asked
    native.reset()
