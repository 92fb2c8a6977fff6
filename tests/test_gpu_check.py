"""benchmarks/gpu_check: the whole check on a CPU at tiny shapes (every JSON key); its estimate's grid
against the harness's own cells and their drawn splits; its helpers against hand-computed cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest_data import sweep_env

from benchmarks.gpu_check import check, driver, estimate, searches, sweep
from benchmarks.gpu_check.device import count_sync_points
from funad.data.contamination import CategoryCounts
from rundir import EXIT_USAGE

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
    "funad_dominant_cells", "bank_every_gpu_hours", "bank_every_saving_gpu_hours", "recommended", "rules",
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
    assert f["backbone_forwards"] == f["images"] == check.FEATURES_TINY.images  # computed, not from a cache
    assert f["images_per_s"] > 0 and f["forward_images_per_s"] > 0
    assert f["grid"] == [2, 2] and f["channels"] == 192  # ViT-Ti/16 at 32 px
    assert 0 <= f["max_abs_diff"] <= f["tolerance_rel"] * f["feature_scale"] and f["within_tolerance"]

    fa = r["funad"]
    assert set(fa) == FUNAD_KEYS and fa["ok"]
    assert set(fa["modes"]) == set(check.GPU_MODES)
    assert all(v > 0 for v in fa["matmul_tflops"].values())
    for mode, m in fa["modes"].items():
        assert set(m) == MODE_KEYS, mode
        assert m["iter_s"] > 0 and m["achieved_tflops"] > 0 and m["nominal_tflops"] > 0
        assert sum(m["parts_s"].values()) == pytest.approx(m["iter_s"])
        eff = m["gemm_efficiency"]
        assert eff > 0 and (eff <= 1.5 or (m["precision"] == "bf16" and not _cpu_has_bf16_units())), mode
        assert m["peak_memory_mb"] is None  # CUDA statistics only
        cost = m["cost_model"]
        assert cost["fixed_s"] >= 0 and cost["pool_s"] >= 0 and cost["ref_pool"] == check.TINY.pool
        assert cost["fixed_s"] + cost["pool_s"] == pytest.approx(m["iter_s"])
    for precision in ("tf32", "bf16"):
        a = fa["agreement"][precision]
        assert 0 <= a["label_agreement"] <= 1 and 0 <= a["pair_jaccard"] <= 1 and 0 <= a["fp32_pos_frac"] <= 1
    assert set(fa["bank_every"]) == set(check.BANK_EVERY_MODES)
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
    assert set(e["total_gpu_hours"]) == set(check.GPU_MODES)
    assert all(t > 0 for t in e["total_gpu_hours"].values())
    for mode, per in e["bank_every_gpu_hours"].items():
        assert all(h > 0 for h in per.values())
        for k, saving in e["bank_every_saving_gpu_hours"][mode].items():
            assert saving == pytest.approx(hours["funad"][mode] - per[k])
    rec = e["recommended"]
    assert rec["mode"] in check.GPU_MODES and rec["total_gpu_hours"] == e["total_gpu_hours"][rec["mode"]]
    assert rec["meets_target"] == (rec["total_gpu_hours"] <= check.TARGET_GPU_HOURS)
    for section in ("features", "funad", "searches", "sweep", "estimate"):
        assert r[section]["section_s"] > 0


def test_cuda_requested_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert driver.main(["--device", "cuda"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and "torch.cuda.is_available() is False" in captured.err


# ---- the estimate's grid is the harness's -----------------------------------------------------
SPEC_YAML = """name: toy
datasets:
  - {{kind: mvtec, root: "{root}", categories: all}}
backbone: {{resize: 64, crop: 64}}
contamination: {{ratios: [0.0, 0.1, 0.5], overlap: [false, true], shortfall: augment}}
seeds: [0, 1]
methods:
  funad: {{epochs: [10, 20], batch_size: 4}}
  patchcore: {{coreset_ratio: [0.1, 0.2]}}
