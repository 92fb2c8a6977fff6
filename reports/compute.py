"""Everything the report shows, as data: the tables (raw numbers and their display text), the statistics
and the figures of one run. Nothing here writes a file or HTML (reports.write and reports.compose do)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from reports import plots, stats, tables
from reports.format import (
    display,
    display_category_ci,
    display_cells,
    display_cost,
    display_failures,
    display_missing,
    display_pairwise,
    display_paper,
    display_ranks,
    display_robustness,
)
from reports.load import ORACLE, RunData
from reports.paper import paper_table
from reports.plots import GalleryRow, Plot


@dataclass
class Figures:
    """The report's figures by section; a section that is not shown has none."""

    ratio: list[Plot] = field(default_factory=list)
    oracle: list[Plot] = field(default_factory=list)
    category_bars: list[Plot] = field(default_factory=list)
    heatmaps: list[Plot] = field(default_factory=list)
    cd: list[Plot] = field(default_factory=list)
    sensitivity: list[Plot] = field(default_factory=list)
    training: list[Plot] = field(default_factory=list)
    gallery: list[GalleryRow] = field(default_factory=list)
    cost: list[Plot] = field(default_factory=list)


@dataclass
class Computed:
    """One run's report as data."""

    #: every cell's final result row with its derived keys (config, count), failed cells included
    prepared: pd.DataFrame
    #: the ok rows of `prepared`: what every metric table and statistic is computed from
    ok: pd.DataFrame
    #: False when the run has no plan.parquet, so its missing cells cannot be listed
    plan_known: bool
    #: name -> the table's numbers (metrics in [0, 1]): the CSV files, in the order they are written
    raw: dict[str, pd.DataFrame]
    #: name -> the table as shown (text, metrics in %): the Markdown files and the HTML
    shown: dict[str, pd.DataFrame]
    ranks: list[stats.RankResult]
    environment: pd.DataFrame
    #: GPUs per trial that the cost table's GPU-hours assume
    gpu_fraction: float
    figures: Figures

    @property
    def have_ok(self) -> bool:
        """Whether any cell succeeded (without one there are no metric tables or plots)."""
        return not self.ok.empty


def _shown(raw: dict[str, pd.DataFrame], ranks: list[stats.RankResult]) -> dict[str, pd.DataFrame]:
    """The display text of every table."""
    return {
        "main": display(raw["main"]),
        "per_category": display_category_ci(display(raw["per_category"]), raw["per_category"]),
        "oracle": display(raw["oracle"], list(ORACLE), label=tables.ORACLE_LABEL),
        "paper": display_paper(raw["paper"]),
        "sensitivity": display(raw["sensitivity"]),
        "cost": display_cost(raw["cost"]),
        "failures": display_failures(raw["failures"]),
        "missing": display_missing(raw["missing"]),
        "robustness": display_robustness(raw["robustness"]),
        "pairwise": display_pairwise(raw["pairwise"]),
        "critical_difference": display_ranks(ranks),
        "cell_uncertainty": display_cells(raw["cell_uncertainty"]),
    }


def _figures(data: RunData, prepared: pd.DataFrame, ok: pd.DataFrame, raw: dict[str, pd.DataFrame],
             ranks: list[stats.RankResult]) -> Figures:
    """The figures of the sections the report shows (metric figures only when a cell succeeded)."""
    figures = Figures(cost=plots.cost_plot(prepared))
    if ok.empty:
        return figures
    figures.ratio = plots.ratio_plots(raw["main"])
    if not raw["oracle"].empty:
        figures.oracle = plots.oracle_plots(raw["oracle"])
    figures.category_bars = plots.category_bars(raw["per_category"])
    figures.heatmaps = plots.heatmaps(raw["per_category"])
    figures.cd = plots.cd_diagrams(ranks)
    if not raw["sensitivity"].empty:
        figures.sensitivity = plots.sensitivity_plots(raw["sensitivity"])
    figures.training = plots.training_plots(data.history, prepared) + plots.diagnostic_plots(ok, data.history)
    figures.gallery = plots.gallery(data.maps, ok)
    return figures


def compute(data: RunData) -> Computed:
    """Tables, statistics and figures of a run; the per-image scores are read here (only the ok cells'),
    and a scores file that cannot be read joins ``data.problems``."""
    prepared = tables.prepare(data.results)
    ok = prepared[prepared["status"] == "ok"]
    main = tables.main_table(ok)
    missing = tables.missing_cells(data.plan, prepared)
    ids = stats.ok_cell_ids(ok)
    scores = data.scores(ids) if ids else pd.DataFrame()
    cell_ci = stats.cell_uncertainty(ok, scores)
    cat = tables.category_table(ok)
    cat = cat.assign(image_auroc_cell_hw=stats.category_cell_ci(cat, ok, cell_ci))
    ranks = stats.rank_results(ok)
    raw = {
        "main": main,
        "per_category": cat,
        "oracle": tables.oracle_table(ok),
        "paper": paper_table(main, settings=tables.settings_of(ok)),
        "sensitivity": tables.sensitivity_table(ok),
        "cost": tables.cost_table(prepared, data.spec),
        "failures": tables.failures_table(prepared),
        "missing": pd.DataFrame(columns=tables.MISSING_COLUMNS) if missing is None else missing,
        "robustness": stats.robustness_table(ok, cell_ci),
        "pairwise": stats.pairwise_table(ok, cell_ci),
        "critical_difference": stats.rank_table(ranks),
        "cell_uncertainty": cell_ci,
    }
    return Computed(
        prepared=prepared,
        ok=ok,
        plan_known=missing is not None,
        raw=raw,
        shown=_shown(raw, ranks),
        ranks=ranks,
        environment=tables.environment_table(prepared),
        gpu_fraction=tables.gpu_fraction(data.spec),
        figures=_figures(data, prepared, ok, raw, ranks),
    )
