"""`make gpu-check`: one package that exercises the whole GPU path once and prints every figure we need.

`python -m benchmarks.gpu_check [--device cuda|cpu] [--tiny] [--budget-s 300] [--out FILE]`.
Progress goes to stderr; the LAST stdout line is one JSON object (also written to --out), documented key by
key in benchmarks/RESULTS.md ("GPU check"). Sections, each guarded (a failing section is recorded with its
error and the others still run; none starts once the budget is spent):
1. `features`: ViT-B/8 (`weights: random`: shapes matter, the hub is unreachable) over 64 PNGs through the
   real `extract_features` and its cache: images/s, and the cached fp16 features of 2 images against a CPU
   extraction of the same images.
2. `funad`: FUN-AD at MVTec-bottle shapes (pool 230, batch 32, D = 1536, 784 patches) in fp32, tf32, bf16
   and bf16 + train_precision bf16: seconds per iteration, achieved TFLOP/s, GEMM efficiency against a plain
   matmul of the same precision on the same device, peak device memory, pseudo-label agreement with fp32,
   bank_every 2/5/10, and the host-device sync points of one iteration.
3. `searches`: the bank search (`funad.search.nearest`) and PatchCore's flat search (`funad.search.knn`),
   torch against faiss: time ratio, identical results, the faster backend per device.
4. `sweep`: a 4-cell Ray Tune sweep through `python -m harness.sweep` (two trials per GPU on CUDA).
5. `estimate`: GPU-hours of sweeps/full.yaml for every method from the measured parts.
`--device cpu --tiny` runs every section at tiny shapes (the test suite does), so the script cannot rot.
Everything that only a GPU does (synchronisation, memory statistics, sync counting, the device name) sits in
the small helpers of `device`; the CPU run exercises the rest.

The modules: `device` (the CUDA-only helpers), `check` (shapes, budget, timing), one per section
(`features`, `training`, `searches`, `sweep`, `estimate`), and `driver` (the order, the JSON, the exit code).
"""

from benchmarks.gpu_check.driver import main, run_check

__all__ = ["main", "run_check"]
