"""benchmarks/gpu_check.py: the whole script on a CPU at tiny shapes (every JSON key), and its GPU-hours
arithmetic against hand-computed cases and the real contamination rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest_data import sweep_env

from benchmarks import gpu_check as gc
from funad.data.contamination import contaminate
from funad.data.records import ImageRecord

REPO = Path(__file__).resolve().parent.parent

# every key of the JSON, as benchmarks/RESULTS.md ("GPU check") documents them
TOP_KEYS = {
    "check", "device", "device_name", "tiny", "budget_s", "wall_s", "provenance", "failed_sections",
    "skipped_sections", "features", "funad", "searches", "sweep", "estimate",
}
FEATURE_KEYS = {
    "ok", "section_s", "backbone", "grid", "channels", "images", "backbone_forwards", "images_per_s",
    "forward_images_per_s", "cpu_compared_images", "max_abs_diff", "feature_scale", "rel_diff",
    "tolerance_rel", "within_tolerance",
}
FUNAD_KEYS = {
    "ok", "section_s", "shapes", "matmul_tflops", "modes", "agreement", "bank_every",
    "sync_points_per_iteration",
}
MODE_KEYS = {
    "precision", "train_precision", "iter_s", "parts_s", "achieved_tflops", "nominal_tflops",
    "gemm_efficiency", "peak_memory_mb", "bank_images", "bank_in_batch", "band_rows", "cost_model",
}
RACE_KEYS = {
    "query_rows", "bank_rows", "torch_s", "faiss_s", "ratio_faiss_torch", "faster", "same_indices",
    "index_agreement", "distances_within_rounding", "max_abs_dist_diff", "identical",
}
SEARCH_KEYS = {
    "ok", "section_s", "device", "faiss", "bank_search", "flat_knn", "auto_should_pick", "distance_rule",
}
SWEEP_KEYS = {
    "ok", "section_s", "returncode", "driver_s", "spec", "cells", "expected_cells", "statuses", "all_ok",
    "intervals", "max_concurrent_cells", "overlapping", "device_column", "expected_device", "device_ok",
    "peak_gpu_mb", "tail",
}
ESTIMATE_KEYS = {
    "ok", "section_s", "grid", "measured_cells", "gpu_hours", "in_full_yaml", "total_gpu_hours",
    "bank_every_gpu_hours", "bank_every_saving_gpu_hours", "recommended", "rules",
}


def _cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX: without them a bf16 matmul is emulated, far below the fp32 rate, and the bf16
    GEMM efficiency (iteration vs a plain bf16 matmul of another shape) measures the emulation, not us."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """One `--device cpu --tiny` run: (the last stdout line, the --out file), both parsed."""
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=REPO, env=sweep_env(pythonpath=REPO), capture_output=True, text=True, timeout=300,
    )
    print(res.stderr[-4000:])
    assert res.returncode == 0, res.stderr[-4000:]
    last = res.stdout.strip().splitlines()[-1]
    return json.loads(last), json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_cpu_run_every_key(tiny_run: tuple[dict, dict]) -> None:
    r, from_file = tiny_run
    assert r == from_file
    assert set(r) == TOP_KEYS
    assert r["device"] == "cpu" and r["device_name"] == "cpu" and r["tiny"] is True
    assert r["failed_sections"] == [] and r["skipped_sections"] == []
    assert 0 < r["wall_s"] <= r["budget_s"] + 60

    f = r["features"]
    assert set(f) == FEATURE_KEYS and f["ok"]
    assert f["backbone_forwards"] == f["images"] == gc.FEATURES_TINY.images  # computed, not read from a cache
    assert f["images_per_s"] > 0 and f["forward_images_per_s"] > 0
    assert f["grid"] == [2, 2] and f["channels"] == 192  # ViT-Ti/16 at 32 px
    assert 0 <= f["max_abs_diff"] <= f["tolerance_rel"] * f["feature_scale"] and f["within_tolerance"]

    fa = r["funad"]
    assert set(fa) == FUNAD_KEYS and fa["ok"]
    assert set(fa["modes"]) == set(gc.GPU_MODES)
    assert all(v > 0 for v in fa["matmul_tflops"].values())
    for mode, m in fa["modes"].items():
        assert set(m) == MODE_KEYS, mode
        assert m["iter_s"] > 0 and m["achieved_tflops"] > 0 and m["nominal_tflops"] > 0
        assert sum(m["parts_s"].values()) == pytest.approx(m["iter_s"])
        eff = m["gemm_efficiency"]
        assert eff > 0 and (eff <= 1.5 or (m["precision"] == "bf16" and not _cpu_has_bf16_units())), mode
        assert m["peak_memory_mb"] is None  # CUDA statistics only
        cost = m["cost_model"]
        assert cost["fixed_s"] >= 0 and cost["pool_s"] >= 0 and cost["ref_pool"] == gc.TINY.pool
        assert cost["fixed_s"] + cost["pool_s"] == pytest.approx(m["iter_s"])
    for precision in ("tf32", "bf16"):
        a = fa["agreement"][precision]
        assert 0 <= a["label_agreement"] <= 1 and 0 <= a["pair_jaccard"] <= 1 and 0 <= a["fp32_pos_frac"] <= 1
    assert set(fa["bank_every"]) == set(gc.BANK_EVERY_MODES)
    for mode, b in fa["bank_every"].items():
        assert b["reuse_iter_s"] > 0 and b["reuse_bank_search_s"] > 0
        assert set(b["iter_s"]) == {"1", "2", "5", "10"}
        assert b["iter_s"]["1"] == fa["modes"][mode]["iter_s"]
        for k in (2, 5, 10):
            assert b["iter_s"][str(k)] == pytest.approx((b["iter_s"]["1"] + (k - 1) * b["reuse_iter_s"]) / k)
    sync = fa["sync_points_per_iteration"]
    assert sync["counted"] == sum(sync["by_site"].values()) == sum(sync["by_api"].values()) > 0
    assert all(site.startswith("funad/") for site in sync["by_site"]) and sync["cuda_syncs"] is None

    s = r["searches"]
    assert set(s) == SEARCH_KEYS and s["ok"] and s["device"] == "cpu"
    assert set(s["bank_search"]) == {"dim", "k", "fp32", "bf16"}
    flat = {k: v for k, v in s["flat_knn"].items() if k not in ("dim", "k", "coreset_ratio")}
    assert len(flat) == len(s["flat_knn"]) - 3
    races = [s["bank_search"]["fp32"], s["bank_search"]["bf16"], flat]
    for race in races:
        assert race["torch_s"] > 0
    if s["faiss"]["available"]:
        assert s["faiss"]["index"] == "cpu"
        for race in races:
            assert set(race) == RACE_KEYS
            assert race["faiss_s"] > 0
            assert race["ratio_faiss_torch"] == pytest.approx(race["faiss_s"] / race["torch_s"])
            assert race["faster"] == ("faiss" if race["faiss_s"] < race["torch_s"] else "torch")
            assert 0 <= race["index_agreement"] <= 1
        assert s["bank_search"]["fp32"]["identical"]  # both exact fp32 re-ranks of the same rows
        assert s["flat_knn"]["distances_within_rounding"]
    assert set(s["auto_should_pick"].values()) <= {"torch", "faiss"}

    sw = r["sweep"]
    assert set(sw) == SWEEP_KEYS and sw["ok"] and sw["returncode"] == 0
    assert sw["cells"] == sw["expected_cells"] == 4 and sw["all_ok"] and set(sw["statuses"]) == {"ok"}
    assert sw["overlapping"] and sw["max_concurrent_cells"] == 2  # two trials at once on two CPUs
    assert sw["device_column"] == ["cpu"] and sw["device_ok"] and sw["peak_gpu_mb"] is None
    assert sw["spec"]["resources"] == {"cpu": 1} and sw["spec"]["ray"]["num_cpus"] == 2

    e = r["estimate"]
    assert set(e) == ESTIMATE_KEYS and e["ok"]
    assert e["grid"]["categories"] == 27 and e["grid"]["cells"] == {m: 27 * 5 * 3 for m in e["in_full_yaml"]}
    assert all("error" not in c for c in e["measured_cells"].values())
    hours = e["gpu_hours"]
    assert hours["features"] > 0 and all(h > 0 for h in hours["funad"].values())
    assert all(hours[m] > 0 for m in ("patchcore", "softpatch", "inreach"))
    assert set(e["total_gpu_hours"]) == set(gc.GPU_MODES)
    assert all(t > 0 for t in e["total_gpu_hours"].values())
    for mode, per in e["bank_every_gpu_hours"].items():
        assert all(h > 0 for h in per.values())
        for k, saving in e["bank_every_saving_gpu_hours"][mode].items():
            assert saving == pytest.approx(hours["funad"][mode] - per[k])
    rec = e["recommended"]
    assert rec["mode"] in gc.GPU_MODES and rec["total_gpu_hours"] == e["total_gpu_hours"][rec["mode"]]
    assert rec["meets_target"] == (rec["total_gpu_hours"] <= gc.TARGET_GPU_HOURS)
    for section in ("features", "funad", "searches", "sweep", "estimate"):
        assert r[section]["section_s"] > 0


def test_cuda_requested_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gc.main(["--device", "cuda"]) == gc.EXIT_NO_DEVICE
    captured = capsys.readouterr()
    assert captured.out == "" and "torch.cuda.is_available() is False" in captured.err


# ---- the GPU-hours arithmetic ------------------------------------------------------------------
SIZES_CSV = """dataset,category,train_normal,test_normal,test_anomalous,source
toy,big,100,20,30,hand
toy,small,40,10,8,hand
other,unused,5,5,5,hand
"""
SPEC_YAML = """name: toy
datasets:
  - {kind: toy, root: /nowhere, categories: all}
