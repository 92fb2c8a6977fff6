"""Result tables of a run, computed from the result rows only.

Aggregation (docs/protocol.md, "Reporting rules"):

* a *cell group* is (dataset, method, config, overlap, ratio, count); ``config`` names the method's swept
  settings (``hp_*`` columns with more than one value for that method) and the backbone when a run has
  several, so different settings are never averaged together;
* per category: the mean over seeds;
* dataset value: the arithmetic mean over categories of those per-category means;
* std: the sample std (ddof=1) over seeds of the *per-seed* category means (for each seed, the mean over the
  categories that seed has), i.e. seed-to-seed spread of the dataset number; ``n`` = number of seeds;
  ``n_categories`` = categories that contributed. A single seed gives std = NaN (shown as "–").

Headline metrics are the last-epoch ones. ``oracle_*`` (best epoch chosen on the test set) live only in
:func:`oracle_table`, whose headers say so. The tables hold numbers (metrics in [0, 1]); their display text
is reports.format's.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from reports.load import METRICS, ORACLE, hp_columns, parse_versions
from rundir import HP_PREFIX, PROTOCOL_DEFAULTS

#: a cell group: rows that differ in any of these are never averaged together (the contamination source
#: and ratio definition included: papers mean different things by "10 % noise", docs/protocol.md)
KEYS: list[str] = [
    "dataset", "method", "config", "overlap", "contamination_source", "ratio_of", "pool_order", "ratio",
    "count",
]
#: `settings_as`: whether a cell ran its method as the paper describes it or as its authors released it
#: (the row's params say reference_quirks: true); a (method, config) variant is one or the other, since
#: rows that disagree on it carry it in their config label (`differing_settings`)
SETTINGS_AS = ("paper", "released")


def settings_of(ok: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(method, config) -> "paper" | "released" (| "mixed" for rows of older runs that do not say)."""
    out: dict[tuple[str, str], str] = {}
    if ok.empty:
        return out
    for (method, config), values in ok.groupby(["method", "config"], dropna=False)["settings_as"]:
        kinds = sorted(set(values.astype(str)))
        out[(str(method), str(config))] = kinds[0] if len(kinds) == 1 else "mixed"
    return out
ORACLE_LABEL = "oracle (best-on-test epoch)"
#: what identifies one cell of a variant; a report over several runs adds `split_id` (reports.join), so
#: cells that trained and tested on different images are never averaged or paired as one
CELL_KEY: list[str] = ["category", "seed"]


def cell_key(df: pd.DataFrame) -> list[str]:
    """The cell key of these rows: category and seed, plus the split id where runs were joined."""
    return CELL_KEY + (["split_id"] if "split_id" in df.columns else [])
MISSING_COLUMNS: list[str] = ["cell_id", "dataset", "category", "method", "config", "ratio", "seed"]


def _fmt_value(v: Any) -> str:
    """Compact text for a setting value (0.5 not 0.500000)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def swept_settings(ok: pd.DataFrame) -> dict[str, list[str]]:
    """Per method: the hp_* columns that take more than one value among its rows (the swept settings)."""
    out: dict[str, list[str]] = {}
    for method, rows in ok.groupby("method", dropna=False):
        out[str(method)] = [c for c in hp_columns(rows) if rows[c].dropna().astype(str).nunique() > 1]
    return out


def parsed_params(df: pd.DataFrame) -> pd.Series:
    """Each row's settings (its `params` JSON) as a dict; {} where a row has none (a failed row)."""
    def parse(v: Any) -> dict[str, Any]:
        try:
            out = json.loads(v) if isinstance(v, str) and v else {}
        except json.JSONDecodeError:
            return {}
        return out if isinstance(out, dict) else {}

    col = df["params"] if "params" in df.columns else pd.Series([None] * len(df), index=df.index)
    return col.map(parse)


