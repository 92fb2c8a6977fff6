"""bf16 effect on real cells: FUN-AD metrics and fit time, fp32 vs bf16, on the built-in synthetic set.

Usage: HF_HUB_OFFLINE=1 python -m benchmarks.bf16_effect [--epochs 30] [--categories brick grass gravel]
Each category runs the same cell (ratio 0.1, no-overlap, seed 0, bundled Lite0 features) three ways:
fp32; `precision: bf16` (pool scoring and search in bf16, exact fp32 re-rank); and that plus
`train_precision: bf16`. It prints one line per cell and, last, a JSON object with every metric and the
differences to fp32. The figures are for RESULTS.md; nothing here is tuned.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from funad.data.synthetic import CATEGORIES, ensure_generated
from funad.run import CellConfig, run_cell
from rundir import EXIT_OK

VARIANTS: dict[str, dict[str, str]] = {
    "fp32": {},
    "bf16_search": {"precision": "bf16"},
    "bf16_all": {"precision": "bf16", "train_precision": "bf16"},
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--categories", nargs="*", default=sorted(CATEGORIES))
    ap.add_argument("--workdir", type=Path, default=None, help="data and feature cache (default: a temp dir)")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="funad-bf16-"))
    root = ensure_generated(work / "data")
    out: dict[str, Any] = {"epochs": args.epochs, "ratio": args.ratio, "cells": []}
    for cat in args.categories:
        for name, params in VARIANTS.items():
            cfg = CellConfig.build(
                dataset={"kind": "synthetic", "root": str(root)},
                category=cat,
                backbone={"name": "tf_efficientnet_lite0", "weights": "bundled", "border_context": True},
                method="funad",
                settings={"epochs": args.epochs, **params},
                split={"ratio": args.ratio},
                seed=0,
            )
            t0 = time.perf_counter()
            res = run_cell(cfg, feature_cache=work / "features")
            row = {
                "category": cat,
                "variant": name,
                **{m: float(res.metrics[m]) for m in METRICS},
                "fit_s": float(res.timings.get("fit_s", float("nan"))),
                "wall_s": time.perf_counter() - t0,
            }
            out["cells"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    base = {c["category"]: c for c in out["cells"] if c["variant"] == "fp32"}
    out["delta_vs_fp32"] = [
        {
            "category": c["category"],
            "variant": c["variant"],
            **{m: c[m] - base[c["category"]][m] for m in METRICS},
            "fit_time_ratio": c["fit_s"] / base[c["category"]]["fit_s"],
        }
        for c in out["cells"]
        if c["variant"] != "fp32"
    ]
    print(json.dumps(out))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
