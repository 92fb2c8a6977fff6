"""The display text of every table of the report: numbers into the strings the HTML, the Markdown and
the LaTeX show (metrics in %, differences in signed percentage points, "–" where a value is missing).

The tables and statistics (reports.tables, reports.stats, reports.paper) return numbers; the CSV files
keep those raw numbers, and only what is shown passes through here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from reports.load import METRICS
from reports.stats import CELL_METRIC, GROUP, RankResult
from rundir import PROTOCOL_DEFAULTS

# ------------------------------------------------------------------------------------------ result tables


def pct(mean: Any, std: Any = None) -> str:
    """``98.45 ± 0.12`` in % (metrics are stored in [0, 1]); '–' for missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)) or pd.isna(mean):
        return "–"
    text = f"{100 * float(mean):.2f}"
    if std is not None and not pd.isna(std):
        text += f" ± {100 * float(std):.2f}"
    return text


def num(value: Any, digits: int = 2) -> str:
    """Plain number text; '–' for missing."""
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, int | np.integer) or (
        isinstance(value, float) and float(value).is_integer() and abs(value) < 1e12 and digits == 0
    ):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _key_text(df: pd.DataFrame) -> pd.DataFrame:
    """Readable key columns: ratio/count, overlap as yes/no; drop constant-empty ones."""
    out = pd.DataFrame(index=df.index)
    names = {"contamination_source": "drawn from", "ratio_of": "ratio of", "pool_order": "pool order"}
    #: shown only where some row is not at the default (most runs use one pool order)
    quiet = {"pool_order": PROTOCOL_DEFAULTS["pool_order"]}
    order = ["dataset", "method", "config", "category", "setting", "value", "overlap",
             "contamination_source", "ratio_of", "pool_order", "ratio", "count"]
    for c in order:
        if c not in df.columns:
            continue
        if c in quiet and (df[c].astype(str) == quiet[c]).all():
            continue
        if c == "overlap":
            out[c] = df[c].map(lambda v: "yes" if bool(v) else "no")
        elif c in ("ratio", "value"):
            out[c] = df[c].map(lambda v: "–" if pd.isna(v) else f"{float(v):g}")
        elif c == "count":
            if df[c].notna().any():
                out["count"] = df[c].map(lambda v: "–" if pd.isna(v) else str(int(v)))
        elif c == "config":
            if df[c].astype(str).str.len().gt(0).any():
                out[c] = df[c].astype(str)
        elif c in names:
            out[names[c]] = df[c].astype(str)
        else:
            out[c] = df[c].astype(str)
    return out


def display(df: pd.DataFrame, values: list[str] | None = None, label: str = "") -> pd.DataFrame:
    """Turn an aggregated table into text columns: keys, n, then ``metric (%)`` = mean ± std.

    ``label`` prefixes metric headers (used for the oracle table: "oracle (best-on-test epoch) image_auroc").
    """
    values = list(METRICS if values is None else values)
    out = _key_text(df)
    for c in ("n", "n_categories"):
        if c in df.columns:
            out[c] = df[c].map(lambda v: num(v, 0))
    for v in values:
        if f"{v}_mean" not in df.columns:
            continue
        head = f"{label} {v.removeprefix('oracle_') if label else v}".strip()
        if v == "oracle_epoch":
            out[head] = [
                num(m, 1) + ("" if pd.isna(s) else f" ± {float(s):.1f}")
                for m, s in zip(df[f"{v}_mean"], df[f"{v}_std"], strict=True)
            ]
        else:
            out[f"{head} (%)"] = [pct(m, s) for m, s in zip(df[f"{v}_mean"], df[f"{v}_std"], strict=True)]
    return out.reset_index(drop=True)


def display_cost(df: pd.DataFrame) -> pd.DataFrame:
    """Cost table as text (seconds with one decimal, GPU-hours with three)."""
    out = pd.DataFrame({"method": df["method"].astype(str)})
    for c in ("cells", "ok", "failed"):
        out[c] = df[c].map(lambda v: num(v, 0))
    for c in ("wall_s_mean", "wall_s_total", "feature_s_mean", "fit_s_mean", "eval_s_mean"):
        out[c] = df[c].map(lambda v: num(v, 1))
    out["gpu_hours"] = df["gpu_hours"].map(lambda v: num(v, 3))
    out["peak_rss_mb_max"] = df["peak_rss_mb_max"].map(lambda v: num(v, 0))
    out["peak_gpu_mb_max"] = df["peak_gpu_mb_max"].map(lambda v: num(v, 0))
    out["devices"] = df["devices"].astype(str)
    return out.reset_index(drop=True)

