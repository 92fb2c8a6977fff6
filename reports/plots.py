"""Plotly figures and the anomaly-map gallery of a report.

Every figure is returned as a :class:`Plot` with a ``kind``; the HTML page puts it in ``<div class="plot
plot-<kind>" id=...>``. In ratio plots each method variant has exactly one *mean* trace (``meta="mean"``,
named after the variant) and at most one ±std *band* trace (``meta="band"``, ``showlegend`` False, same
``legendgroup``); tests count ``meta == "mean"`` traces to check "one trace per method".

Text that comes from the run (category/method names) is HTML-escaped before it reaches plotly, because
plotly renders a subset of HTML in labels; escaped entities are shown literally.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from reports.load import METRICS
from reports.stats import RankResult
from reports.tables import ORACLE_LABEL, variant_label
from rundir import DIAG_PREFIX

PALETTE = qualitative.Plotly + qualitative.D3
TRAINING_COLUMNS = ["loss", "loss_bce", "loss_ms", f"{DIAG_PREFIX}candidates", f"{DIAG_PREFIX}pl_precision"]
LAYOUT = dict(
    margin=dict(l=60, r=20, t=60, b=40),
    height=420,
    font=dict(size=12),
    legend=dict(font=dict(size=10), orientation="h", y=-0.2, x=0, yanchor="top"),
    title_x=0.01,
    title_y=0.97,
)


TEMPLATE = (
    "plotly_white"  # applied at serialisation (html.figure): setting it per figure deep-copies it each time
)


@dataclass
class Plot:
    """A figure with its DOM id, kind (CSS class / section) and title."""

    key: str
    kind: str
    title: str
    figure: go.Figure


@dataclass
class GalleryRow:
    """One composed PNG (best/median/worst examples of one cell) and its caption."""

    caption: str
    data_uri: str


def esc(text: object) -> str:
    """Escape run-provided text for plotly labels (plotly shows the entities as the literal characters)."""
    return html.escape(str(text), quote=False)


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _variant_styles(
    df: pd.DataFrame,
) -> tuple[list[tuple[str, str, bool]], bool, dict[tuple[str, str, bool], str]]:
    """Variants of `df`, whether overlap must be shown to tell them apart, and one colour per variant."""
    variants = _variants(df)
    colors = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    return variants, df["overlap"].nunique() > 1, colors


def _variants(df: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """Ordered (method, config, overlap) triples of a table."""
    v = df[["method", "config", "overlap"]].drop_duplicates()
    return [
        (str(a), str(b), bool(c))
        for a, b, c in v.sort_values(["method", "config", "overlap"]).itertuples(index=False)
    ]


def _key(*parts: object) -> str:
    """Deterministic DOM-safe id (run-provided names may contain any character)."""
    raw = "|".join(str(p) for p in parts)
    safe = "".join(ch if ch.isalnum() else "_" for ch in raw)[:60]
    return f"{safe}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def ratio_plots(
    main: pd.DataFrame, values: list[str] | None = None, kind: str = "ratio", label: str = ""
) -> list[Plot]:
    """Each metric against the ratio: one line per method variant, ±std band over seeds."""
    values = list(METRICS if values is None else values)
    df = main[main["ratio"].notna() & main["count"].isna()] if len(main) else main
    plots: list[Plot] = []
    if df.empty:
        return plots
    variants, show_overlap, colors = _variant_styles(df)
    for dataset in sorted(df["dataset"].astype(str).unique()):
        dsub = df[df["dataset"].astype(str) == dataset]
        for metric in values:
            if dsub[f"{metric}_mean"].isna().all():
                continue
            fig = go.Figure()
            for var in variants:
                m, c, o = var
                rows = dsub[(dsub["method"] == m) & (dsub["config"] == c) & (dsub["overlap"] == o)]
                rows = rows[rows[f"{metric}_mean"].notna()].sort_values("ratio")
                if rows.empty:
                    continue
                name = esc(variant_label(m, c, o, show_overlap))
                x = rows["ratio"].astype(float).tolist()
                scale = 1.0 if metric == "oracle_epoch" else 100.0
                y = (rows[f"{metric}_mean"] * scale).tolist()
                s = (rows[f"{metric}_std"].fillna(0.0) * scale).tolist()
                if rows[f"{metric}_std"].notna().any():
                    upper = [a + b for a, b in zip(y, s, strict=True)]
                    lower = [a - b for a, b in zip(y, s, strict=True)]
                    fig.add_trace(
                        go.Scatter(
                            x=x + x[::-1],
                            y=upper + lower[::-1],
                            fill="toself",
                            mode="lines",
                            line=dict(width=0),
                            fillcolor=_rgba(colors[var], 0.15),
                            hoverinfo="skip",
                            showlegend=False,
                            legendgroup=name,
                            name=f"{name} ±std",
                            meta="band",
                        )
                    )
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        line=dict(color=colors[var], width=2),
                        meta="mean",
                        customdata=np.stack([s, rows["n"].astype(float)], axis=1),
                        hovertemplate="ratio %{x}<br>%{y:.2f} ± %{customdata[0]:.2f} "
                        "(n=%{customdata[1]})<extra>" + name + "</extra>",
                    )
                )
            unit = "" if metric == "oracle_epoch" else " (%)"
            short = metric.removeprefix("oracle_") if label else metric
            title = f"{label + ' ' if label else ''}{short}{unit} vs ratio — {esc(dataset)}"
            fig.update_layout(
                **LAYOUT,
                title=dict(text=title, font=dict(size=14)),
                xaxis_title="anomaly-to-normal ratio",
                yaxis_title=f"{metric}{unit}",
            )
            plots.append(Plot(_key(kind, dataset, metric), kind, title, fig))
    return plots


def oracle_plots(oracle: pd.DataFrame) -> list[Plot]:
    """Oracle (best-on-test epoch) values against the ratio, titled so they never pass as headline."""
    return ratio_plots(
        oracle, ["oracle_image_auroc", "oracle_pixel_auroc"], kind="oracle", label=ORACLE_LABEL
    )


def heatmaps(cat: pd.DataFrame) -> list[Plot]:
    """Category × ratio heatmap of image and pixel AUROC (mean over seeds), one figure per method variant."""
    plots: list[Plot] = []
    df = cat[cat["ratio"].notna()] if len(cat) else cat
    if df.empty:
        return plots
    show_overlap = df["overlap"].nunique() > 1
    for dataset in sorted(df["dataset"].astype(str).unique()):
        dsub = df[df["dataset"].astype(str) == dataset]
        for var in _variants(dsub):
            m, c, o = var
            rows = dsub[(dsub["method"] == m) & (dsub["config"] == c) & (dsub["overlap"] == o)]
            metrics = [x for x in ("image_auroc", "pixel_auroc") if rows[f"{x}_mean"].notna().any()]
            if not metrics:
                continue
            fig = make_subplots(
                rows=1,
                cols=len(metrics),
                subplot_titles=[f"{x} (%)" for x in metrics],
                horizontal_spacing=0.04,
                shared_yaxes=True,
            )
            for i, metric in enumerate(metrics, start=1):
                pivot = (
                    rows.pivot_table(
                        index="category",
                        columns="ratio",
                        values=f"{metric}_mean",
                        aggfunc="mean",
                        dropna=False,
                    )
                    * 100
                )
                z = pivot.to_numpy(dtype=float)
                text = [["–" if np.isnan(v) else f"{v:.1f}" for v in r] for r in z]
                fig.add_trace(
                    go.Heatmap(
                        z=z,
                        x=[f"{r:g}" for r in pivot.columns],
                        y=[esc(cname) for cname in pivot.index],
                        text=text,
                        texttemplate="%{text}",
                        colorscale="RdYlGn",
                        zmin=50,
                        zmax=100,
                        showscale=i == len(metrics),
                        name=metric,
                        hovertemplate="%{y}<br>ratio %{x}<br>%{z:.2f}<extra></extra>",
                    ),
                    row=1,
                    col=i,
                )
                fig.update_xaxes(title_text="ratio", type="category", row=1, col=i)
            name = esc(variant_label(m, c, o, show_overlap))
            title = f"{name} — {esc(dataset)}: category × ratio"
            fig.update_layout(
                **{**LAYOUT, "height": max(300, 120 + 28 * len(pivot.index))},
                title=dict(text=title, font=dict(size=14)),
            )
            plots.append(Plot(_key("heatmap", dataset, m, c, o), "heatmap", title, fig))
    return plots


def category_bars(cat: pd.DataFrame, metric: str = "image_auroc") -> list[Plot]:
    """Per-category bars (mean ± std over seeds) for each variant; a dropdown picks the ratio."""
    plots: list[Plot] = []
    df = cat[cat["ratio"].notna() & cat[f"{metric}_mean"].notna()] if len(cat) else cat
    if df.empty:
        return plots
    variants, show_overlap, colors = _variant_styles(df)
    for dataset in sorted(df["dataset"].astype(str).unique()):
        dsub = df[df["dataset"].astype(str) == dataset]
        ratios = sorted(dsub["ratio"].astype(float).unique())
        fig = go.Figure()
        owners: list[float] = []
        for ratio in ratios:
            for var in variants:
                m, c, o = var
                rows = dsub[
                    (dsub["ratio"] == ratio)
                    & (dsub["method"] == m)
                    & (dsub["config"] == c)
                    & (dsub["overlap"] == o)
                ].sort_values("category")
                if rows.empty:
                    continue
                fig.add_trace(
                    go.Bar(
                        x=[esc(x) for x in rows["category"]],
                        y=rows[f"{metric}_mean"] * 100,
                        error_y=dict(type="data", array=(rows[f"{metric}_std"].fillna(0) * 100)),
                        name=esc(variant_label(m, c, o, show_overlap)),
                        marker_color=colors[var],
                        visible=ratio == ratios[-1],
                        meta=f"ratio={ratio:g}",
                    )
                )
                owners.append(ratio)
        buttons = [
            dict(label=f"ratio {r:g}", method="update", args=[{"visible": [o == r for o in owners]}])
            for r in ratios
        ]
        title = f"{metric} (%) per category — {esc(dataset)}"
        low = float(((dsub[f"{metric}_mean"] - dsub[f"{metric}_std"].fillna(0)) * 100).min())
        fig.update_yaxes(range=[max(0.0, np.floor(low) - 2), 100.5])
        fig.update_layout(
            **LAYOUT,
            barmode="group",
            title=dict(text=title, font=dict(size=14)),
            yaxis_title=f"{metric} (%)",
            updatemenus=[
                dict(
                    buttons=buttons,
                    active=len(ratios) - 1,
                    x=1.0,
                    y=1.0,
                    xanchor="right",
                    yanchor="bottom",
                    pad=dict(b=4),
                )
            ]
            if len(ratios) > 1
            else [],
        )
        plots.append(Plot(_key("bars", dataset, metric), "bars", title, fig))
    return plots


def sensitivity_plots(sens: pd.DataFrame) -> list[Plot]:
    """Metric against each swept setting, one line per ratio (error bars: std over seeds)."""
    plots: list[Plot] = []
    if sens.empty:
        return plots
    for (dataset, method, setting), rows in sens.groupby(["dataset", "method", "setting"], sort=True):
        metrics = [x for x in ("image_auroc", "pixel_auroc") if rows[f"{x}_mean"].notna().any()]
        fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=[f"{x} (%)" for x in metrics])
        ratios = sorted(rows["ratio"].dropna().astype(float).unique())
        colors = sample_colorscale(
            "Viridis", [i / max(1, len(ratios) - 1) * 0.85 for i in range(len(ratios))]
        )
        for i, metric in enumerate(metrics, start=1):
            for r, color in zip(ratios, colors, strict=True):
                sub = rows[rows["ratio"] == r].sort_values("value")
                fig.add_trace(
                    go.Scatter(
                        x=sub["value"],
                        y=sub[f"{metric}_mean"] * 100,
                        mode="lines+markers",
                        error_y=dict(type="data", array=sub[f"{metric}_std"].fillna(0) * 100),
                        name=f"ratio {r:g}",
                        legendgroup=f"ratio {r:g}",
                        showlegend=i == 1,
                        line=dict(color=color),
                    ),
                    row=1,
                    col=i,
                )
            fig.update_xaxes(title_text=esc(setting), row=1, col=i)
        title = f"{esc(method)}: sensitivity to {esc(setting)} — {esc(dataset)}"
        fig.update_layout(**LAYOUT, title=dict(text=title, font=dict(size=14)))
        plots.append(Plot(_key("sens", dataset, method, setting), "sensitivity", title, fig))
    return plots


def cost_plot(results: pd.DataFrame) -> list[Plot]:
    """Distribution of wall time per cell for each method (all final rows, failed included)."""
    df = results[results["wall_s"].notna()] if len(results) else results
    if df.empty:
        return []
    fig = go.Figure()
    for i, (method, rows) in enumerate(df.groupby("method", sort=True)):
        fig.add_trace(
            go.Box(
                y=rows["wall_s"],
                name=esc(method),
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker=dict(size=4),
                line=dict(color=PALETTE[i % len(PALETTE)]),
            )
        )
    fig.update_layout(
        **LAYOUT,
        title=dict(text="wall time per cell (s)", font=dict(size=14)),
        yaxis_title="wall_s",
        showlegend=False,
    )
    return [Plot("cost-wall", "cost", "wall time per cell", fig)]


def training_plots(history: pd.DataFrame, cells: pd.DataFrame, max_cells: int = 80) -> list[Plot]:
    """Losses and FUN-AD diagnostics per epoch: one figure per method, one line per cell, colour = ratio."""
    plots: list[Plot] = []
    cols = [c for c in TRAINING_COLUMNS if c in history.columns and history[c].notna().any()]
    if history.empty or not cols:
        return plots
    info = cells.set_index("cell_id")[["method", "category", "seed", "ratio", "config"]]
    h = history[history["cell_id"].isin(info.index)].copy()
    if h.empty:
        return plots
    h["x"] = h["epoch"].where(h["epoch"].notna(), h["iteration"])
    h = h[h["x"].notna()]
    h = h.groupby(["cell_id", "x"], as_index=False)[cols].mean()
    h = h.join(info, on="cell_id")
    ratios = sorted(h["ratio"].dropna().astype(float).unique())
    colors = dict(
        zip(
            ratios,
            sample_colorscale("Plasma", [i / max(1, len(ratios) - 1) * 0.85 for i in range(len(ratios))]),
            strict=True,
        )
    )
    for method, mh in h.groupby("method", sort=True):
        present = [c for c in cols if mh[c].notna().any()]
        if not present:  # e.g. a one-epoch run whose curves are all null: nothing to draw
            continue
        ncols = min(3, len(present))
        nrows = (len(present) + ncols - 1) // ncols
        fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=present, vertical_spacing=0.16)
        shown: set[float] = set()
        for cid in list(dict.fromkeys(mh["cell_id"]))[:max_cells]:
            rows = mh[mh["cell_id"] == cid].sort_values("x")
            r = rows["ratio"].iloc[0]
            color = colors.get(float(r), "#888") if pd.notna(r) else "#888"
            first = rows.iloc[0]
            label = esc(f"{first['category']} seed {first['seed']} {first['config']}".strip())
            for j, col in enumerate(present):
                if rows[col].isna().all():
                    continue
                legend = pd.notna(r) and float(r) not in shown
                if legend:
                    shown.add(float(r))
                fig.add_trace(
                    go.Scatter(
                        x=rows["x"],
                        y=rows[col],
                        mode="lines",
                        line=dict(color=color, width=1),
                        opacity=0.7,
                        name=f"ratio {r:g}" if pd.notna(r) else "count",
                        legendgroup=f"ratio {r}",
                        showlegend=bool(legend),
                        hovertemplate=label + "<br>epoch %{x}: %{y:.4g}<extra></extra>",
                    ),
                    row=j // ncols + 1,
                    col=j % ncols + 1,
                )
        title = f"{esc(method)}: training dynamics (one line per cell, colour = ratio)"
        fig.update_layout(**{**LAYOUT, "height": 320 * nrows}, title=dict(text=title, font=dict(size=14)))
        fig.update_xaxes(title_text="epoch")
        plots.append(Plot(_key("train", method), "training", title, fig))
    return plots


#: end-of-fit diagnostics that measure contamination reaching a method's model (read for reports only)
INJECTED_SHARE_COLUMNS = tuple(
    f"{DIAG_PREFIX}{name}"
    for name in ("memory_injected_frac", "bank_injected_frac", "cand_injected_frac", "removed_injected_frac")
)


def diagnostic_plots(ok: pd.DataFrame, history: pd.DataFrame) -> list[Plot]:
    """One-pass methods have no epochs: their end-of-fit diagnostics per cell against the injected share of
    the training pool, one figure per method (for InReaCh: memory size, channels kept, trim share, and the
    share of the memory that comes from injected images next to the diagonal it would follow by chance)."""
    plots: list[Plot] = []
    if ok.empty:
        return plots
    # methods with epochs are drawn per epoch by training_plots
    epochs = pd.to_numeric(history.get("epoch", pd.Series(dtype=float)), errors="coerce")
    iterative = set(history.loc[epochs > 0, "method"].dropna().astype(str)) if len(history) else set()
    df = ok[~ok["method"].astype(str).isin(iterative)].copy()
    pool = pd.to_numeric(df["n_train_pool"], errors="coerce") if "n_train_pool" in df else pd.Series(np.nan)
    df["_x"] = pd.to_numeric(df["n_injected"], errors="coerce") / pool.where(pool > 0)
    for method, rows in df.groupby("method", sort=True):
        cols = [c for c in rows.columns if c.startswith(DIAG_PREFIX) and rows[c].notna().any()]
        if not cols or rows["_x"].isna().all():
            continue
        ncols = min(3, len(cols))
        nrows = (len(cols) + ncols - 1) // ncols
        titles = [c.removeprefix(DIAG_PREFIX) for c in cols]
        fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles, vertical_spacing=0.18)
        cats = sorted(rows["category"].dropna().astype(str).unique())
        shades = sample_colorscale("Viridis", [i / max(1, len(cats) - 1) for i in range(len(cats))])
        palette = dict(zip(cats, shades, strict=True))
        for j, col in enumerate(cols):
            r, c = j // ncols + 1, j % ncols + 1
            for cat in cats:
                sub = rows[rows["category"].astype(str) == cat]
                fig.add_trace(go.Scatter(
                    x=sub["_x"], y=pd.to_numeric(sub[col], errors="coerce"), mode="markers",
                    marker=dict(color=palette[cat], size=7), name=esc(cat), legendgroup=esc(cat),
                    showlegend=j == 0,
                    hovertemplate=esc(cat) + "<br>injected share %{x:.3f}: %{y:.4g}<extra></extra>",
                ), row=r, col=c)
            if col in INJECTED_SHARE_COLUMNS:
                top = float(np.nanmax(rows["_x"])) if rows["_x"].notna().any() else 0.0
                chance = go.Scatter(x=[0, top], y=[0, top], mode="lines", name="by chance",
                                    line=dict(color="#999", dash="dot"), showlegend=j == 0)
                fig.add_trace(chance, row=r, col=c)
        title = f"{esc(method)}: end-of-fit diagnostics per cell against the injected share of the pool"
        fig.update_layout(**{**LAYOUT, "height": 320 * nrows}, title=dict(text=title, font=dict(size=14)))
        fig.update_xaxes(title_text="injected images / pool")
        plots.append(Plot(_key("diag", method), "training", title, fig))
    return plots


def _segments(points: list[list[tuple[float, float]]]) -> tuple[list[float | None], list[float | None]]:
    """x/y lists of several polylines for one trace (None breaks the line between them)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for line in points:
        xs += [p[0] for p in line] + [None]
        ys += [p[1] for p in line] + [None]
    return xs, ys