def differing_settings(ok: pd.DataFrame, swept: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per method: the settings its rows' params disagree on that no swept hp_* column names (a fixed
    setting changed between two invocations, or between runs joined in one report): they join the config
    label, so cells that ran other settings are never averaged as one."""
    params = parsed_params(ok)
    out: dict[str, list[str]] = {}
    for method, idx in ok.groupby("method", dropna=False).groups.items():
        covered = {c.removeprefix(HP_PREFIX) for c in swept.get(str(method), [])}
        values: dict[str, set[str]] = {}
        for p in params.loc[idx]:
            for k, v in p.items():
                values.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
        out[str(method)] = sorted(k for k, v in values.items() if len(v) > 1 and k not in covered)
    return out


def _config_labels(
    df: pd.DataFrame, swept: dict[str, list[str]], differing: dict[str, list[str]]
) -> pd.Series:
    """Each row's ``config``: its values of its method's swept settings (then of the settings its rows
    otherwise disagree on), and the backbone when the rows use several."""
    multi_backbone = df["backbone"].dropna().nunique() > 1
    params = parsed_params(df)

    def label(row: pd.Series) -> str:
        parts = [
            f"{c.removeprefix(HP_PREFIX)}={_fmt_value(row[c])}"
            for c in swept.get(str(row["method"]), [])
            if pd.notna(row[c])
        ]
        own = params.loc[row.name]
        parts += [f"{k}={_fmt_value(own[k])}" for k in differing.get(str(row["method"]), []) if k in own]
        if multi_backbone and pd.notna(row["backbone"]):
            parts.insert(0, str(row["backbone"]))
        return ", ".join(parts)

    return df.apply(label, axis=1)


def prepare(results: pd.DataFrame) -> pd.DataFrame:
    """Add the derived key columns ``config``, ``settings_as`` and ``count`` to result rows (all statuses)."""
    df = results.copy()
    if df.empty:
        for c in ("config", "settings_as", "count"):
            df[c] = pd.Series(dtype="float64" if c == "count" else "object")
        return df
    ok = df[df["status"] == "ok"] if (df["status"] == "ok").any() else df
    swept = swept_settings(ok)
    df["config"] = _config_labels(df, swept, differing_settings(ok, swept))
    df["settings_as"] = parsed_params(df).map(lambda p: SETTINGS_AS[bool(p.get("reference_quirks"))])
    df["count"] = np.where(df["ratio"].isna(), pd.to_numeric(df["n_injected"], errors="coerce"), np.nan)
    df["overlap"] = df["overlap"].fillna(False).astype(bool)
    df = with_protocol(df)
    return df


def with_protocol(df: pd.DataFrame) -> pd.DataFrame:
    """The protocol columns filled in: rows from before they existed meant the default protocol."""
    df = df.copy()
    for col, default in PROTOCOL_DEFAULTS.items():
        df[col] = df[col].fillna(default) if col in df.columns else default
    return df


def variant_label(method: str, config: str, overlap: bool, show_overlap: bool = False) -> str:
    """Human name of a (method, config) line: ``funad [keep_ratio=0.5]``."""
    text = str(method) + (f" [{config}]" if config else "")
    return text + (" (overlap)" if show_overlap and overlap else "")


def aggregate(ok: pd.DataFrame, values: list[str], keys: list[str] | None = None) -> pd.DataFrame:
    """Seed/category aggregation described in the module docstring.

    Returns one row per group with ``<v>_mean``, ``<v>_std`` for each value column plus ``n`` (seeds) and
    ``n_categories``.
    """
    keys = list(KEYS if keys is None else keys)
    cols = keys + ["n", "n_categories"] + [f"{v}_{s}" for v in values for s in ("mean", "std")]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    cell_cols = cell_key(ok)
    df = ok[keys + cell_cols + values].copy()
    for v in values:
        df[v] = pd.to_numeric(df[v], errors="coerce").astype("float64")
    g = dict(dropna=False, sort=True)
    cell = df.groupby(keys + cell_cols, **g)[values].mean()
    per_cat = cell.groupby(level=keys + ["category"], **g).mean()
    per_seed = cell.groupby(level=keys + ["seed"], **g).mean()
    mean = per_cat.groupby(level=keys, **g).mean()
    std = per_seed.groupby(level=keys, **g).std(ddof=1)
    n = cell.reset_index().groupby(keys, **g)["seed"].nunique()
    ncat = cell.reset_index().groupby(keys, **g)["category"].nunique()
    out = pd.DataFrame({"n": n, "n_categories": ncat})
    for v in values:
        out[f"{v}_mean"] = mean[v]
        out[f"{v}_std"] = std[v]
    return out.reset_index()[cols]


def main_table(ok: pd.DataFrame) -> pd.DataFrame:
    """(a) dataset × method × ratio: mean ± std over seeds (and n) of every headline metric."""
    return aggregate(ok, list(METRICS))


def category_table(ok: pd.DataFrame) -> pd.DataFrame:
    """(b) category × ratio per method: mean ± std over seeds of each metric."""
    keys = KEYS[:2] + ["category"] + KEYS[2:]
    cols = keys + ["n"] + [f"{v}_{s}" for v in METRICS for s in ("mean", "std")]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    df = ok[keys + ["seed", *METRICS]].copy()
    g = dict(dropna=False, sort=True)
    cell = df.groupby(keys + ["seed"], **g)[list(METRICS)].mean()
    out = pd.DataFrame({"n": cell.reset_index().groupby(keys, **g)["seed"].nunique()})
    for v in METRICS:
        out[f"{v}_mean"] = cell[v].groupby(level=keys, **g).mean()
        out[f"{v}_std"] = cell[v].groupby(level=keys, **g).std(ddof=1)
    return out.reset_index()[cols]


def oracle_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Best-on-test (oracle) values, aggregated like the main table; empty when no cell computed them."""
    present = ok[ok[list(ORACLE)].notna().any(axis=1)] if not ok.empty else ok
    return aggregate(present, list(ORACLE))


