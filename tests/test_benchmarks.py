"""The benchmark scripts at tiny shapes: JSON keys, FLOP counting by hand, the GPU script on a CPU."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_bench, irmb_bench, run
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
    assert ex["train_step"] == 2 * p * (3 * macs - 1536 * 1536)  # no input gradient for layer 1
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


def test_gpu_bench_runs_on_cpu_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_bench.main(["--device", "cpu", "--tiny", "--iterations", "1", "--precision", "fp32"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["device"] == "cpu" and res["iterations_per_s"] > 0
    est = res["full_yaml_estimate"]
    assert est["cells"] == 27 * 5 * 3
    assert est["iterations"] == 27 * 5 * 3 * 1500 * (12 // 32)  # tiny pool < batch: 0 iterations/epoch


def test_gpu_hours_formula() -> None:
    est = gpu_bench.gpu_hours_full(2.0, 229)
    assert est["iterations"] == 405 * 1500 * 7
    assert est["gpu_hours"] == pytest.approx(405 * 1500 * 7 * 2.0 / 3600)


def test_sweep_results_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_results(str(tmp_path))