def cd_diagram(res: RankResult) -> Plot | None:
    """Demšar's critical-difference diagram: a rank axis (1 = best, left), each variant hung at its average
    rank with its label at the side, a thick bar joining each group not significantly different, the CD above.

    Traces carry ``meta`` ("axis", "cd", "variant", "group") so tests can read the drawing back.
    """
    ranks = [float(r) for r in res.ranks]
    if not ranks or any(not np.isfinite(r) for r in ranks):
        return None
    k = res.k
    cd = float(res.cd) if np.isfinite(res.cd) else 0.0
    hi = float(max(k, 1 + cd))
    step = 0.55
    bars_y = [-(0.35 + 0.22 * j) for j in range(len(res.cliques))]
    first = (bars_y[-1] if bars_y else -0.2) - 0.45
    half = (k + 1) // 2
    fig = go.Figure()
    ticks = [[(float(i), 0.0), (float(i), 0.14)] for i in range(1, int(np.floor(hi)) + 1)]
    ticks += [[(i + 0.5, 0.0), (i + 0.5, 0.07)] for i in range(1, int(np.floor(hi))) if i + 0.5 <= hi]
    xs, ys = _segments([[(1.0, 0.0), (hi, 0.0)], *ticks])
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="lines", line=dict(color="#222", width=1.5), hoverinfo="skip", meta="axis"
        )
    )
    fig.add_trace(
        go.Scatter(
            x=list(range(1, int(np.floor(hi)) + 1)),
            y=[0.3] * int(np.floor(hi)),
            mode="text",
            text=[str(i) for i in range(1, int(np.floor(hi)) + 1)],
            textfont=dict(color="#222"),
            hoverinfo="skip",
            meta="ticklabels",
        )
    )
    if cd > 0:
        xs, ys = _segments(
            [[(1.0, 0.75), (1.0 + cd, 0.75)], [(1.0, 0.68), (1.0, 0.82)], [(1 + cd, 0.68), (1 + cd, 0.82)]]
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=dict(color="#b3261e", width=2),
                name=f"CD = {cd:.3f}",
                hovertemplate=f"Nemenyi CD = {cd:.3f} (α 0.05, k={k}, N={res.n_categories})<extra></extra>",
                meta="cd",
            )
        )
    annotations = []
    if cd > 0:
        annotations.append(
            dict(x=1.0 + cd / 2, y=0.95, text=f"CD = {cd:.2f}", showarrow=False, font=dict(color="#b3261e"))
        )
    for i, (label, rank) in enumerate(zip(res.labels, ranks, strict=True)):
        left = i < half
        depth = first - step * (i if left else k - 1 - i)
        edge = 1.0 - 0.05 * hi if left else hi * 1.05
        name = esc(label)
        fig.add_trace(
            go.Scatter(
                x=[rank, rank, edge],
                y=[0.0, depth, depth],
                mode="lines+markers",
                marker=dict(size=[7, 0, 0], color=PALETTE[i % len(PALETTE)]),
                line=dict(color="#444", width=1),
                name=name,
                meta="variant",
                customdata=[rank] * 3,
                hovertemplate=f"{name}<br>average rank %{{customdata:.3f}}<extra></extra>",
            )
        )
        annotations.append(
            dict(
                x=edge,
                y=depth,
                text=f"{name} ({rank:.2f})",
                showarrow=False,
                xanchor="right" if left else "left",
                xshift=-4 if left else 4,
                font=dict(size=12),
            )
        )
    for j, (lo, hi_i) in enumerate(res.cliques):
        fig.add_trace(
            go.Scatter(
                x=[ranks[lo] - 0.03, ranks[hi_i] + 0.03],
                y=[bars_y[j], bars_y[j]],
                mode="lines",
                line=dict(color="#111", width=5),
                name="not significantly different",
                hovertemplate=", ".join(esc(x) for x in res.labels[lo : hi_i + 1])
                + ": not significantly different<extra></extra>",
                meta="group",
            )
        )
    longest = max(len(f"{lab} ({r:.2f})") for lab, r in zip(res.labels, ranks, strict=True))
    side = int(min(360, 40 + 7 * longest))
    level = f"ratio {res.ratio:g}" if pd.notna(res.ratio) else f"{int(res.count)} injected"
    friedman = (
        f"Friedman p = {res.friedman_p:.3g}" if np.isfinite(res.friedman_p) else "Friedman: not computed"
    )
    title = (
        f"Critical difference: {esc(res.metric)} — {esc(res.dataset)}, {level}"
        f"{' (overlap)' if res.overlap else ''}"
    )
    annotations.append(
        dict(
            x=0,
            y=1.0,
            xref="paper",
            yref="paper",
            xanchor="left",
            yanchor="bottom",
            showarrow=False,
            text=f"{friedman}, k = {k}, N = {res.n_categories} categories",
            font=dict(size=11, color="#5b6472"),
        )
    )
    bottom = first - step * max(half, k - half)
    fig.update_layout(
        **{
            **LAYOUT,
            "height": int(76 + 58 * (abs(bottom) + 1.45)),
            "margin": dict(l=side, r=side, t=56, b=20),
        },
        title=dict(text=title, font=dict(size=14)),
        showlegend=False,
        annotations=annotations,
        xaxis=dict(visible=False, range=[1.0 - 0.08 * hi, hi * 1.08]),
        yaxis=dict(visible=False, range=[bottom - 0.3, 1.15]),
    )
    key = _key("cd", res.dataset, res.overlap, res.ratio, res.count, res.metric)
    return Plot(key, "cd", title, fig)


