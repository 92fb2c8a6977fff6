"""Build the HTML report of a run directory: ``python -m reports.build RUN_DIR [--out FILE]``.

Reads only the run directory (never funad/harness), so any old run can be re-reported. Alongside the HTML it
writes ``<out stem>_tables/`` with every table as CSV (raw numbers, metrics in [0, 1]) and Markdown (as
shown in the report, in %), plus ``main.tex`` for the main table. All files are written atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.offline

from reports import html as H
from reports import plots as P
from reports import stats as S
from reports import tables as T
from reports.load import METRICS, ORACLE, RunData, load_run, parse_versions
from reports.paper import display_paper, paper_table
from rundir import PLAN_FILE
from rundir import atomic_write as write_atomic  # the run directory's one write rule

NO_PLAN = f"cannot be listed: this run has no {PLAN_FILE} (it predates the planned grid file)"


def _write_table(folder: Path, name: str, raw: pd.DataFrame, shown: pd.DataFrame) -> list[Path]:
    """CSV of the raw numbers and Markdown of the displayed text."""
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    write_atomic(csv, raw.to_csv(index=False))
    write_atomic(md, T.to_markdown(shown))
    return [csv, md]


def _environment(results: pd.DataFrame) -> pd.DataFrame:
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


def _summary(
    data: RunData, prepared: pd.DataFrame, missing: pd.DataFrame | None, files: list[Path]
) -> H.Section:
    res = prepared
    n_ok = int((res["status"] == "ok").sum()) if len(res) else 0
    n_bad = len(res) - n_ok
    facts = pd.DataFrame(
        [
            ("run directory", str(data.run_dir)),
            ("cells with a result", str(len(res))),
            ("ok", str(n_ok)),
            ("failed", str(n_bad)),
            ("missing (planned, no result)", NO_PLAN if missing is None else str(len(missing))),
            ("datasets", ", ".join(sorted(res["dataset"].dropna().astype(str).unique()))),
            ("methods", ", ".join(sorted(res["method"].dropna().astype(str).unique()))),
            ("categories", str(res["category"].nunique())),
            ("ratios", ", ".join(f"{r:g}" for r in sorted(res["ratio"].dropna().unique()))),
            ("seeds", ", ".join(str(s) for s in sorted(res["seed"].dropna().unique()))),
        ],
        columns=["", "value"],
    )
    sec = H.Section("summary", "Summary")
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
            + "".join(f"<li>{H.esc(p)}</li>" for p in data.problems)
            + "</ul></div>"
        )
    sec.add(H.table(facts))
    sec.add(
        '<p class="note">Headline numbers are last-epoch values. Dataset means are arithmetic means over '
        "categories of the per-category means over seeds; ± is the sample std (ddof = 1) over seeds of the "
        "per-seed category means; n = number of seeds. Metrics are shown in %. Best-on-test (oracle) numbers "
        "appear only in the separately labelled oracle section.</p>"
    )
    if files:
        sec.add(
            '<p class="note files">Tables also written to: '
            + ", ".join(f"<code>{H.esc(p.name)}</code>" for p in files)
            + f" in <code>{H.esc(files[0].parent)}</code></p>"
        )
    return sec


def _robustness_section(shown: pd.DataFrame) -> H.Section:
    """How much each variant loses from ratio 0 to each ratio (sortable: click a header)."""
    return H.Section("robustness", "Robustness (change from ratio 0)").add(
        '<p class="note">Change of each metric from ratio 0 to each ratio, in percentage points: the mean '
        "over the (category, seed) cells run at both ratios of the difference noisy − clean, with a seeded "
        "bootstrap 95% CI over those cells (BCa); n = matched cells. Click a header to sort. Also in "
        "robustness.csv / robustness.md.</p>",
        H.table(shown, empty="No ratio-0 cells to compare with.", sortable=True),
    )


def _stats_sections(ranks: list[S.RankResult], shown: dict[str, pd.DataFrame]) -> list[H.Section]:
    """Critical-difference diagrams, the pairwise comparisons and the per-cell AUROC intervals."""
    cd = H.Section("cd", "Critical-difference diagrams").add(
        '<p class="note">Per dataset and ratio: each variant\'s average rank over categories (mean over '
        "seeds per category first; 1 = best). Friedman test over the categories; Nemenyi critical difference "
        "CD = q<sub>0.05</sub>·√(k(k+1)/6N) (Demšar 2006). A thick bar joins variants whose average ranks "
        "differ by less than the CD (not significantly different); when the Friedman test does not reject "
        "equal ranks one bar joins all. Also in critical_difference.csv.</p>",
        H.figures(P.cd_diagrams(ranks), grid=False),
        H.table(shown["critical_difference"], empty="No rankable groups.", sortable=True),
    )
    pairwise = H.Section("pairwise", "Pairwise comparisons").add(
        '<p class="note">Every pair of variants at each dataset and ratio: a − b in percentage points, the '
        "mean over matched (category, seed) cells with a seeded bootstrap 95% CI (BCa) and the Wilcoxon "
        "signed-rank p-value (unadjusted; pairwise.csv also has the Benjamini-Hochberg p_fdr). "
        "<em>within cell noise</em> = yes when |a − b| in image AUROC is smaller than the cells' own "
        "test-set noise (mean over the matched cells of √(h<sub>a</sub>² + h<sub>b</sub>²), h = a cell's "
        "AUROC CI half-width). Click a header to sort.</p>",
        H.table(shown["pairwise"], empty="Fewer than two variants: nothing to compare.", sortable=True),
    )
    cells = H.Section("cell_ci", "Per-cell AUROC intervals").add(
        '<p class="note">Image AUROC of each cell recomputed from its per-image scores, with a seeded '
        "percentile bootstrap 95% CI that resamples test images within each label. Also in "
        "cell_uncertainty.csv.</p>",
        H.table(shown["cell_uncertainty"], empty="No per-image scores in this run.", sortable=True),
    )
    return [cd, pairwise, cells]


def render(data: RunData, tables_dir: Path | None) -> tuple[str, list[Path]]:
    """The report's HTML, and the table files written to ``tables_dir`` (if given)."""
    prepared = T.prepare(data.results)
    ok = prepared[prepared["status"] == "ok"]
    main = T.main_table(ok)
    cat = T.category_table(ok)
    orc = T.oracle_table(ok)
    sens = T.sensitivity_table(ok)
    paper = paper_table(main)
    cost = T.cost_table(prepared, data.spec)
    fails = T.failures_table(prepared)
    missing = T.missing_cells(data.plan, prepared)
    missing_rows = pd.DataFrame(columns=T.MISSING_COLUMNS) if missing is None else missing
    cell_ci = S.cell_uncertainty(data.run_dir, ok, data.problems)
    cat = cat.assign(image_auroc_cell_hw=S.category_cell_ci(cat, ok, cell_ci))
    pairwise = S.pairwise_table(ok, cell_ci)
    robust = S.robustness_table(ok, cell_ci)
    ranks = S.rank_results(ok)

    shown = {
        "main": T.display(main),
        "per_category": S.display_category_ci(T.display(cat), cat),
        "oracle": T.display(orc, list(ORACLE), label=T.ORACLE_LABEL),
        "paper": display_paper(paper),
        "sensitivity": T.display(sens),
        "cost": T.display_cost(cost),
        "failures": fails.assign(error=fails["error"].fillna("")).astype(str) if len(fails) else fails,
        "missing": missing_rows.astype(str) if len(missing_rows) else missing_rows,
        "robustness": S.display_robustness(robust),
        "pairwise": S.display_pairwise(pairwise),
        "critical_difference": S.display_ranks(ranks),
        "cell_uncertainty": S.display_cells(cell_ci),
    }
    raw = {
        "main": main,
        "per_category": cat,
        "oracle": orc,
        "paper": paper,
        "sensitivity": sens,
        "cost": cost,
        "failures": fails,
        "missing": missing_rows,
        "robustness": robust,
        "pairwise": pairwise,
        "critical_difference": S.rank_table(ranks),
        "cell_uncertainty": cell_ci,
    }
    files: list[Path] = []
    if tables_dir is not None:
        for name in raw:
            files += _write_table(tables_dir, name, raw[name], shown[name])
        tex = tables_dir / "main.tex"
        write_atomic(
            tex,
            T.to_latex(
                shown["main"],
                f"Run {data.name}: mean ± std over seeds (n), in %; "
                "dataset values are means over categories.",
            ),
        )
        files.append(tex)

    sections = [_summary(data, prepared, missing, files)]
    have_ok = not ok.empty
    if have_ok:
        sections.append(
            H.Section("main", "Main results (dataset × method × ratio)").add(
                H.table(
                    shown["main"],
                    caption="Headline (last-epoch) metrics in %, mean ± std over seeds; n = seeds, "
                    "n_categories = categories averaged. Also in main.csv / main.md / main.tex.",
                ),
            )
        )
        sections.append(_robustness_section(shown["robustness"]))
        sections.append(
            H.Section("ratio", "Metrics against contamination ratio").add(
                '<p class="note">One line per method (and swept configuration); shaded band = ± std '
                "over seeds.</p>",
                H.figures(P.ratio_plots(main)),
            )
        )
        if not orc.empty:
            sections.append(
                H.Section("oracle", "Oracle (best-on-test epoch) — not headline").add(
                    '<div class="banner">These values pick the epoch with the best <em>test</em> '
                    "score. They are an "
                    "upper bound, not a result: never compare them with headline numbers.</div>",
                    H.table(shown["oracle"], oracle=True),
                    H.figures(P.oracle_plots(orc)),
                )
            )
        sections.append(
            H.Section("categories", "Per category").add(
                H.figures(P.category_bars(cat)),
                H.figures(P.heatmaps(cat)),
                "<h3>Per category × ratio (mean ± std over seeds)</h3>",
                H.table(shown["per_category"]),
            )
        )
        sections += _stats_sections(ranks, shown)
    sections.append(
        H.Section("paper", "Ours vs paper").add(
            '<p class="note">Reference numbers from <code>reports/paper_reference.csv</code>: second-hand '
            "transcriptions — verify against the papers before relying on them. Matching is on "
            "dataset, method, ratio "
            "(or absolute count) and overlap; differences are ours − paper in %-points. Backbones and "
            "preprocessing may differ from the papers'.</p>",
            H.table(shown["paper"]),
        )
    )
    if have_ok and not sens.empty:
        sections.append(
            H.Section("sensitivity", "Hyper-parameter sensitivity").add(
                '<p class="note">For each swept setting: metrics per value, other settings of the '
                "method averaged "
                "within a cell group.</p>",
                H.figures(P.sensitivity_plots(sens)),
                H.table(shown["sensitivity"]),
            )
        )
    if have_ok:
        ok_rows = prepared[prepared["status"] == "ok"]
        train = P.training_plots(data.history, prepared)
        diag = P.diagnostic_plots(ok_rows, data.history)
        sections.append(
            H.Section("training", "Training dynamics").add(
                H.figures(train + diag, grid=False)
                if train or diag
                else '<p class="note">No training history in this run.</p>'
            )
        )
        sections.append(
            H.Section("gallery", "Anomaly maps").add(
                '<p class="note">Per category and method, the cell with the largest ratio (lowest '
                "seed): best, median "
                "and worst examples; left image, right heat map (jet, α = 0.5) with the ground-truth "
                "contour in "
                "white.</p>",
                H.gallery(P.gallery(data.maps, ok)),
            )
        )
    sections.append(
        H.Section("cost", "Cost").add(
            '<p class="note">Over every cell\'s final row (failed included). GPU-hours = Σ wall_s × '
            "GPUs per trial "
            f"({T.gpu_fraction(data.spec):g} from resources.gpu, 1 if unset) / 3600 over cells run on "
            "a GPU.</p>",
            H.table(shown["cost"]),
            H.figures(P.cost_plot(prepared)),
        )
    )
    sections.append(
        H.Section("failures", "Failures and missing cells").add(
            H.table(shown["failures"], empty="No failed cells."),
            "<h3>Missing cells (in the run's plan, no result row)</h3>",
            H.table(shown["missing"], empty=NO_PLAN if missing is None else "None."),
        )
    )
    sections.append(
        H.Section("environment", "Environment").add(H.table(_environment(prepared), empty="unknown"))
    )
    sections.append(
        H.Section("spec", "Spec (sweep.yaml)").add(
            H.pre(data.spec_text) if data.spec_text else '<p class="note">sweep.yaml not found.</p>'
        )
    )

    title = f"funad-bench report: {data.name}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{len(prepared)} cells, {len(ok)} ok · metrics: {', '.join(METRICS)} · built {stamp}"
    return H.document(title, subtitle, sections, plotly.offline.get_plotlyjs()), files


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Build the report (default ``RUN_DIR/report.html``) and its table files; return the HTML path."""
    run_dir = Path(run_dir)
    out_path = Path(out) if out is not None else run_dir / "report.html"
    data = load_run(run_dir)
    text, _ = render(data, out_path.parent / f"{out_path.stem}_tables")
    write_atomic(out_path, text)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the report path."""
    ap = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="run directory (contains results/, sweep.yaml)")
    ap.add_argument("--out", type=Path, default=None, help="output HTML file (default RUN_DIR/report.html)")
    args = ap.parse_args(argv)
    try:
        path = build_report(args.run_dir, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["build_report", "main", "render"]