contamination: {ratios: [0.0, 0.1, 0.5], overlap: false, shortfall: cap}
seeds: [0, 1]
methods:
  funad: {epochs: 10}
  patchcore: {coreset_ratio: [0.1, 0.2]}
"""


@pytest.fixture()
def toy_grid(tmp_path: Path) -> gc.SweepGrid:
    (tmp_path / "sizes.csv").write_text(SIZES_CSV)
    (tmp_path / "spec.yaml").write_text(SPEC_YAML)
    return gc.read_grid(tmp_path / "spec.yaml", gc.read_sizes(tmp_path / "sizes.csv"))


def test_grid_and_cell_shapes_by_hand(toy_grid: gc.SweepGrid) -> None:
    assert [c.category for c in toy_grid.categories] == ["big", "small"]
    assert toy_grid.ratios == (0.0, 0.1, 0.5) and toy_grid.seeds == 2
    assert toy_grid.methods == {
        "funad": [{"epochs": 10}],
        "patchcore": [{"coreset_ratio": 0.1}, {"coreset_ratio": 0.2}],  # a list is swept
    }
    big, small = toy_grid.categories
    rule = toy_grid.contamination
    # big: 30 anomalies, min(10, 15) stay -> 20 can be drawn; small: 8 anomalies, min(10, 4) stay -> 4
    assert [gc.cell_shape(big, r, rule) for r in toy_grid.ratios] == [(100, 50), (110, 40), (120, 30)]
    assert [gc.cell_shape(small, r, rule) for r in toy_grid.ratios] == [(40, 18), (44, 14), (44, 14)]


def _records(size: gc.CategorySize) -> list[ImageRecord]:
    def rec(name: str, label: int, split: str) -> ImageRecord:
        return ImageRecord(name, Path(name), label, split, size.category)

    return (
        [rec(f"train/{i}", 0, "train") for i in range(size.train_normal)]
        + [rec(f"good/{i}", 0, "test") for i in range(size.test_normal)]
        + [rec(f"bad/{i}", 1, "test") for i in range(size.test_anomalous)]
    )


def test_cell_shapes_match_the_contamination_rule() -> None:
    """cell_shape against contaminate() itself, on records with every real category's counts."""
    grid = gc.read_grid()
    for size in grid.categories[::4]:
        records = _records(size)
        for ratio in grid.ratios:
            split = contaminate(records, ratio=ratio, overlap=False, shortfall="cap", key=size.category)
            assert gc.cell_shape(size, ratio, grid.contamination) == (len(split.train), len(split.test))


