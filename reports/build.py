"""Build the HTML report of a run directory: ``python -m reports.build RUN_DIR [--out FILE]``, or one
report over several runs: ``python -m reports.build RUN_A RUN_B ... --out DIR`` (reports.join).

Reads only the run directory (never funad/harness), so any old run can be re-reported. Alongside the HTML it
writes ``<out stem>_tables/`` with every table as CSV (raw numbers, metrics in [0, 1]) and Markdown (as
shown in the report, in %), plus ``main.tex`` for the main table. All files are written atomically.

The steps, one module each: read (reports.load), compute the tables, statistics and figures
(reports.compute), write the table files (reports.write), compose the page (reports.compose), write it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reports.compose import compose
from reports.compute import compute
from reports.join import load_runs
from reports.write import write_html, write_tables
from rundir import EXIT_OK, EXIT_USAGE, REPORT_FILE, RESULTS_DIR, SPEC_FILE, report_tables_dir


def build_report(run_dir: str | Path | Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Build the report of one run (default ``RUN_DIR/report.html``) or of several joined (reports.join;
    `out` required), and its table files; return the HTML path. An `out` that is a folder (existing, or a
    path without a suffix) gets ``report.html``."""
    dirs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(d) for d in run_dir]
    if out is None and len(dirs) > 1:
        raise ValueError("a report over several runs needs --out (a folder or an .html file)")
    out_path = Path(out) if out is not None else dirs[0] / REPORT_FILE
    if out_path.is_dir() or not out_path.suffix:  # a folder: the report is its report.html
        out_path = out_path / REPORT_FILE
    data = load_runs(dirs)
    report = compute(data)
    files = write_tables(report_tables_dir(out_path), report, data.name)
    return write_html(out_path, compose(data, report, files))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the report path. Exit codes: rundir.exits."""
    ap = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                    help=f"run directory (contains {RESULTS_DIR}/, {SPEC_FILE}); several: one joined report")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output HTML file, or a folder for {REPORT_FILE} (default RUN_DIR/{REPORT_FILE}; "
                    "required for several runs)")
    args = ap.parse_args(argv)
    try:
        path = build_report(args.run_dirs, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["build_report", "main"]