def sensitivity_table(ok: pd.DataFrame) -> pd.DataFrame:
    """(d) for each swept setting: metric mean per value (other settings of the method averaged per cell)."""
    cols = ["dataset", "method", "setting", "value", "overlap", "ratio", "count", "n", "n_categories"]
    cols += [f"{v}_{s}" for v in METRICS for s in ("mean", "std")]
    frames = []
    for method, hps in swept_settings(ok).items():
        rows = ok[ok["method"] == method]
        for hp in hps:
            sub = rows[rows[hp].notna()]
            sub = sub.assign(setting=hp.removeprefix(HP_PREFIX), value=sub[hp].astype(float))
            keys = ["dataset", "method", "setting", "value", "overlap", "ratio", "count"]
            frames.append(aggregate(sub, list(METRICS), keys=keys))
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def _is_gpu(device: Any) -> bool:
    return isinstance(device, str) and bool(device) and not device.lower().startswith("cpu")


def gpu_fraction(spec: dict[str, Any]) -> float:
    """GPUs per trial from ``resources.gpu``; 1.0 when unset (a GPU cell held at least one)."""
    res = spec.get("resources") if isinstance(spec, dict) else None
    try:
        value = float(res.get("gpu")) if isinstance(res, dict) and res.get("gpu") is not None else 0.0
    except (TypeError, ValueError):
        value = 0.0
    return value if value > 0 else 1.0


def cost_table(results: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """(e) cost per method over all attempts' final rows (failed cells cost time too).

    GPU-hours = sum over GPU cells of wall_s × GPUs per trial / 3600.
    """
    cols = [
        "method",
        "cells",
        "ok",
        "failed",
        "wall_s_mean",
        "wall_s_total",
        "feature_s_mean",
        "fit_s_mean",
        "eval_s_mean",
        "gpu_hours",
        "peak_rss_mb_max",
        "peak_gpu_mb_max",
        "devices",
    ]
    if results.empty:
        return pd.DataFrame(columns=cols)
    frac = gpu_fraction(spec)
    rows = []
    for method, df in results.groupby("method", dropna=False, sort=True):
        gpu = df["device"].map(_is_gpu).astype(bool)
        rows.append(
            {
                "method": method,
                "cells": len(df),
                "ok": int((df["status"] == "ok").sum()),
                "failed": int((df["status"] != "ok").sum()),
                "wall_s_mean": df["wall_s"].mean(),
                "wall_s_total": df["wall_s"].sum(min_count=1),
                "feature_s_mean": df["feature_s"].mean(),
                "fit_s_mean": df["fit_s"].mean(),
                "eval_s_mean": df["eval_s"].mean(),
                "gpu_hours": float((df.loc[gpu, "wall_s"].fillna(0) * frac).sum() / 3600.0),
                "peak_rss_mb_max": df["peak_rss_mb"].max(),
                "peak_gpu_mb_max": df["peak_gpu_mb"].max(),
                "devices": ", ".join(sorted({str(d) for d in df["device"].dropna()})),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def failures_table(results: pd.DataFrame) -> pd.DataFrame:
    """(f) every cell whose final status is not ok, with its error text."""
    cols = [
        "cell_id",
        "dataset",
        "category",
        "method",
        "config",
        "ratio",
        "overlap",
        "seed",
        "attempt",
        "status",
        "error",
    ]
    if results.empty:
        return pd.DataFrame(columns=cols)
    bad = results[results["status"] != "ok"]
    return (
        bad[cols]
        .sort_values(["dataset", "method", "category", "ratio", "seed"], na_position="last", kind="stable")
        .reset_index(drop=True)
    )


def missing_cells(plan: pd.DataFrame | None, results: pd.DataFrame) -> pd.DataFrame | None:
    """Cells of the run's plan (plan.parquet) with no result row: not run yet, or lost.

    None when the run has no plan (runs made before the sweep wrote one): its missing cells cannot be
    listed. ``config`` labels the swept settings as the other tables do, from the plan's own values.
    """
    if plan is None:
        return None
    have = set(results["cell_id"].dropna()) if "cell_id" in results.columns else set()
    todo = plan[~plan["cell_id"].isin(have)].reset_index(drop=True)
    if todo.empty:
        return pd.DataFrame(columns=MISSING_COLUMNS)
    swept = swept_settings(plan)
    todo = todo.assign(config=_config_labels(todo, swept, differing_settings(plan, swept)))
    return todo[MISSING_COLUMNS].sort_values(
        ["dataset", "method", "category", "ratio", "seed"], na_position="last", kind="stable"
    ).reset_index(drop=True)


def environment_table(results: pd.DataFrame) -> pd.DataFrame:
    """Distinct library versions, commits, devices and nodes, with how many cells used each."""
    rows: list[dict[str, object]] = []
    counts: dict[tuple[str, str], int] = {}
    for v in results["versions"]:
        for k, val in parse_versions(v).items():
            counts[(str(k), str(val))] = counts.get((str(k), str(val)), 0) + 1
    for col in ("git_commit", "device", "node", "backbone"):
        for val, n in results[col].dropna().astype(str).value_counts().items():
            counts[(col, str(val))] = int(n)
    for (k, val), n in sorted(counts.items()):
        rows.append({"item": k, "value": val, "cells": n})
    return pd.DataFrame(rows, columns=["item", "value", "cells"])
