"""The report's files: every table as CSV (raw numbers, metrics in [0, 1]) and Markdown (as shown, in %),
the main table as LaTeX, and the HTML page; each written atomically (rundir.atomic_write), so a reader
of the run directory never sees half a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from reports.compute import Computed
from rundir import atomic_write

MAIN_TEX = "main.tex"


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-style Markdown table of a text frame (pipes and newlines escaped)."""

    def cell(v: Any) -> str:
        text = str(v).replace("|", "\\|").replace("\n", " ").replace("\r", " ")
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    if df.empty:
        return "_(no rows)_\n"
    lines = [
        "| " + " | ".join(cell(c) for c in df.columns) + " |",
        "|" + "|".join("---" for _ in df.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX specials so names like ``metal_nut`` compile."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str) -> str:
    """A booktabs table (no pandas/jinja dependency); ``±`` becomes ``$\\pm$``."""
    cols = list(df.columns)
    body = []
    for row in df.itertuples(index=False):
        body.append(" & ".join(latex_escape(v).replace("±", r"$\pm$") for v in row) + r" \\")
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            r"\begin{tabular}{" + "l" * len(cols) + "}",
            r"\toprule",
            " & ".join(latex_escape(c) for c in cols) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\caption{" + latex_escape(caption) + "}",
            r"\end{table}",
            "",
        ]
    )


def write_table(folder: Path, name: str, raw: pd.DataFrame, shown: pd.DataFrame) -> list[Path]:
    """CSV of the raw numbers and Markdown of the displayed text."""
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write(csv, raw.to_csv(index=False))
    atomic_write(md, to_markdown(shown))
    return [csv, md]


def write_tables(folder: Path, report: Computed, run_name: str) -> list[Path]:
    """Every table of the report into `folder` (CSV + Markdown each, then main.tex); the files written."""
    files: list[Path] = []
    for name, raw in report.raw.items():
        files += write_table(folder, name, raw, report.shown[name])
    caption = f"Run {run_name}: mean ± std over seeds (n), in %; dataset values are means over categories."
    files.append(atomic_write(folder / MAIN_TEX, to_latex(report.shown["main"], caption)))
    return files


def write_html(path: Path, text: str) -> Path:
    """The report page."""
    return atomic_write(path, text)
