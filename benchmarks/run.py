"""`python -m benchmarks.run` (`make bench`): every benchmark; the LAST stdout line is one JSON object.

All values are measured in this run on this machine; the ones meant for comparison are ratios
(see irmb_bench and sweep_bench). --skip-sweep leaves the sweep keys None with a reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import torch

from benchmarks.inreach_bench import FULL_SHAPES as INREACH_SHAPES
from benchmarks.inreach_bench import TINY_SHAPES as INREACH_TINY
from benchmarks.inreach_bench import run_inreach_bench
from benchmarks.irmb_bench import CPU_SHAPES, run_irmb_bench
from benchmarks.memory_bench import run_memory_bench
from benchmarks.sweep_bench import KEYS as SWEEP_KEYS
from benchmarks.sweep_bench import run_sweep_bench
from rundir import EXIT_OK


def provenance() -> dict[str, Any]:
    """Date, machine, command and commit of this run (the commit is read, nothing is changed)."""
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} cpus={os.cpu_count()}",
        "torch": torch.__version__,
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.run", *sys.argv[1:]]),
        "commit": commit or None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed iterations per precision (median)")
    p.add_argument("--skip-sweep", action="store_true", help="do not run the Ray sweep benchmark")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test of the benchmark)")
    p.add_argument("--no-smoke", action="store_true", help="overhead of the 2-cell sweep, not smoke.yaml")
    p.add_argument("--compare-fp32", action="store_true", help="also time the row-wise fp32 search")
    p.add_argument(
        "--skip-memory", action="store_true", help="do not run the memory benchmark at ViT-B/8 feature sizes"
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    shapes = {"pool": 10, "batch": 4, "patches": 16, "channels": 32} if args.tiny else dict(CPU_SHAPES)
    result: dict[str, Any] = {"provenance": provenance()}
    result.update(
        run_irmb_bench(
            repeats=args.repeats,
            knn_repeats=1 if args.tiny else 3,
            compare_fp32=args.compare_fp32,
            **shapes,
        )
    )
    print(f"irmb benchmark done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    result.update(run_inreach_bench(**(INREACH_TINY if args.tiny else INREACH_SHAPES)))
    print(f"inreach benchmark done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    print(json.dumps(result, default=float), file=sys.stderr, flush=True)  # survives a cut-short sweep
    if args.skip_sweep:
        result.update({**dict.fromkeys(SWEEP_KEYS), "reason": "skipped (--skip-sweep)"})
    else:
        result.update(run_sweep_bench(smoke=not args.no_smoke))
    if args.skip_memory or args.tiny:
        result["feature_copies_per_extra_trial"] = None
        result["memory_vit_sizes"] = {"reason": "skipped (--skip-memory or --tiny)"}
    else:
        # ViT-B/8-sized features (1.2 MB per image): one extra concurrent trial must add no copy of
        # them; PatchCore with a 64-wide embedding (a small working set of its own) and FUN-AD
        mem = run_memory_bench(methods=("patchcore_embed64", "funad"))
        result["feature_copies_per_extra_trial"] = mem.get("feature_copies_per_extra_trial")
        result["memory_vit_sizes"] = mem
    result["bench_wall_s"] = time.perf_counter() - t0
    print(json.dumps(result, default=float))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