def display_failures(fails: pd.DataFrame) -> pd.DataFrame:
    """The failed cells as text (an error-less row shows an empty error)."""
    return fails.assign(error=fails["error"].fillna("")).astype(str) if len(fails) else fails


def display_missing(missing: pd.DataFrame) -> pd.DataFrame:
    """The missing cells as text."""
    return missing.astype(str) if len(missing) else missing


# ------------------------------------------------------------------------------------------ statistics


def pp(value: Any) -> str:
    """Signed percentage points (metrics are stored in [0, 1]); '–' for missing."""
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):+.2f}"


def diff_ci(mean: Any, low: Any, high: Any) -> str:
    """``-3.21 [-4.00, -2.10]`` in percentage points."""
    text = pp(mean)
    if pd.notna(low) and pd.notna(high):
        text += f" [{pp(low)}, {pp(high)}]"
    return text


def pval(p: Any) -> str:
    """p-values with three significant digits; '–' where no test ran."""
    return "–" if p is None or pd.isna(p) else f"{float(p):.3g}"


def _level(ratio: Any, count: Any) -> str:
    return f"{float(ratio):g}" if pd.notna(ratio) else (f"{int(count)} injected" if pd.notna(count) else "–")


def _metric_notes(df: pd.DataFrame) -> str:
    """One note cell for a wide row: each distinct note once, prefixed by the metrics it applies to."""
    by_note: dict[str, list[str]] = {}
    for metric, note in zip(df["metric"], df["note"], strict=True):
        for part in str(note).split("; ") if note else []:
            by_note.setdefault(part, []).append(str(metric))
    return "; ".join(f"{', '.join(ms)}: {n}" if len(ms) < len(df) else n for n, ms in by_note.items())


