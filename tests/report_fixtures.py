"""Realistic run directories for the report tests, written with pyarrow exactly as docs/contract.md describes.

Kept independent of harness/ so report tests run (and fail) on the report alone.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

EVIL = "<script>alert(1)</script>"
METRICS = ["image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max"]
DIAGS = ["diag_candidates", "diag_bank_images", "diag_pos_frac", "diag_pl_precision"]
HPS = ["hp_keep_ratio", "hp_tau_n", "hp_coreset_ratio"]


def result_schema() -> pa.Schema:
    """One explicit schema for every results file (docs/contract.md's rule)."""
    f = pa.field
    return pa.schema(
        [
            f("run", pa.string()),
            f("cell_id", pa.string()),
            f("dataset", pa.string()),
            f("category", pa.string()),
            f("method", pa.string()),
            f("backbone", pa.string()),
            f("ratio", pa.float64()),
            f("achieved_ratio", pa.float64()),
            f("overlap", pa.bool_()),
            f("seed", pa.int64()),
            f("params", pa.string()),
            *[f(h, pa.float64()) for h in HPS],
            f("n_train_normal", pa.int64()),
            f("n_injected", pa.int64()),
            f("n_test_normal", pa.int64()),
            f("n_test_anomalous", pa.int64()),
            f("injected_ids", pa.list_(pa.string())),
            *[f(m, pa.float64()) for m in METRICS],
            f("oracle_image_auroc", pa.float64()),
            f("oracle_pixel_auroc", pa.float64()),
            f("oracle_epoch", pa.int64()),
            f("status", pa.string()),
            f("error", pa.string()),
            f("attempt", pa.int64()),
            f("feature_s", pa.float64()),
            f("fit_s", pa.float64()),
            f("eval_s", pa.float64()),
            f("wall_s", pa.float64()),
            f("peak_rss_mb", pa.float64()),
            f("peak_gpu_mb", pa.float64()),
            f("device", pa.string()),
            f("node", pa.string()),
            f("git_commit", pa.string()),
            f("versions", pa.string()),
            f("started_at", pa.timestamp("us", tz="UTC")),
            f("finished_at", pa.timestamp("us", tz="UTC")),
            *[f(d, pa.float64()) for d in DIAGS],
        ]
    )


def history_schema() -> pa.Schema:
    """Schema of history/*.parquet (docs/interfaces.md)."""
    f = pa.field
    return pa.schema(
        [
            f("cell_id", pa.string()),
            f("method", pa.string()),
            f("epoch", pa.int64()),
            f("iteration", pa.int64()),
            f("loss", pa.float64()),
            f("loss_bce", pa.float64()),
            f("loss_ms", pa.float64()),
            *[f(d, pa.float64()) for d in DIAGS],
            f("eval_image_auroc", pa.float64()),
            f("eval_pixel_auroc", pa.float64()),
        ]
    )


def maps_schema() -> pa.Schema:
    """Schema of maps/*.parquet (docs/interfaces.md)."""
    f = pa.field
    return pa.schema(
        [
            f("cell_id", pa.string()),
            f("image_id", pa.string()),
            f("pick", pa.string()),
            f("label", pa.int8()),
            f("score", pa.float64()),
            f("image_png", pa.binary()),
            f("map_png", pa.binary()),
            f("mask_png", pa.binary()),
        ]
    )


@dataclass
class RunSpec:
    """What the fixture run contains."""

    name: str = "fixture"
    dataset: str = "synthetic"
    categories: list[str] = field(default_factory=lambda: ["brick", "grass", EVIL])
    # method -> list of hp dicts (one per swept configuration)
    methods: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {
            "funad": [{"hp_keep_ratio": 0.25}, {"hp_keep_ratio": 0.5}],
            "patchcore": [{}],
            "softpatch": [{}],
        }
    )
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.1])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    overlap: bool = False
    # (method, category, ratio, seed, hp) of the cell that fails
    failed: tuple | None = ("funad", "grass", 0.1, 1, {"hp_keep_ratio": 0.5})
    device: str = "cpu"
    extra_grid_ratio: float | None = 0.2  # in sweep.yaml but never run -> "missing cells"
    maps: bool = True
    history: bool = True
    plan: bool = True  # write plan.parquet (runs made before it existed have none)


