"""The benchmark scripts at tiny shapes: JSON keys, FLOP counting by hand (the GPU check: its own test)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import irmb_bench, run
from benchmarks.sweep_bench import KEYS as SWEEP_KEYS
from benchmarks.sweep_bench import read_results


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors on a shared 2-core box: one thread avoids OpenMP spin-wait slowdowns."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_flop_counts_by_hand() -> None:
    # D = 1536 (C = 768): Local-Net multiply-adds per patch = the weights without biases
    macs = 1536 * 1536 + 1536 * 1024 + 1024 * 128 + 128
    assert irmb_bench.localnet_macs_per_patch(1536) == macs == 4_066_049 - (1536 + 1024 + 128 + 1)
    fl = irmb_bench.flop_counts(
        pool=44, batch=32, bank_images=11, bank_in_batch=8, patches=784, dim=1536, width=1568
    )
    p = 32 * 784
    nom, ex = fl["nominal"], fl["executed"]
    assert nom["mutual_pairs"] == 2 * p * p * 1536  # ~1.93 TFLOP (spec section 6)
    assert nom["bank_search"] == 2 * p * (11 * 784) * 1536  # ~0.66 TFLOP
    assert nom["pool_scoring"] == 2 * 44 * 784 * macs  # ~0.28 TFLOP
    assert nom["train_step"] == 6 * p * macs  # ~0.61 TFLOP
    assert nom["total"] == pytest.approx(3.48e12, rel=0.01)
    assert ex["mutual_pairs"] == p * p * 1568  # upper triangle only, padded fused-norm width
    assert ex["bank_search"] == 2 * p * (3 * 784) * 1568  # only the bank images outside the batch
    # split adaptor: the CLS half once per image instead of once per patch
    assert ex["pool_scoring"] == 2 * 44 * 784 * (macs - 768 * 1536) + 2 * 44 * 768 * 1536
    # split adaptor forward + weight gradient (no input gradient for layer 1; CLS half per image),
    # head forward + both gradients; no band rows here
    head = macs - 1536 * 1536
    assert ex["train_step"] == 2 * (2 * p * 768 * 1536 + 2 * 32 * 768 * 1536) + 6 * p * head
    banded = irmb_bench.flop_counts(
        pool=44, batch=32, bank_images=11, bank_in_batch=8, patches=784, dim=1536, width=1568,
        band_rows=100,
    )["executed"]["train_step"]
    # each noised band row adds a full adaptor (forward + weight gradient) and one more head pass
    assert banded - ex["train_step"] == 100 * (4 * 1536 * 1536 + 6 * head)
    assert ex["total"] == pytest.approx(sum(v for k, v in ex.items() if k != "total"))


def test_run_tiny_prints_json_last_line(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    real = irmb_bench.matmul_flops_per_s
    monkeypatch.setattr(
        irmb_bench, "matmul_flops_per_s", lambda dt, **_: real(dt, m=256, k=64, n=256, repeats=3)
    )
    assert run.main(["--tiny", "--skip-sweep", "--repeats", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(last)
    for key in (
        "irmb_gemm_efficiency",
        "irmb_breakdown",
        "irmb_iter_s_fp32",
        "irmb_iter_s_bf16",
        "bf16_label_agreement",
        "knn_faiss_vs_torch",
        "provenance",
        *SWEEP_KEYS,
    ):
        assert key in res, key
    assert res["reason"].startswith("skipped")
    assert set(res["irmb_breakdown"]) == {"pool_scoring", "bank_and_pair_search", "train_step"}
    assert sum(res["irmb_breakdown"].values()) == pytest.approx(1.0)
    assert 0.0 <= res["bf16_label_agreement"] <= 1.0
    assert res["irmb_gemm_efficiency"] > 0
    cmp = res["search_native_vs_torch"]
    assert cmp["fp32"]["ratio"] is None or (cmp["fp32"]["ratio"] > 0 and cmp["fp32"]["same_pairs"]), cmp
    assert cmp["bf16"]["ratio"] is None or cmp["bf16"]["ratio"] > 0, cmp  # bf16 near-ties may differ


def test_sweep_results_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_results(str(tmp_path))


# ---- benchmarks/memory_bench.py: the /proc readers, the summary, the cache it pre-populates ----


def test_memory_bench_smaps_sees_mapped_and_anonymous_pages(tmp_path) -> None:
    import mmap
    import os

    import numpy as np

    from benchmarks.memory_bench import _environ, read_process

    feat = tmp_path / "features"
    feat.mkdir()
    path = feat / "pack.npy"
    w = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(8, 1024, 1024))  # 16 MiB
    w[:] = 1.0
    w.flush()
    del w
    prefix = os.path.realpath(feat) + os.sep
    arr = np.load(path, mmap_mode="r")
    before = read_process(os.getpid(), prefix)
    assert before is not None and before.feat_rss_kb < 1024  # mapped, not yet touched
    assert [(p, d) for p, _, d in before.feat_files] == [(os.path.realpath(path), False)]
    assert float(arr.sum(dtype=np.float32)) == 8 * 1024 * 1024  # touches every page
    touched = read_process(os.getpid(), prefix)
    assert touched is not None
    assert touched.feat_rss_kb >= 15 * 1024  # the whole 16 MiB pack now resident in this process
    assert 0 < touched.feat_pss_kb <= touched.feat_rss_kb
    assert touched.rss_kb >= touched.feat_rss_kb and touched.pss_kb > 0
    assert _environ(os.getpid()).get("PATH") == os.environ.get("PATH")  # how the malloc setting is checked
    # the pack's pages are file-backed: touching them adds no anonymous memory, a private copy does
    # (into a fresh anonymous mapping: a heap copy may reuse pages freed by earlier tests)
    buf = mmap.mmap(-1, arr.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    copy = np.frombuffer(buf, dtype=np.float16).reshape(arr.shape)
    copy[:] = arr
    copied = read_process(os.getpid(), prefix)
    assert copied is not None and copied.anon_kb - touched.anon_kb >= 15 * 1024
    assert copied.feat_rss_kb == touched.feat_rss_kb
    del copy
    path.unlink()  # a pack replaced/deleted while mapped is reported as such
    gone = read_process(os.getpid(), prefix)
    assert gone is not None and [d for _, _, d in gone.feat_files] == [True]
    del arr


def test_memory_bench_summary_peaks_and_trial_baselines() -> None:
    from benchmarks.memory_bench import ProcMemory, Sample, summarize_samples

    def pm(anon_mb: int, feat_mb: int = 0, deleted: bool = False) -> ProcMemory:
        files = {("/c/pack.npy", 7, deleted)} if feat_mb else set()
        kb = 1024
        return ProcMemory(rss_kb=(anon_mb + feat_mb) * kb, pss_kb=(anon_mb + feat_mb // 2) * kb,
                          anon_kb=anon_mb * kb, feat_rss_kb=feat_mb * kb, feat_pss_kb=feat_mb // 2 * kb,
                          feat_files=files)

    samples = [
        Sample(0.0, {1: pm(100), 2: pm(300)}),  # before the window: the worker idles at 300 MB
        Sample(1.0, {1: pm(100), 2: pm(320)}),
        Sample(2.0, {1: pm(100), 2: pm(330, feat_mb=200)}),  # first pack mapping
        Sample(3.0, {1: pm(100), 2: pm(900, feat_mb=200)}),
        Sample(3.5, {1: pm(100), 2: pm(700)}),  # the first cell ended
        Sample(4.0, {1: pm(100), 2: pm(1200, feat_mb=200)}),  # a second cell on the allocator's leftovers
        Sample(5.0, {1: pm(5000), 2: pm(400)}),  # after the window: must not count
    ]
    out = summarize_samples(samples, 0.5, 4.5, {2: [(3.8, 4.5), (1.5, 3.2)]})
    assert out["samples_in_window"] == 5 and out["max_processes"] == 2
    assert out["peak_anon_mb"] == 1300 and out["peak_feat_rss_mb"] == 200 and out["peak_feat_pss_mb"] == 100
    (trial,) = out["trial_processes"]
    assert trial["pid"] == 2 and trial["cells"] == 2 and trial["baseline_anon_mb"] == 320
    assert trial["peak_anon_mb"] == 900 and trial["added_anon_mb"] == 580  # its first cell only
    whole = summarize_samples(samples, 0.5, 4.5)["trial_processes"][0]  # cells unknown: the window
    assert whole["cells"] is None and whole["added_anon_mb"] == 880
    assert out["feature_files_mapped"] == 1 and out["deleted_feature_mappings"] == []
    with pytest.raises(RuntimeError):
        summarize_samples(samples, 10.0, 11.0)


def test_memory_bench_working_set_from_shapes() -> None:
    from benchmarks.memory_bench import MB, METHOD_CONFIGS, predicted_working_set

    shape = {"n_train": 240, "n_test": 60, "grid": (28, 28), "channels": 768}
    bf16 = predicted_working_set("funad", {"precision": "bf16"}, **shape)
    fp32 = predicted_working_set("funad", {"precision": "fp32"}, **shape)
    assert bf16["z_buf"] == 240 * 784 * 1536 * 2 / MB
    assert fp32["z_buf"] == 2 * bf16["z_buf"]
    pc = predicted_working_set("patchcore", {}, **shape)  # embed_dim 1024 >= 768: full width
    assert pc["aggregated_pool"] == 240 * 784 * 768 * 4 / MB
    assert pc["score_mb"] > 2 * 4096 * 18816 * 4 / MB  # default 10 % bank: the knn blocks dominate scoring
    small = predicted_working_set("patchcore", METHOD_CONFIGS["patchcore_embed64"][1], **shape)
    assert small["aggregated_pool"] == 240 * 784 * 64 * 4 / MB
    assert small["total_mb"] < predicted_working_set("patchcore", METHOD_CONFIGS["patchcore"][1], **shape)[
        "total_mb"
    ] / 3


def test_memory_bench_cache_needs_no_backbone(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-populated cache serves extract_features with 0 forwards and never builds a backbone."""
    import numpy as np

    from benchmarks.memory_bench import BACKBONE, CATEGORY, populate_cache, write_dataset
    from funad.features import BackboneConfig, backbone_key, entry_key, extract
    from funad.features.cache import FeatureCache
    from funad.run import open_dataset

    counts = write_dataset(tmp_path / "data", 4, 3)
    assert counts == {"n_train": 4, "n_test_normal": 2, "n_test_anomalous": 1}
    info = populate_cache(tmp_path / "data", tmp_path / "features", build_packs=False)
    assert info["entry_shape"] == [785, 768] and info["grid"] == [28, 28] and info["images"] == 7
    assert info["category_features_mb"] == pytest.approx(7 * 785 * 768 * 2 / 2**20, rel=1e-3)

    def no_backbone(*_a, **_k):
        raise AssertionError("a backbone was built: the cache is missing an entry")

    monkeypatch.setattr(extract, "build_extractor", no_backbone)
    cfg = BackboneConfig(**BACKBONE)
    records = open_dataset({"kind": "folder", "root": str(tmp_path / "data")}).records(CATEGORY)
    before = extract.forward_count()
    fs = extract.extract_features(records, cfg, tmp_path / "features", progress=False)
    assert extract.forward_count() == before
    assert isinstance(fs.patches.base, np.memmap) or isinstance(fs.patches, np.memmap)
    assert fs.patches.shape == (7, 28, 28, 768) and fs.patches.dtype == np.float16
    assert int(fs.labels.sum()) == 1
    cache = FeatureCache(tmp_path / "features" / backbone_key(cfg), (785, 768))
    entry = cache.read_entry(entry_key(records[0].path, None))
    assert entry is not None and np.array_equal(entry[1:].reshape(28, 28, 768), fs.patches[0])
    assert np.isfinite(fs.patches).all() and 0.5 < float(np.abs(fs.patches[0]).mean()) < 5