def cd_diagrams(results: list[RankResult]) -> list[Plot]:
    """Every drawable rank result as a CD diagram (results with a note instead of ranks are skipped)."""
    return [p for p in (cd_diagram(r) for r in results) if p is not None]


# ------------------------------------------------------------------------------------------------- gallery


def _decode(png: object, mode: str, size: int) -> np.ndarray | None:
    if not isinstance(png, bytes | bytearray) or not png:
        return None
    try:
        img = Image.open(io.BytesIO(png)).convert(mode)
    except (OSError, ValueError):
        return None
    resample = Image.Resampling.NEAREST if mode == "1" else Image.Resampling.BILINEAR
    return np.asarray(img.resize((size, size), resample))


def jet(x: np.ndarray) -> np.ndarray:
    """Jet-like colormap of values in [0, 1] -> uint8 RGB (no matplotlib needed)."""
    x = np.clip(x, 0.0, 1.0)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask (mask minus its 8-neighbour erosion), two pixels thick."""
    m = np.pad(mask.astype(bool), 1)
    eroded = m.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            eroded &= np.roll(np.roll(m, dy, 0), dx, 1)
    edge = (m & ~eroded)[1:-1, 1:-1]
    thick = edge.copy()
    for dy, dx in ((0, 1), (1, 0)):
        thick |= np.roll(np.roll(edge, dy, 0), dx, 1)
    return thick & mask.astype(bool) | edge


def compose_examples(rows: pd.DataFrame, tile: int = 128, alpha: float = 0.5) -> bytes:
    """PNG of image + heat-map overlay (jet, alpha) with ground-truth contour for each example row."""
    pad, head = 4, 16
    n = len(rows)
    canvas = Image.new("RGB", (n * (2 * tile + pad) + pad, tile + head + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, r in enumerate(rows.itertuples(index=False)):
        img = _decode(r.image_png, "RGB", tile)
        heat = _decode(r.map_png, "L", tile)
        mask = _decode(r.mask_png, "L", tile)
        if img is None:
            img = np.full((tile, tile, 3), 200, np.uint8)
        over = img.copy()
        if heat is not None:
            over = (alpha * jet(heat / 255.0) + (1 - alpha) * img).astype(np.uint8)
        if mask is not None:
            over[_contour(mask > 127)] = (255, 255, 255)
        x0 = pad + i * (2 * tile + pad)
        canvas.paste(Image.fromarray(img), (x0, head))
        canvas.paste(Image.fromarray(over), (x0 + tile, head))
        lab = "anomalous" if r.label == 1 else "normal"
        score = f"{r.score:.3g}" if r.score is not None and not pd.isna(r.score) else "?"
        draw.text((x0, 2), f"{r.pick}: {lab}, score {score}", fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def gallery(maps: pd.DataFrame, cells: pd.DataFrame, max_rows: int = 60) -> list[GalleryRow]:
    """Best/median/worst examples per (dataset, category, method).

    Taken from the cell with the largest ratio that has maps (lowest seed, first config), so the gallery shows
    the most contaminated setting the run covers.
    """
    if maps.empty or cells.empty:
        return []
    have = cells[cells["cell_id"].isin(set(maps["cell_id"]))].copy()
    if have.empty:
        return []
    have["_r"] = have["ratio"].fillna(have["count"]).astype(float)
    have = have.sort_values(
        ["dataset", "category", "method", "_r", "seed", "config"],
        ascending=[True, True, True, False, True, True],
    )
    picks = have.drop_duplicates(["dataset", "category", "method"])
    out: list[GalleryRow] = []
    order = {"best": 0, "median": 1, "worst": 2}
    for cell in picks.head(max_rows).itertuples(index=False):
        rows = maps[maps["cell_id"] == cell.cell_id].copy()
        rows["_o"] = rows["pick"].map(order).fillna(9)
        rows = rows.sort_values(["_o", "image_id"]).drop_duplicates("pick").drop(columns="_o")
        png = compose_examples(rows)
        amount = f"ratio {cell.ratio:g}" if pd.notna(cell.ratio) else f"{int(cell.count)} injected"
        caption = (
            f"{cell.dataset} / {cell.category} — {variant_label(cell.method, cell.config, False)}, {amount}, "
            f"seed {cell.seed}, cell {cell.cell_id}"
        )
        out.append(GalleryRow(caption, "data:image/png;base64," + base64.b64encode(png).decode("ascii")))
    return out