def test_gpu_hours_by_hand(toy_grid: gc.SweepGrid) -> None:
    funad = gc.FunADCost(gc.LinearCost(1.0, 0.5, 100), gc.LinearCost(0.2, 0.1, 100))
    patchcore = gc.CellCost(fit_s=2.0, score_s=1.0, ref_pool=100, ref_test=50, fit_exponent=2.0)
    out = gc.gpu_hours(toy_grid, {"fp32": funad}, {"patchcore": patchcore}, images_per_s=52.0, bank_every=[2])
    # FUN-AD: 10 epochs x pool // 32 iterations x (1 + 0.5 * pool / 100) s; big: 3 iterations at pools
    # 100, 110, 120; small: pools 40, 44, 44 -> one iteration each; two seeds
    big = 10 * 3 * (1.5 + 1.55 + 1.6)
    small = 10 * 1 * (1.2 + 1.22 + 1.22)
    assert out["funad"]["fp32"] == pytest.approx(2 * (big + small) / 3600)
    # bank_every 2: (rebuild + reuse) / 2, reuse = 0.2 + 0.1 * pool / 100
    big2 = 10 * 3 * ((1.5 + 0.3) + (1.55 + 0.31) + (1.6 + 0.32)) / 2
    small2 = 10 * 1 * ((1.2 + 0.24) + 2 * (1.22 + 0.244)) / 2
    assert out["funad_bank_every"]["fp32"]["2"] == pytest.approx(2 * (big2 + small2) / 3600)
    # PatchCore: 2 (pool/100)^2 + 1 (pool/100)(test/50) per cell, two grid points x two seeds
    cells = [(100, 50), (110, 40), (120, 30), (40, 18), (44, 14), (44, 14)]
    assert sum(2 * (p / 100) ** 2 + (p / 100) * (t / 50) for p, t in cells) == pytest.approx(11.3848)
    assert out["methods"]["patchcore"] == pytest.approx(2 * 2 * 11.3848 / 3600)
    assert out["features"] == pytest.approx((150 + 58) / 52.0 / 3600)
    assert out["cells"] == {"funad": 12, "patchcore": 24}