def test_memory_bench_scaling_estimate_counts_a_copy(tmp_path) -> None:
    """A trial whose peak grows by one extra fp16 copy of the features reads as 1 copy, else 0."""
    import json

    from benchmarks.memory_bench import _per_config, tune_pids

    trial = tmp_path / "tune" / "tune-x" / "c1"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text(json.dumps({"pid": 11, "config": {"cell_id": "c1"}}) + "\n")
    assert tune_pids(str(tmp_path)) == {"c1": 11}

    def run(peaks: list[float], mapped: float, pids: list[int]) -> dict:
        cells = [{"pid": pid, "started": float(i), "peak_rss_mb": pk} for i, (pk, pid) in
                 enumerate(zip(peaks, pids, strict=True))]
        procs = [{"pid": pid, "peak_feat_rss_mb": mapped, "added_anon_mb": 100.0} for pid in set(pids)]
        tree = {f"peak_{m}_mb": 1000.0 for m in ("rss", "pss", "anon", "feat_rss", "feat_pss")}
        return {"cells": cells, "trial_processes": procs, **tree}

    feats, half = 360.0, 180.0
    ws, ws_half = {"total_mb": 600.0}, {"total_mb": 300.0}
    for copy in (0.0, 1.0):
        full_peak = 500 + feats + 600 + 50 + copy * feats  # interpreter + packs + buffers + transients
        half_peak = 500 + half + 300 + 50 + copy * half
        one = run([full_peak, full_peak + 30], feats, [1, 1])  # 2nd cell of a reused worker: ignored
        two = run([full_peak, full_peak + 18], feats, [2, 3])
        res = _per_config(one, two, run([half_peak, half_peak], half, [4, 4]), ws, ws_half, feats, half)
        assert res["feature_copies_from_scaling"] == pytest.approx(copy)
        assert res["scaling"]["noise_copies"] == pytest.approx(18 / 180)
        assert res["scaling"]["feature_copies_two_trials_run"] == pytest.approx(copy + 9 / 180)