"""


def test_the_estimate_grid_is_the_harness_grid(tmp_path: Path) -> None:
    """Every cell the harness would run, with the pool and test sizes its drawn split really has: the
    estimate reads the same sweep file and category counts (not the images) and must agree cell by cell."""
    from conftest_data import build_mvtec

    from funad.run import open_dataset
    from harness.cells import expand_cells
    from harness.spec import load_spec

    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 6, "scratch": 3}, "wood": {"hole": 3}},
                       n_train=9, n_good=4)
    path = tmp_path / "toy.yaml"
    path.write_text(SPEC_YAML.format(root=root))
    spec = load_spec(path)
    dataset = open_dataset({"kind": "mvtec", "root": str(root)})
    records = {c: dataset.records(c) for c in ("bottle", "wood")}
    sizes = {("mvtec", c): CategoryCounts.of(r) for c, r in records.items()}
    want = []
    for cell in expand_cells(spec):
        cfg = cell.config
        split, _ = cfg.split.split(records[cfg.category], seed=cfg.seed, kind="mvtec", category=cfg.category)
        want.append((cfg.method, cfg.settings, cfg.category, cfg.seed, cfg.split, len(split.train),
                     len(split.test)))
    got = [(c.method, c.settings, c.category, c.seed, c.rule, c.amounts.pool, c.amounts.test)
           for c in estimate.grid_cells(load_spec(path, check_data=False), sizes)]
    assert sorted(map(repr, got)) == sorted(map(repr, want)) and len(got) == 2 * (2 + 2) * 3 * 2 * 2
    assert any(c.amounts.copies for c in estimate.grid_cells(spec, sizes))  # wood at 0.5 is augmented


def test_the_full_sweep_validates_without_its_datasets() -> None:
    """sweeps/full.yaml goes through the harness's validation with no dataset root set."""
    spec = estimate.load_sweep()
    cells = estimate.grid_cells(spec, estimate.read_sizes())
    assert {c.method for c in cells} == set(spec.concrete_methods())
    assert len(cells) == len({(c.method, c.dataset, c.category, c.seed, c.rule) for c in cells})


def test_funad_batches_are_what_fit_runs() -> None:
    """The estimate counts FunAD.batches iterations per epoch; fit runs exactly that many."""
    import numpy as np

    from funad.features import FeatureSet
    from funad.methods import FitContext, create_method
    from funad.methods.funad import FunAD

    rng = np.random.default_rng(0)
    for pool in (3, 9, 12):
        patches = rng.standard_normal((pool, 2, 2, 8)).astype(np.float16)
        train = FeatureSet([f"i{k}" for k in range(pool)], patches.mean(axis=(1, 2)), patches,
                           np.zeros(pool, np.int8))
        m = create_method("funad", {"epochs": 2, "batch_size": 4})
        m.fit(train, FitContext(seed=0, device="cpu", map_size=16))
        assert m.history[-1]["iteration"] == 2 * FunAD.batches(m.settings, pool)[1], pool
    s = create_method("funad", {"batch_size": 32}).settings
    assert FunAD.batches(s, 20) == (20, 1) and FunAD.batches(s, 230) == (32, 7)


def test_dominant_groups_add_up(tmp_path: Path) -> None:
    spec = estimate.load_sweep()
    cells = estimate.grid_cells(spec, estimate.read_sizes())
    cost = estimate.FunADCost(estimate.LinearCost(1.0, 0.5, 230))
    out = estimate.gpu_hours(cells, {"fp32": cost}, {}, images=1)
    groups = out["funad_dominant"]["groups"]
    assert len(groups) == estimate.TOP_GROUPS and groups == sorted(groups, key=lambda g: -g["gpu_hours"])
    assert sum(g["gpu_hours"] for g in groups) == pytest.approx(out["funad"]["fp32"] * out["funad_dominant"][
        "top_share"])


SIZES_CSV = """dataset,category,train_normal,test_normal,test_anomalous,source
toy,big,100,20,30,hand
toy,small,40,10,8,hand
"""


def test_bad_size_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "sizes.csv"
    path.write_text(SIZES_CSV.replace("toy,small,40,", "toy,small,forty,"))
    with pytest.raises(ValueError, match=r"sizes\.csv:3"):
        estimate.read_sizes(path)


# ---- small helpers ----------------------------------------------------------------------------
def test_max_concurrent_by_hand() -> None:
    assert sweep.max_concurrent([]) == 0
    assert sweep.max_concurrent([(0, 2), (3, 4)]) == 1
    assert sweep.max_concurrent([(0, 2), (2, 4)]) == 2  # touching ends share the instant 2
    assert sweep.max_concurrent([(0, 5), (1, 2), (1.5, 3), (4, 6)]) == 3


def test_sync_points_counted_and_restored() -> None:
    from collections import Counter

    before = {name: torch.Tensor.__dict__.get(name) for name in ("item", "__bool__", "__getitem__")}
    x = torch.arange(6)
    counts: Counter[str] = Counter()
    with count_sync_points(counts):
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
    assert searches.within_fp32_rounding(d, d + torch.tensor([[0.9 * allow], [0.0]]), q, b).all()
    assert not searches.within_fp32_rounding(d, d + torch.tensor([[1.1 * allow], [0.0]]), q, b)[0, 0]
    inf = torch.tensor([[float("inf")], [2.0]])
    assert searches.within_fp32_rounding(inf, inf, q, b).all()
    res = searches.compare_results((d, torch.tensor([[0], [1]])), (d, torch.tensor([[0], [0]])), q, b)
    assert res["index_agreement"] == 0.5 and not res["same_indices"] and not res["identical"]
    assert res["distances_within_rounding"] and res["max_abs_dist_diff"] == 0.0
