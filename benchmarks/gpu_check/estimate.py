"""Section 5, `estimate`: device-hours of a sweep file (sweeps/full.yaml) from the measured parts.

The grid is the harness's own: the sweep file goes through `harness.spec.load_spec` (its datasets are not
opened: the categories' image counts come from benchmarks/dataset_sizes.csv), every method's grid points
are the spec's validated points, every (ratio, overlap, seed) is a `harness.cells.split_rules` rule, and
each cell's pool and test sizes are what that rule gives the category (`SplitRule.amounts`). FUN-AD's
iterations per epoch are `FunAD.batches`. Only the seconds are this module's: a FUN-AD iteration as fixed +
pool-proportional seconds (measured at one pool), the one-pass methods' fit and score scaled from one
measured cell.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check.check import BANK_EVERY, GPU_MODES, TARGET_GPU_HOURS, Check, progress
from benchmarks.gpu_check.device import REPO, free_device_memory, peak_memory_mb, reset_peak_memory
from benchmarks.irmb_bench import MIN_LABEL_AGREEMENT
from funad.data.contamination import Amounts, CategoryCounts, SplitRule
from funad.methods import MethodSettings

FULL_YAML = REPO / "sweeps" / "full.yaml"
DATASET_SIZES = REPO / "benchmarks" / "dataset_sizes.csv"
#: the cell groups listed as dominating the FUN-AD total
TOP_GROUPS = 10


def read_sizes(path: Path = DATASET_SIZES) -> dict[tuple[str, str], CategoryCounts]:
    """(dataset, category) -> image counts; a malformed row is an error naming the file and line."""
    out: dict[tuple[str, str], CategoryCounts] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                counts = [int(row[k]) for k in ("train_normal", "test_normal", "test_anomalous")]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{path}:{line}: need integer train_normal, test_normal, test_anomalous"
                ) from exc
            out[(row["dataset"], row["category"])] = CategoryCounts(*counts)
    return out


@contextmanager
def placeholder_roots(path: Path) -> Iterator[None]:
    """Unset dataset root variables (MVTEC_ROOT, ...) point at an empty folder while the sweep file is
    validated: the estimate opens no dataset, it only needs the file to pass the harness's checks."""
    import re

    with tempfile.TemporaryDirectory(prefix="gpu-check-roots-") as empty:
        saved = dict(os.environ)
        text = path.read_text() if path.is_file() else ""
        for var in set(re.findall(r"\$\{(\w+)", text)) - set(os.environ):
            os.environ[var] = empty
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def load_sweep(path: Path = FULL_YAML) -> Any:
    """The sweep file as the harness validates it (`check_data=False`: no dataset is opened)."""
    from harness.spec import load_spec

    with placeholder_roots(path):
        return load_spec(path, check_data=False)


@dataclass(frozen=True)
class GridCell:
    """One cell of the grid, as the estimate needs it: method, settings, category, rule, sizes."""

    method: str
    settings: MethodSettings
    dataset: str
    category: str
    seed: int
    rule: SplitRule
    amounts: Amounts


def grid_cells(spec: Any, sizes: dict[tuple[str, str], CategoryCounts]) -> list[GridCell]:
    """Every cell of the sweep (the harness's grid: categories x method points x split rules x seeds)
    with the pool and test sizes its split rule gives the category."""
    from harness.cells import split_rules

    points = spec.method_points()
    cells: list[GridCell] = []
    for ds in spec.datasets:
        known = {cat: counts for (kind, cat), counts in sizes.items() if kind == ds.kind}
        names = list(known) if ds.categories == "all" else list(ds.categories)
        missing = [n for n in names if n not in known]
        if not known or missing:
            raise ValueError(f"dataset {ds.kind!r} categories {missing or names} have no counts in sizes")
        rules = split_rules(spec, ds.kind)
        for category in names:
            for method, method_points in points.items():
                for point in method_points:
                    for rule, seed in rules:
                        amounts = rule.amounts(known[category])
                        cells.append(GridCell(method, point.settings, ds.kind, category, seed, rule, amounts))
    return cells


