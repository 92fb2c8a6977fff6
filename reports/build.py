"""Build the HTML report of a run directory: ``python -m reports.build RUN_DIR [--out FILE]``.

Reads only the run directory (never funad/harness), so any old run can be re-reported. Alongside the HTML it
writes ``<out stem>_tables/`` with every table as CSV (raw numbers, metrics in [0, 1]) and Markdown (as
shown in the report, in %), plus ``main.tex`` for the main table. All files are written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.offline

from reports import html as H
from reports import plots as P
from reports import tables as T
from reports.load import METRICS, ORACLE, RunData, load_run, parse_versions
from reports.paper import display_paper, paper_table


def write_atomic(path: Path, data: str | bytes) -> None:
    """Temp file in the same folder + rename: readers never see a half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _summary(data: RunData, prepared: pd.DataFrame, missing: pd.DataFrame, files: list[Path]) -> H.Section:
    res = prepared
    n_ok = int((res["status"] == "ok").sum()) if len(res) else 0
    n_bad = len(res) - n_ok
    facts = pd.DataFrame(
        [
            ("run directory", str(data.run_dir)),
            ("cells with a result", str(len(res))),
            ("ok", str(n_ok)),
            ("failed", str(n_bad)),
            ("missing from the sweep.yaml grid", str(len(missing))),
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
    missing = T.missing_cells(data.spec, prepared)

    shown = {
        "main": T.display(main),
        "per_category": T.display(cat),
        "oracle": T.display(orc, list(ORACLE), label=T.ORACLE_LABEL),
        "paper": display_paper(paper),
        "sensitivity": T.display(sens),
        "cost": T.display_cost(cost),
        "failures": fails.assign(error=fails["error"].fillna("")).astype(str) if len(fails) else fails,
        "missing": missing.astype(str) if len(missing) else missing,
    }
    raw = {
        "main": main,
        "per_category": cat,
        "oracle": orc,
        "paper": paper,
        "sensitivity": sens,
        "cost": cost,
        "failures": fails,
        "missing": missing,
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
        train = P.training_plots(data.history, prepared)
        sections.append(
            H.Section("training", "Training dynamics").add(
                H.figures(train, grid=False)
                if train
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
            "<h3>Missing cells (in sweep.yaml's grid, no result row)</h3>",
            H.table(shown["missing"], empty="None (or the grid could not be derived from sweep.yaml)."),
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

__all__ = ["build_report", "main", "render", "write_atomic"]