def display_pairwise(df: pd.DataFrame) -> pd.DataFrame:
    """Wide text table: one row per dataset × ratio × pair; per metric ``Δ (pp) [95 % CI]`` and p."""
    cols = ["dataset", "overlap", "ratio", "variant_a", "variant_b", "n"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    keys = [*GROUP, "variant_a", "variant_b"]
    for gkey, g in df.groupby(keys, dropna=False, sort=False):
        k = dict(zip(keys, gkey, strict=True))
        row = {
            "dataset": str(k["dataset"]),
            "overlap": "yes" if bool(k["overlap"]) else "no",
            "ratio": _level(k["ratio"], k["count"]),
            "variant_a": k["variant_a"],
            "variant_b": k["variant_b"],
            "n": num(int(g["n"].max()), 0),
        }
        for r in g.itertuples(index=False):
            row[f"{r.metric} a − b (pp) [95% CI]"] = diff_ci(r.mean_diff, r.ci_low, r.ci_high)
            row[f"{r.metric} p"] = pval(r.p_wilcoxon)
            if r.metric == CELL_METRIC:
                row[f"{r.metric} within cell noise"] = (
                    "–"
                    if r.within_cell_noise is None or pd.isna(r.within_cell_noise)
                    else ("yes" if r.within_cell_noise else "no")
                )
        row["note"] = _metric_notes(g)
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def display_robustness(df: pd.DataFrame) -> pd.DataFrame:
    """Wide text table: one row per dataset × variant × ratio; per metric the change from ratio 0 [CI]."""
    cols = ["dataset", "overlap", "variant", "ratio", "n"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    keys = ["dataset", "overlap", "variant", "ratio", "count"]
    for gkey, g in df.groupby(keys, dropna=False, sort=False):
        k = dict(zip(keys, gkey, strict=True))
        row = {
            "dataset": str(k["dataset"]),
            "overlap": "yes" if bool(k["overlap"]) else "no",
            "variant": k["variant"],
            "ratio": _level(k["ratio"], k["count"]),
            "n": num(int(g["n"].max()), 0),
        }
        for r in g.itertuples(index=False):
            row[f"Δ {r.metric} (pp) [95% CI]"] = diff_ci(r.mean_diff, r.ci_low, r.ci_high)
        row["note"] = _metric_notes(g)
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def display_ranks(results: list[RankResult]) -> pd.DataFrame:
    """One row per rank result: the ranking, Friedman χ² and p, CD, and why anything is missing."""
    rows = []
    for r in results:
        ranking = " < ".join(
            f"{lab} ({rank:.2f})" for lab, rank in zip(r.labels, r.ranks, strict=True) if pd.notna(rank)
        )
        rows.append(
            {
                "dataset": r.dataset,
                "overlap": "yes" if r.overlap else "no",
                "ratio": _level(r.ratio, r.count),
                "metric": r.metric,
                "k": str(r.k),
                "N (categories)": str(r.n_categories),
                "average ranks (1 = best)": ranking or "–",
                "Friedman χ²": num(r.friedman_stat, 3),
                "Friedman p": pval(r.friedman_p),
                "CD (α 0.05)": num(r.cd, 3),
                "note": r.note,
            }
        )
    return pd.DataFrame(rows)


CELL_CI_HEADER = f"{CELL_METRIC} cell 95% CI ± (%)"


def display_category_ci(shown: pd.DataFrame, cat: pd.DataFrame) -> pd.DataFrame:
    """The per-category text table with the cells' AUROC CI half-width right after the image AUROC column."""
    if shown.empty or "image_auroc_cell_hw" not in cat.columns:
        return shown
    out = shown.copy()
    after = f"{CELL_METRIC} (%)"
    at = list(out.columns).index(after) + 1 if after in out.columns else len(out.columns)
    text = ["–" if pd.isna(v) else f"{100 * float(v):.2f}" for v in cat["image_auroc_cell_hw"]]
    out.insert(at, CELL_CI_HEADER, text)
    return out


def display_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per-cell CIs as text (in %)."""
    if df.empty:
        return df
    out = pd.DataFrame({"cell_id": df["cell_id"].astype(str)})
    out["n_pos"] = df["n_pos"].map(lambda v: num(v, 0))
    out["n_neg"] = df["n_neg"].map(lambda v: num(v, 0))
    out["AUROC of scores (%)"] = df["auroc_scores"].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    out["95% CI (%)"] = [
        "–" if pd.isna(lo) else f"[{100 * lo:.2f}, {100 * hi:.2f}]"
        for lo, hi in zip(df["ci_low"], df["ci_high"], strict=True)
    ]
    out["± (%)"] = df["half_width"].map(lambda v: "–" if pd.isna(v) else f"{100 * v:.2f}")
    out["note"] = df["note"].fillna("").astype(str)
    return out


# ------------------------------------------------------------------------------------------ ours vs paper


def display_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Text version for HTML/Markdown: values in %, diff in %-points with a sign."""

    def f(v: object, sign: bool = False) -> str:
        if v is None or pd.isna(v):
            return "–"
        return f"{float(v):+.2f}" if sign else f"{float(v):.2f}"

    out = pd.DataFrame(
        {
            "dataset": df["dataset"].astype(str),
            "method": df["method"].astype(str),
            "ratio / count": [
                f"{r:g}" if pd.notna(r) else f"{int(c)} images"
                for r, c in zip(df["ratio"], df["count"], strict=True)
            ],
            "overlap": df["overlap"].map(lambda v: "yes" if bool(v) else "no"),
            "drawn from": df["contamination_source"].map(
                lambda v: "whole test set" if v == "all_test" else "test anomalies"),
            "metric": df["metric"].astype(str),
            "paper (%)": df["paper"].map(f),
            "ours (%)": [
                f(m) + ("" if pd.isna(s) else f" ± {s:.2f}")
                for m, s in zip(df["ours"], df["ours_std"], strict=True)
            ],
            "ours − paper (pp)": df["diff_pp"].map(lambda v: f(v, sign=True)),
            "n": df["n"].map(lambda v: "–" if pd.isna(v) else str(int(v))),
            "config": df["config"].astype(str),
            "settings": df["settings"].map(
                lambda v: {"released": "as released", "paper": "paper", "mixed": "mixed"}.get(str(v), "")),
            "status": df["status"].astype(str),
            "source": df["source"].astype(str),
            "note": df["note"].astype(str),
        }
    )
    return out.reset_index(drop=True)