@dataclass(frozen=True)
class LinearCost:
    """Seconds of one iteration at pool N: fixed_s + pool_s * N / ref_pool."""

    fixed_s: float
    pool_s: float
    ref_pool: int

    def at(self, pool: int) -> float:
        return self.fixed_s + self.pool_s * pool / self.ref_pool


@dataclass(frozen=True)
class FunADCost:
    """A FUN-AD configuration's iterations: one that rebuilds the bank, and (bank_every > 1) one that
    does not."""

    rebuild: LinearCost
    reuse: LinearCost | None = None

    def iter_s(self, pool: int, bank_every: int = 1) -> float:
        """Mean seconds per iteration: a rebuild every bank_every iterations."""
        if bank_every == 1:
            return self.rebuild.at(pool)
        if self.reuse is None:
            raise ValueError("bank_every > 1 needs the cost of an iteration without a rebuild")
        return (self.rebuild.at(pool) + (bank_every - 1) * self.reuse.at(pool)) / bank_every


def funad_cell_s(cost: FunADCost, cell: GridCell, bank_every: int | None = None) -> float:
    """Training seconds of one FUN-AD cell: epochs x batches per epoch x seconds per iteration."""
    from funad.methods.funad import FunAD

    s = cell.settings
    _, batches = FunAD.batches(s, cell.amounts.pool)  # type: ignore[arg-type]
    return s.epochs * batches * cost.iter_s(cell.amounts.pool, bank_every or s.bank_every)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CellCost:
    """A method's measured cell (fit + score at ref_pool / ref_test images), scaled to other sizes:
    fit ~ pool^fit_exponent, score ~ pool x test (every test patch searched against a pool-sized memory)."""

    fit_s: float
    score_s: float
    ref_pool: int
    ref_test: int
    fit_exponent: float

    def at(self, pool: int, test: int) -> float:
        p = pool / self.ref_pool
        return self.fit_s * p**self.fit_exponent + self.score_s * p * test / self.ref_test


#: how each method's fit grows with the pool (its score: pool x test, see CellCost)
FIT_SCALING: dict[str, tuple[float, str]] = {
    "patchcore": (
        2.0,
        "greedy coreset: coreset_ratio x pool patches picks, each a pass over the pool's patches",
    ),
    "softpatch": (2.0, "LOF among the pool's images at every position, and PatchCore's greedy coreset"),
    "inreach": (1.0, "association: assoc_depth seeds x the pool's images, one P x P block per pair"),
}


def _group(cell: GridCell) -> str:
    amount = f"ratio {cell.rule.ratio:g}" if cell.rule.ratio is not None else f"count {cell.rule.count}"
    return f"{cell.dataset}/{cell.category} {amount}"


def gpu_hours(
    cells: Sequence[GridCell],
    funad: dict[str, FunADCost],
    others: dict[str, CellCost],
    images: int,
    images_per_s: float | None = None,
    bank_every: Sequence[int] = BANK_EVERY,
) -> dict[str, Any]:
    """Device-hours of every cell (one trial on the device at a time), per method (a measured method the
    sweep file does not hold: as if it held it with one grid point); FUN-AD per
    configuration in `funad` and, where its reuse cost is known, with each bank_every; the groups of
    cells (dataset/category ratio) that dominate FUN-AD's total; the features stage (`images` once
    through the backbone) at images_per_s."""
    fun = [c for c in cells if c.method == "funad"]
    out: dict[str, Any] = {"funad": None, "funad_bank_every": {}, "methods": {}, "funad_dominant": None}
    if fun and funad:
        out["funad"] = {mode: sum(funad_cell_s(cost, c) for c in fun) / 3600 for mode, cost in funad.items()}
        out["funad_bank_every"] = {
            mode: {str(k): sum(funad_cell_s(cost, c, k) for c in fun) / 3600 for k in bank_every}
            for mode, cost in funad.items()
            if cost.reuse is not None
        }
        mode, cost = next(iter(funad.items()))
        by_group: dict[str, float] = defaultdict(float)
        for c in fun:
            by_group[_group(c)] += funad_cell_s(cost, c) / 3600
        total = sum(by_group.values())
        top = sorted(by_group.items(), key=lambda kv: -kv[1])[:TOP_GROUPS]
        out["funad_dominant"] = {
            "mode": mode,
            "groups": [{"cells": g, "gpu_hours": h, "share": h / total} for g, h in top],
            "top_share": sum(h for _, h in top) / total,
        }
    # a measured method the sweep file does not hold is estimated as one more method of it (one grid point
    # in every category x split rule x seed)
    one_point = list({(c.dataset, c.category, c.rule, c.seed): c for c in cells}.values())
    in_grid = {c.method for c in cells}
    for method, cost in others.items():
        of_method = [c for c in cells if c.method == method] if method in in_grid else one_point
        out["methods"][method] = sum(cost.at(c.amounts.pool, c.amounts.test) for c in of_method) / 3600
    out["features"] = None if not images_per_s else images / images_per_s / 3600
    out["cells"] = dict(Counter(c.method for c in cells))
    return out


