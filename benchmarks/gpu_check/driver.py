"""The driver: every section in order, each guarded, within the budget; the JSON line; the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_check.check import DEFAULT_BUDGET_S, Check, progress
from benchmarks.gpu_check.device import cuda_unavailable, device_label, free_device_memory
from benchmarks.gpu_check.estimate import section_estimate
from benchmarks.gpu_check.features import section_features
from benchmarks.gpu_check.searches import section_searches
from benchmarks.gpu_check.sweep import section_sweep
from benchmarks.gpu_check.training import section_funad
from rundir import EXIT_FAILED, EXIT_OK, EXIT_USAGE

SECTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "features": section_features,
    "funad": section_funad,
    "searches": section_searches,
    "sweep": section_sweep,
    "estimate": section_estimate,
}


def run_section(check: Check, name: str, fn: Callable[[Check], dict[str, Any]]) -> dict[str, Any]:
    """fn's figures with ok/section_s, or its error; never raises (the other sections still run)."""
    if check.left_s() <= 0:
        progress(f"[{name}] skipped: the {check.budget_s:.0f} s budget is spent")
        return {
            "ok": False,
            "skipped": f"budget of {check.budget_s:.0f} s spent after {check.elapsed_s():.0f} s",
        }
    progress(f"[{name}] start ({check.left_s():.0f} s of the budget left)")
    t0 = time.perf_counter()
    try:
        res = {"ok": True, **fn(check)}
    except Exception as exc:
        res = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc().strip().splitlines()[-8:],
        }
    res["section_s"] = time.perf_counter() - t0
    free_device_memory(check.device)
    progress(f"[{name}] {'ok' if res['ok'] else 'FAILED: ' + res['error']} in {res['section_s']:.1f} s")
    return res


def run_check(device: str, *, tiny: bool, budget_s: float) -> dict[str, Any]:
    """Every section on `device` (already checked), as one JSON-ready dict."""
    from benchmarks.run import provenance

    dev = torch.device(device)
    check = Check(dev, tiny, budget_s)
    prov = provenance()
    prov["command"] = " ".join(
        [os.path.basename(sys.executable), "-m", "benchmarks.gpu_check", *sys.argv[1:]]
    )
    for name, fn in SECTIONS.items():
        check.results[name] = run_section(check, name, fn)
    return {
        "check": "gpu_check",
        "device": dev.type,
        "device_name": device_label(dev),
        "tiny": tiny,
        "budget_s": budget_s,
        "wall_s": check.elapsed_s(),
        "provenance": prov,
        "failed_sections": [n for n, r in check.results.items() if not r["ok"] and "skipped" not in r],
        "skipped_sections": [n for n, r in check.results.items() if "skipped" in r],
        **check.results,
    }


def _jsonable(x: Any) -> Any:
    """numpy scalars as numbers; anything else json cannot write (paths) as its text."""
    return x.item() if isinstance(x, np.generic) else str(x)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default; cuda:N) or cpu")
    p.add_argument(
        "--tiny", action="store_true", help="tiny shapes: a smoke run of every section (the CPU test)"
    )
    p.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="no section starts after this many s"
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    args = p.parse_args(argv)
    why = cuda_unavailable(args.device)
    if why:
        print(f"gpu_check: {why}", file=sys.stderr)
        return EXIT_USAGE
    result = run_check(args.device, tiny=args.tiny, budget_s=args.budget_s)
    text = json.dumps(result, default=_jsonable)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text, flush=True)
    return EXIT_OK if not result["failed_sections"] and not result["skipped_sections"] else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