def _write_plan(run: Path, spec: RunSpec, ratios: list[float]) -> None:
    """plan.parquet: every cell of the grid, the never-run extra ratio included."""
    from rundir import PLAN_FIELDS

    schema = pa.schema([*PLAN_FIELDS, *[pa.field(h, pa.float64()) for h in HPS]])
    rows = []
    for method, configs in spec.methods.items():
        for hp in configs:
            for category in spec.categories:
                for ratio in ratios:
                    for seed in spec.seeds:
                        row: dict = {c.name: None for c in schema}
                        row.update(
                            cell_id=_cell_id(spec.dataset, category, method, sorted(hp.items()), ratio, seed),
                            dataset=spec.dataset,
                            category=category,
                            method=method,
                            backbone="tf_efficientnet_lite0",
                            ratio=ratio,
                            overlap=spec.overlap,
                            seed=seed,
                            params=json.dumps({k2[3:]: v for k2, v in hp.items()}),
                            shortfall="cap",
                            **{h: hp.get(h) for h in HPS},
                        )
                        if method == "patchcore":
                            row["hp_coreset_ratio"] = 0.1
                        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), run / "plan.parquet")


def _cell_id(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _map_rows(cell_id: str, rng: np.random.Generator, size: int = 48) -> list[dict]:
    rows = []
    yy, xx = np.mgrid[0:size, 0:size]
    for pick, label in (("best", 1), ("median", 1), ("worst", 0)):
        img = (rng.random((size, size, 3)) * 60 + np.array([120, 90, 60])).astype(np.uint8)
        cy, cx, r = rng.integers(12, size - 12), rng.integers(12, size - 12), 7
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
        heat = (255 * (0.15 * rng.random((size, size)) + 0.85 * heat)).clip(0, 255).astype(np.uint8)
        mask = _png((blob * 255).astype(np.uint8)) if label else None
        rows.append(
            {
                "cell_id": cell_id,
                "image_id": f"{pick}_{cell_id[:4]}.png",
                "pick": pick,
                "label": label,
                "score": float(rng.random()),
                "image_png": _png(img),
                "map_png": _png(heat),
                "mask_png": mask,
            }
        )
    return rows


def make_run_dir(root: Path, spec: RunSpec | None = None, junk: bool = False) -> Path:
    """Write a run directory under ``root``; return its path.

    Metrics follow ``base - 0.6 * ratio + noise`` per method, so tests can see real structure; all values are
    read back by the tests from Parquet (they never rely on these formulas).
    """
    spec = spec or RunSpec()
    run = Path(root) / spec.name
    for sub in ("results", "scores", "history", "maps"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    base = {"funad": 0.95, "patchcore": 0.93, "softpatch": 0.94, "inreach": 0.9}
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    versions = json.dumps(
        {
            "python": "3.11.9",
            "torch": "2.14.1",
            "timm": "1.0.31",
            "faiss": "1.15.1",
            "ray": "2.60.0",
            "<b>evil</b>": EVIL,
        }
    )
    schema, hschema, mschema = result_schema(), history_schema(), maps_schema()
    k = 0
    for method, configs in spec.methods.items():
        for hp in configs:
            for category in spec.categories:
                for ratio in spec.ratios:
                    for seed in spec.seeds:
                        k += 1
                        cid = _cell_id(spec.dataset, category, method, sorted(hp.items()), ratio, seed)
                        rng = np.random.default_rng(int(cid[:8], 16))
                        failed = (
                            spec.failed is not None and (method, category, ratio, seed, hp) == spec.failed
                        )
                        row: dict = {c.name: None for c in schema}
                        n_train = 40
                        n_inj = int(np.floor(ratio * n_train))
                        row.update(
                            run=spec.name,
                            cell_id=cid,
                            dataset=spec.dataset,
                            category=category,
                            method=method,
                            backbone="tf_efficientnet_lite0",
                            ratio=ratio,
                            achieved_ratio=n_inj / n_train,
                            overlap=spec.overlap,
                            seed=seed,
                            params=json.dumps({k2[3:]: v for k2, v in hp.items()}),
                            n_train_normal=n_train,
                            n_injected=n_inj,
                            n_test_normal=20,
                            n_test_anomalous=20 - (0 if spec.overlap else n_inj),
                            injected_ids=[f"{category}/test/bad/{i:03d}.png" for i in range(n_inj)],
                            status="failed" if failed else "ok",
                            attempt=1 if failed else 0,
                            feature_s=float(rng.uniform(1, 2)),
                            fit_s=float(rng.uniform(2, 9)),
                            eval_s=float(rng.uniform(0.5, 1)),
                            peak_rss_mb=float(rng.uniform(800, 1500)),
                            peak_gpu_mb=float(rng.uniform(2000, 4000)) if spec.device != "cpu" else None,
                            device=spec.device,
                            node="node-1",
                            git_commit="abc1234",
                            versions=versions,
                            started_at=t0 + timedelta(seconds=30 * k),
                            finished_at=t0 + timedelta(seconds=30 * k + 12),
                        )
                        for h in HPS:
                            row[h] = hp.get(h)
                        if method == "patchcore":
                            row["hp_coreset_ratio"] = 0.1  # a setting with one value: not "swept"
                        row["wall_s"] = row["feature_s"] + row["fit_s"] + row["eval_s"]
                        if failed:
                            row["error"] = (
                                "RuntimeError: CUDA out of memory " + EVIL + "\nTraceback (most recent "
                                'call last):\n  File "funad/methods/funad.py", line 88, in fit\n'
                            )
                        else:
                            shift = hp.get("hp_keep_ratio", 0.0) * 0.04
                            for m in METRICS:
                                row[m] = float(
                                    np.clip(
                                        base[method]
                                        + shift
                                        - 0.6 * ratio
                                        + rng.normal(0, 0.02)
                                        - (0.1 if "ap" in m else 0),
                                        0,
                                        1,
                                    )
                                )
                            if method == "funad":
                                row["oracle_image_auroc"] = min(1.0, row["image_auroc"] + 0.01)
                                row["oracle_pixel_auroc"] = min(1.0, row["pixel_auroc"] + 0.005)
                                row["oracle_epoch"] = 3
                                row["diag_candidates"] = float(rng.integers(5, 30))
                                row["diag_pl_precision"] = float(rng.uniform(0.5, 1))
                        pq.write_table(
                            pa.Table.from_pylist([row], schema=schema), run / "results" / f"{cid}.parquet"
                        )
                        if failed:
                            continue
                        labels = rng.integers(0, 2, 10)
                        pq.write_table(
                            pa.table(
                                {
                                    "cell_id": [cid] * 10,
                                    "image_id": [f"i{j}" for j in range(10)],
                                    "label": labels.astype(np.int8),
                                    "score": rng.random(10),
                                }
                            ),
                            run / "scores" / f"{cid}.parquet",
                        )
                        if spec.history and method == "funad":
                            hist = []
                            for ep in range(5):
                                hist.append(
                                    {
                                        "cell_id": cid,
                                        "method": method,
                                        "epoch": ep,
                                        "iteration": ep * 10,
                                        "loss": float(1 / (ep + 1) + ratio),
                                        "loss_bce": 0.6 / (ep + 1),
                                        "loss_ms": 0.4 / (ep + 1) + ratio,
                                        "diag_candidates": float(5 + ep * 4 + 10 * ratio),
                                        "diag_bank_images": 40.0,
                                        "diag_pos_frac": 0.1,
                                        "diag_pl_precision": float(0.6 + 0.07 * ep - ratio),
                                        "eval_image_auroc": None,
                                        "eval_pixel_auroc": None,
                                    }
                                )
                            pq.write_table(
                                pa.Table.from_pylist(hist, schema=hschema), run / "history" / f"{cid}.parquet"
                            )
                        if spec.maps and seed == spec.seeds[0]:
                            pq.write_table(
                                pa.Table.from_pylist(_map_rows(cid, rng), schema=mschema),
                                run / "maps" / f"{cid}.parquet",
                            )
    ratios = list(spec.ratios) + ([spec.extra_grid_ratio] if spec.extra_grid_ratio is not None else [])
    if spec.plan:
        _write_plan(run, spec, ratios)
    methods_yaml: dict = {}
    for method, configs in spec.methods.items():
        settings: dict = {}
        keys = sorted({h for c in configs for h in c})
        for h in keys:
            vals = sorted({c[h] for c in configs if h in c})
            settings[h[3:]] = vals if len(vals) > 1 else vals[0]
        if method == "patchcore":
            settings["coreset_ratio"] = 0.1
        methods_yaml[method] = settings
    sweep = {
        "name": spec.name,
        "storage": str(root),
        "ray": {"address": None, "dashboard": True},
        "resources": {"cpu": 1, "gpu": 0.5 if spec.device != "cpu" else 0},
        "datasets": [{"kind": spec.dataset, "categories": list(spec.categories)}],
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 256, "crop": 224},
        "contamination": {"ratios": ratios, "overlap": spec.overlap, "shortfall": "cap"},
        "seeds": list(spec.seeds),
        "methods": methods_yaml,
        "report": True,
        "note": "</pre><script>alert(2)</script>",
    }
    (run / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    if junk:
        (run / "results" / "deadbeef.parquet.tmp123").write_bytes(b"partial write")
        (run / "results" / "broken.parquet").write_bytes(b"not a parquet file at all")
    return run