def method_feature_sets(check: Check, method: str) -> tuple[Any, Any]:
    """(train, test) FeatureSets at the section's shapes: irmb_bench.synthetic_features, or for InReaCh the
    InReaCh benchmark's structured features (channels must form and survive its spread trim)."""
    from funad.features import FeatureSet

    sh = check.shapes
    n = sh.pool + sh.test
    if method == "inreach":
        from benchmarks.inreach_bench import structured_features

        fs = structured_features(n, sh.grid, sh.channels, 0)
    else:
        cls, pat, labels = check.host_features()
        fs = FeatureSet(
            [f"img{i}" for i in range(n)],
            cls.numpy(),
            pat.numpy().reshape(n, sh.grid, sh.grid, sh.channels),
            labels.numpy().astype(np.int8),
        )
    return fs.subset(np.arange(sh.pool)), fs.subset(np.arange(sh.pool, n))


def measure_cell(check: Check, method: str) -> dict[str, Any]:
    """fit + score of one cell with the method's default settings on the device, synchronised."""
    from funad.methods import create_method
    from funad.methods.base import FitContext

    train, test = method_feature_sets(check, method)
    m = create_method(method, {})
    ctx = FitContext(seed=0, device=str(check.device), map_size=check.shapes.map_size)
    reset_peak_memory(check.device)
    check.sync()
    t0 = time.perf_counter()
    m.fit(train, ctx)
    check.sync()
    t1 = time.perf_counter()
    m.score(test, ctx)
    check.sync()
    t2 = time.perf_counter()
    exponent, why = FIT_SCALING[method]
    return {
        "fit_s": t1 - t0,
        "score_s": t2 - t1,
        "pool": train.n,
        "test": test.n,
        "fit_exponent": exponent,
        "fit_rule": why,
        "peak_memory_mb": peak_memory_mb(check.device),
    }


def _funad_costs(funad: dict[str, Any]) -> dict[str, FunADCost]:
    reuse = {m: LinearCost(**r["reuse_cost_model"]) for m, r in funad.get("bank_every", {}).items()}
    return {m: FunADCost(LinearCost(**r["cost_model"]), reuse.get(m)) for m, r in funad["modes"].items()}


def _agreement_of(funad: dict[str, Any], mode: str) -> float:
    """Pseudo-label agreement of a configuration's search precision with fp32 (1 for fp32 itself)."""
    precision = GPU_MODES[mode][0]
    return 1.0 if precision == "fp32" else float(funad["agreement"][precision]["label_agreement"])


def recommend(totals: dict[str, float], funad: dict[str, Any]) -> dict[str, Any]:
    """The cheapest FUN-AD configuration whose pseudo-labels agree with fp32's (MIN_LABEL_AGREEMENT)."""
    ok = {m: t for m, t in totals.items() if _agreement_of(funad, m) >= MIN_LABEL_AGREEMENT}
    mode = min(ok, key=ok.__getitem__)
    precision, extra = GPU_MODES[mode]
    return {
        "mode": mode,
        "funad_settings": {
            "precision": precision,
            "train_precision": extra.get("train_precision", "fp32"),
            "bank_every": 1,
        },
        "total_gpu_hours": ok[mode],
        "target_gpu_hours": TARGET_GPU_HOURS,
        "meets_target": ok[mode] <= TARGET_GPU_HOURS,
        "label_agreement": _agreement_of(funad, mode),
        "why": (
            "the lowest total among configurations whose pseudo-labels agree with fp32's "
            f">= {MIN_LABEL_AGREEMENT}; "
            "bank_every stays 1 (it changes the method: a stale bank between rebuilds)"
        ),
    }