def test_iterations_per_epoch_follow_funad_fit() -> None:
    assert gc.iterations_per_epoch(230, 32) == 7  # drop_last
    assert gc.iterations_per_epoch(64, 32) == 2
    assert gc.iterations_per_epoch(20, 32) == 1  # a pool smaller than the batch is one batch


def test_real_grid_is_read_from_full_yaml() -> None:
    grid = gc.read_grid()
    assert len(grid.categories) == 15 + 12 and grid.seeds == 3 and len(grid.ratios) == 5
    assert set(grid.methods) == {"funad", "patchcore", "softpatch"}
    assert grid.methods["funad"] == [{"epochs": 1500}]


def test_bad_size_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "sizes.csv"
    path.write_text(SIZES_CSV.replace("toy,small,40,", "toy,small,forty,"))
    with pytest.raises(ValueError, match=r"sizes\.csv:3"):
        gc.read_sizes(path)


# ---- small helpers ----------------------------------------------------------------------------
def test_max_concurrent_by_hand() -> None:
    assert gc.max_concurrent([]) == 0
    assert gc.max_concurrent([(0, 2), (3, 4)]) == 1
    assert gc.max_concurrent([(0, 2), (2, 4)]) == 2  # touching ends share the instant 2
    assert gc.max_concurrent([(0, 5), (1, 2), (1.5, 3), (4, 6)]) == 3


def test_sync_points_counted_and_restored() -> None:
    from collections import Counter

    before = {name: torch.Tensor.__dict__.get(name) for name in ("item", "__bool__", "__getitem__")}
    x = torch.arange(6)
    counts: Counter[str] = Counter()
    with gc.count_sync_points(counts):
        x.sum().item()
        bool(x.any())
        x[x > 2]
        x[1:3]  # a slice reads nothing
        torch.nonzero(x)
        int(x[0])
    by_api = Counter()
    for site, n in counts.items():
        by_api[site.split(" ", 1)[1]] += n
    assert by_api == {"item": 1, "__bool__": 1, "bool-mask index": 1, "torch.nonzero": 1, "__int__": 1}
    assert all(site.startswith("other ") for site in counts)  # no funad/ frame led here
    assert {name: torch.Tensor.__dict__.get(name) for name in before} == before


def test_distance_rule_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    from funad.search import KEY_SLACK

    rho, beta = KEY_SLACK["fp32"]
    d = torch.tensor([[1.0], [2.0]])
    allow = 2 * (rho * 1.0 + beta * (1.0 + 9.0))  # row 0: |d| = 1, ||q||^2 = 1, max ||b||^2 = 9
    assert gc.within_fp32_rounding(d, d + torch.tensor([[0.9 * allow], [0.0]]), q, b).all()
    assert not gc.within_fp32_rounding(d, d + torch.tensor([[1.1 * allow], [0.0]]), q, b)[0, 0]
    inf = torch.tensor([[float("inf")], [2.0]])
    assert gc.within_fp32_rounding(inf, inf, q, b).all()
    res = gc.compare_results((d, torch.tensor([[0], [1]])), (d, torch.tensor([[0], [0]])), q, b)
    assert res["index_agreement"] == 0.5 and not res["same_indices"] and not res["identical"]
    assert res["distances_within_rounding"] and res["max_abs_dist_diff"] == 0.0
