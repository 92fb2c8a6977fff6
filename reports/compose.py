"""The report's HTML page, assembled from a computed report (reports.compute): one function per section,
in the page's order. Run-provided text is escaped by reports.html; nothing here computes a number."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.offline

from reports.compute import Computed
from reports.html import Section, document, esc, figures, gallery, pre, table
from reports.load import METRICS, RunData
from rundir import PLAN_FILE, SPEC_FILE

NO_PLAN = f"cannot be listed: this run has no {PLAN_FILE} (it predates the planned grid file)"


def _summary(data: RunData, report: Computed, files: list[Path]) -> Section:
    """What the run holds, what went wrong, and where the table files are."""
    res = report.prepared
    n_ok = int((res["status"] == "ok").sum()) if len(res) else 0
    n_bad = len(res) - n_ok
    facts = pd.DataFrame(
        [
            ("run directory" if len(data.run_dirs) == 1 else "run directories",
             ", ".join(str(d) for d in data.run_dirs)),
            ("cells with a result", str(len(res))),
            ("ok", str(n_ok)),
            ("failed", str(n_bad)),
            ("missing (planned, no result)",
             str(len(report.raw["missing"])) if report.plan_known else NO_PLAN),
            ("datasets", ", ".join(sorted(res["dataset"].dropna().astype(str).unique()))),
            ("methods", ", ".join(sorted(res["method"].dropna().astype(str).unique()))),
            ("categories", str(res["category"].nunique())),
            ("ratios", ", ".join(f"{r:g}" for r in sorted(res["ratio"].dropna().unique()))),
            ("seeds", ", ".join(str(s) for s in sorted(res["seed"].dropna().unique()))),
        ],
        columns=["", "value"],
    )
    sec = Section("summary", "Summary")
    if n_ok == 0:
        sec.add(
            '<div class="banner bad"><strong>No successful cells.</strong> This run has no result '
            "row with status "
            "<code>ok</code>, so there are no metric tables or plots; see Failures and the spec below.</div>"
        )
    if n_bad:
        sec.add(f'<div class="banner">{n_bad} cell(s) failed: see <a href="#failures">Failures</a>.</div>')
    if data.problems:
        sec.add(
            '<div class="banner">Some files could not be read and were skipped:<ul>'
            + "".join(f"<li>{esc(p)}</li>" for p in data.problems)
            + "</ul></div>"
        )
    sec.add(table(facts))
    sec.add(
        '<p class="note">Headline numbers are last-epoch values. Dataset means are arithmetic means over '
        "categories of the per-category means over seeds; ± is the sample std (ddof = 1) over seeds of the "
        "per-seed category means; n = number of seeds. Metrics are shown in %. Best-on-test (oracle) numbers "
        "appear only in the separately labelled oracle section.</p>"
    )
    if files:
        sec.add(
            '<p class="note files">Tables also written to: '
            + ", ".join(f"<code>{esc(p.name)}</code>" for p in files)
            + f" in <code>{esc(files[0].parent)}</code></p>"
        )
    return sec


def _robustness_section(shown: pd.DataFrame) -> Section:
    """How much each variant loses from ratio 0 to each ratio (sortable: click a header)."""
    return Section("robustness", "Robustness (change from ratio 0)").add(
        '<p class="note">Change of each metric from ratio 0 to each ratio, in percentage points: the mean '
        "over the (category, seed) cells run at both ratios of the difference noisy − clean, with a seeded "
        "bootstrap 95% CI over those cells (BCa); n = matched cells. Click a header to sort. Also in "
        "robustness.csv / robustness.md.</p>",
        table(shown, empty="No ratio-0 cells to compare with.", sortable=True),
    )


def _stats_sections(report: Computed) -> list[Section]:
    """Critical-difference diagrams, the pairwise comparisons and the per-cell AUROC intervals."""
    cd = Section("cd", "Critical-difference diagrams").add(
        '<p class="note">Per dataset and ratio: each variant\'s average rank over categories (mean over '
        "seeds per category first; 1 = best). Friedman test over the categories; Nemenyi critical difference "
        "CD = q<sub>0.05</sub>·√(k(k+1)/6N) (Demšar 2006). A thick bar joins variants whose average ranks "
        "differ by less than the CD (not significantly different); when the Friedman test does not reject "
        "equal ranks one bar joins all. Also in critical_difference.csv.</p>",
        figures(report.figures.cd, grid=False),
        table(report.shown["critical_difference"], empty="No rankable groups.", sortable=True),
    )
    pairwise = Section("pairwise", "Pairwise comparisons").add(
        '<p class="note">Every pair of variants at each dataset and ratio: a − b in percentage points, the '
        "mean over matched (category, seed) cells with a seeded bootstrap 95% CI (BCa) and the Wilcoxon "
        "signed-rank p-value (unadjusted; pairwise.csv also has the Benjamini-Hochberg p_fdr). "
        "<em>within cell noise</em> = yes when |a − b| in image AUROC is smaller than the cells' own "
        "test-set noise (mean over the matched cells of √(h<sub>a</sub>² + h<sub>b</sub>²), h = a cell's "
        "AUROC CI half-width). Click a header to sort.</p>",
        table(report.shown["pairwise"], empty="Fewer than two variants: nothing to compare.", sortable=True),
    )
    cells = Section("cell_ci", "Per-cell AUROC intervals").add(
        '<p class="note">Image AUROC of each cell recomputed from its per-image scores, with a seeded '
        "percentile bootstrap 95% CI that resamples test images within each label. Also in "
        "cell_uncertainty.csv.</p>",
        table(report.shown["cell_uncertainty"], empty="No per-image scores in this run.", sortable=True),
    )
    return [cd, pairwise, cells]


def _metric_sections(report: Computed) -> list[Section]:
    """The sections of a run with at least one ok cell: main table, robustness, ratio plots, oracle, per
    category, and the statistics."""
    shown, figs = report.shown, report.figures
    sections = [
        Section("main", "Main results (dataset × method × ratio)").add(
            table(
                shown["main"],
                caption="Headline (last-epoch) metrics in %, mean ± std over seeds; n = seeds, "
                "n_categories = categories averaged. Also in main.csv / main.md / main.tex.",
            ),
        ),
        _robustness_section(shown["robustness"]),
        Section("ratio", "Metrics against contamination ratio").add(
            '<p class="note">One line per method (and swept configuration); shaded band = ± std '
            "over seeds.</p>",
            figures(figs.ratio),
        ),
    ]
    if not report.raw["oracle"].empty:
        sections.append(
            Section("oracle", "Oracle (best-on-test epoch) — not headline").add(
                '<div class="banner">These values pick the epoch with the best <em>test</em> '
                "score. They are an "
                "upper bound, not a result: never compare them with headline numbers.</div>",
                table(shown["oracle"], oracle=True),
                figures(figs.oracle),
            )
        )
    sections.append(
        Section("categories", "Per category").add(
            figures(figs.category_bars),
            figures(figs.heatmaps),
            "<h3>Per category × ratio (mean ± std over seeds)</h3>",
            table(shown["per_category"]),
        )
    )
    return sections + _stats_sections(report)


def _paper_section(shown: pd.DataFrame) -> Section:
    return Section("paper", "Ours vs paper").add(
        '<p class="note">Reference numbers from <code>reports/paper_reference.csv</code>: second-hand '
        "transcriptions — verify against the papers before relying on them. Matching is on "
        "dataset, method, ratio "
        "(or absolute count) and overlap; differences are ours − paper in %-points. Backbones and "
        "preprocessing may differ from the papers'. <em>settings</em> says whether our cells ran the "
        "method as its paper describes it or as its authors released it "
        "(<code>reference_quirks: true</code>; README, \"Reproducing a published protocol\").</p>",
        table(shown),
    )


def _sensitivity_section(report: Computed) -> Section:
    return Section("sensitivity", "Hyper-parameter sensitivity").add(
        '<p class="note">For each swept setting: metrics per value, other settings of the '
        "method averaged "
        "within a cell group.</p>",
        figures(report.figures.sensitivity),
        table(report.shown["sensitivity"]),
    )


def _training_section(report: Computed) -> Section:
    plots = report.figures.training
    return Section("training", "Training dynamics").add(
        figures(plots, grid=False) if plots else '<p class="note">No training history in this run.</p>'
    )


def _gallery_section(report: Computed) -> Section:
    return Section("gallery", "Anomaly maps").add(
        '<p class="note">Per category and method, the cell with the largest ratio (lowest '
        "seed): best, median "
        "and worst examples; left image, right heat map (jet, α = 0.5) with the ground-truth "
        "contour in "
        "white.</p>",
        gallery(report.figures.gallery),
    )


def _cost_section(report: Computed) -> Section:
    return Section("cost", "Cost").add(
        '<p class="note">Over every cell\'s final row (failed included). GPU-hours = Σ wall_s × '
        "GPUs per trial "
        f"({report.gpu_fraction:g} from resources.gpu, 1 if unset) / 3600 over cells run on "
        "a GPU.</p>",
        table(report.shown["cost"]),
        figures(report.figures.cost),
    )


def _failures_section(report: Computed) -> Section:
    return Section("failures", "Failures and missing cells").add(
        table(report.shown["failures"], empty="No failed cells."),
        "<h3>Missing cells (in the run's plan, no result row)</h3>",
        table(report.shown["missing"], empty="None." if report.plan_known else NO_PLAN),
    )


def _runs_table(res: pd.DataFrame) -> pd.DataFrame:
    """One row per joined run: its cells, how many are ok, its methods."""
    if res.empty:
        return pd.DataFrame(columns=["run_dir", "cells", "ok", "methods"])
    return res.groupby("run_dir").agg(
        cells=("cell_id", "size"),
        ok=("status", lambda s: int((s == "ok").sum())),
        methods=("method", lambda s: ", ".join(sorted(set(map(str, s))))),
    ).reset_index()


def _join_section(data: RunData) -> Section:
    """Which runs were joined, and the groups of cells whose splits the runs drew differently."""
    sec = Section("join", "Runs joined")
    sec.add(table(_runs_table(data.results)))
    join = data.join if data.join is not None else pd.DataFrame()
    paired = int(join["paired"].sum()) if len(join) else 0
    sec.add(
        '<p class="note">Cells are paired (statistics) and averaged (tables) only where they trained and '
        "tested on the same images: the same split list (splits/&lt;cell_id&gt;.csv, compared by sha256). "
        f"{paired} of {len(join)} groups of cells (dataset, category, protocol, ratio, seed) that several "
        "runs hold were joined; the others below are reported side by side, never paired.</p>"
    )
    unpaired = join[~join["paired"].astype(bool)] if len(join) else join
    sec.add(table(unpaired, empty="Every group held by several runs was joined."))
    return sec


def _spec_section(data: RunData) -> Section:
    return Section("spec", f"Spec ({SPEC_FILE})").add(
        pre(data.spec_text) if data.spec_text else f'<p class="note">{SPEC_FILE} not found.</p>'
    )


def compose(data: RunData, report: Computed, files: list[Path], built: datetime | None = None) -> str:
    """The whole page; `files` are the table files written (listed in the summary), `built` the time
    stamped in the header (default now)."""
    sections = [_summary(data, report, files)]
    if len(data.run_dirs) > 1:
        sections.append(_join_section(data))
    if report.have_ok:
        sections += _metric_sections(report)
    sections.append(_paper_section(report.shown["paper"]))
    if report.have_ok and not report.raw["sensitivity"].empty:
        sections.append(_sensitivity_section(report))
    if report.have_ok:
        sections += [_training_section(report), _gallery_section(report)]
    sections += [
        _cost_section(report),
        _failures_section(report),
        Section("environment", "Environment").add(table(report.environment, empty="unknown")),
        _spec_section(data),
    ]
    title = f"funad-bench report: {data.name}"
    stamp = (built or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{len(report.prepared)} cells, {len(report.ok)} ok · metrics: {', '.join(METRICS)} "
                f"· built {stamp}")
    return document(title, subtitle, sections, plotly.offline.get_plotlyjs())