def section_estimate(check: Check) -> dict[str, Any]:
    spec = load_sweep()
    sizes = read_sizes()
    cells = grid_cells(spec, sizes)
    measured: dict[str, Any] = {}
    costs: dict[str, CellCost] = {}
    for method in FIT_SCALING:
        try:
            measured[method] = measure_cell(check, method)
        except Exception as exc:  # one method's failure leaves the others' estimate
            measured[method] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        r = measured[method]
        costs[method] = CellCost(r["fit_s"], r["score_s"], r["pool"], r["test"], r["fit_exponent"])
        progress(f"  {method} cell: fit {r['fit_s']:.2f} s, score {r['score_s']:.2f} s")
        free_device_memory(check.device)
    funad = check.results.get("funad", {})
    feats = check.results.get("features", {})
    fun_costs = _funad_costs(funad) if funad.get("ok") else {}
    categories = {(c.dataset, c.category) for c in cells}
    images = sum(sizes[k].train_normal + sizes[k].test_normal + sizes[k].test_anomalous for k in categories)
    hours = gpu_hours(cells, fun_costs, costs, images, feats.get("images_per_s") if feats.get("ok") else None)
    in_file = list(spec.concrete_methods())
    others = [m for m in in_file if m != "funad"]
    totals: dict[str, float] | None = None
    if hours["funad"] is not None and all(m in hours["methods"] for m in others):
        rest = sum(hours["methods"][m] for m in others) + (hours["features"] or 0.0)
        totals = {mode: h + rest for mode, h in hours["funad"].items()}
    pools = [c.amounts.pool for c in cells]
    tests = [c.amounts.test for c in cells]
    points = spec.method_points()
    return {
        "grid": {
            "spec": str(FULL_YAML.relative_to(REPO)),
            "categories": len(categories),
            "datasets": dict(Counter(d for d, _ in categories)),
            "ratios": list(spec.contamination.ratios or []),
            "seeds": len(spec.seeds),
            "methods": {m: len(p) for m, p in points.items()},
            "funad_epochs": [p.settings.epochs for p in points.get("funad", [])],
            "cells": hours["cells"],
            "pool_images": {"min": min(pools), "max": max(pools)},
            "test_images": {"min": min(tests), "max": max(tests)},
        },
        "measured_cells": measured,
        "gpu_hours": {"features": hours["features"], "funad": hours["funad"], **hours["methods"]},
        "in_full_yaml": in_file,
        "total_gpu_hours": totals,
        "funad_dominant_cells": hours["funad_dominant"],
        "bank_every_gpu_hours": hours["funad_bank_every"],
        "bank_every_saving_gpu_hours": {
            mode: {k: hours["funad"][mode] - h for k, h in per.items()}
            for mode, per in hours["funad_bank_every"].items()
        },
        "recommended": recommend(totals, funad) if totals else None,
        "rules": {
            "grid": "the harness's own: load_spec + method points + split_rules; each cell's pool and test "
            "sizes are SplitRule.amounts of the category's counts (benchmarks/dataset_sizes.csv)",
            "funad": "epochs x FunAD.batches(pool) iterations; an iteration = fixed (training step, pair "
            "search) + pool-proportional (pool scoring, bank search: its share of the fused search by "
            "executed FLOPs) seconds, measured at the bottle pool and scaled linearly; "
            "bank_every k: (rebuild + (k-1) reuse) / k",
            **{m: f"fit ~ pool^{e:g} ({why}); score ~ pool x test" for m, (e, why) in FIT_SCALING.items()},
            "features": "every image of the grid's categories once through the backbone at the "
            "measured images/s",
            "total": "features + FUN-AD (per configuration) + the other methods of the sweep file; one trial "
            "on the device at a time (two trials per GPU overlap only where one leaves it idle)",
        },
    }
