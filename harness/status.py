"""`python -m harness.status RUN_DIR [--json]`: where a sweep stands, from the run directory alone.

Works while the sweep runs (from another shell or the cluster's head node), after it finished, and after
it crashed: it reads `plan.parquet` (the spec's grid), `results/` (what finished, ok or failed) and
`live.json` (what is running now, the ETA, the command that started it). Cells are counted as ok,
failed, running, not started, and "out of the grid" (results of cells the current spec no longer has).
Exit 0 when every cell of the spec is ok, 1 otherwise, 2 when RUN_DIR is not a run directory.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.progress import fmt_duration, live_is_current, read_live
from rundir import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PLAN_FILE,
    REPORT_FILE,
    RESULTS_DIR,
    SPEC_FILE,
    UnreadableFile,
    read_file,
    readable_rows,
)

STATUSES = ("ok", "failed", "running", "not started")


class NotARunDir(ValueError):
    """RUN_DIR has no sweep.yaml / plan.parquet: not a run directory (or not one of ours)."""


def _first_line(text: Any) -> str:
    lines = [ln for ln in str(text or "").splitlines() if ln.strip()]
    return lines[0] if lines else ""


def read_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """cell_id -> {status, error} of every readable result file (torn files count as not finished)."""
    return {
        row["cell_id"]: {"status": row["status"], "error": row["error"]}
        for row in readable_rows(run_dir / RESULTS_DIR, ["cell_id", "status", "error"])
        if row["cell_id"]
    }


def _sweep_state(live: dict[str, Any] | None, alive: bool) -> str:
    """running | finished | interrupted | stopped (a driver that died mid-sweep) | not running."""
    if alive:
        return "running"
    if live is None:
        return "not running"
    return "stopped" if live.get("state") == "running" else str(live.get("state", "not running"))


def collect(run_dir: str | Path) -> dict[str, Any]:
    """The status of a run directory as plain data (what --json prints)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise NotARunDir(f"{run}: not a directory")
    plan_path = run / PLAN_FILE
    if not (run / SPEC_FILE).is_file() or not plan_path.is_file():
        raise NotARunDir(f"{run}: not a run directory (no {SPEC_FILE} and {PLAN_FILE}; "
                         "python -m harness.sweep writes them before any cell runs)")
    columns = ["cell_id", "method", "dataset", "category"]
    try:
        plan = read_file(plan_path, strict=True, columns=columns, require=columns).rows()
    except UnreadableFile as exc:
        raise NotARunDir(str(exc)) from None
    results = read_results(run)
    live = read_live(run)
    alive = live is not None and live_is_current(live)
    running = {r["cell_id"]: r for r in (live or {}).get("running", [])} if alive else {}

    cells, groups = [], {}
    for row in plan:
        cid = row["cell_id"]
        res = results.get(cid)
        status = "ok" if res and res["status"] == "ok" else (
            "running" if cid in running else ("failed" if res else "not started"))
        cells.append({**row, "status": status})
        key = f"{row['method']} / {row['dataset']}"
        g = groups.setdefault(key, dict.fromkeys(STATUSES, 0))
        g[status] += 1
    in_plan = {r["cell_id"] for r in plan}
    counts = dict.fromkeys(STATUSES, 0)
    for c in cells:
        counts[c["status"]] += 1
    failed = [
        {"cell_id": c["cell_id"], "method": c["method"], "dataset": c["dataset"], "category": c["category"],
         "error": _first_line(results[c["cell_id"]].get("error"))}
        for c in cells if c["status"] == "failed"
    ]
    command = (live or {}).get("command") or shlex.join(
        [Path(sys.executable).name, "-m", "harness.sweep", str(run / SPEC_FILE)])
    report = run / REPORT_FILE
    return {
        "run_dir": str(run),
        "total": len(plan),
        "counts": counts,
        "out_of_grid": sorted(set(results) - in_plan),
        "by_method_dataset": groups,
        "failed": failed,
        "sweep": _sweep_state(live, alive),
        "stale_live_state": bool(live and live.get("state") == "running" and not alive),
        "running": list(running.values()),
        "eta_s": (live or {}).get("eta_s") if alive else None,
        "report": str(report) if report.is_file() else None,
        "resume_command": command,
        "complete": counts["ok"] == len(plan),
    }


def render(st: dict[str, Any]) -> str:
    c = st["counts"]
    lines = [
        f"run directory: {st['run_dir']}",
        f"sweep: {st['sweep']}" + (" (its driver stopped without finishing: crashed or killed)"
                                   if st["sweep"] == "stopped" else ""),
        f"cells: {st['total']}: {c['ok']} ok, {c['failed']} failed, {c['running']} running, "
        f"{c['not started']} not started" + (f"; {len(st['out_of_grid'])} out of the spec's grid"
                                              if st["out_of_grid"] else ""),
    ]
    if st["eta_s"] is not None or st["sweep"] == "running":
        lines.append(f"eta: {fmt_duration(st['eta_s'])}")
    width = max([len(k) for k in st["by_method_dataset"]] + [len("method / dataset")])
    lines.append("")
    lines.append(f"{'method / dataset':<{width}}  " + "  ".join(f"{s:>11}" for s in STATUSES))
    for key, g in sorted(st["by_method_dataset"].items()):
        lines.append(f"{key:<{width}}  " + "  ".join(f"{g[s]:>11}" for s in STATUSES))
    if st["running"]:
        lines.append("")
        lines.append("running:")
        for r in st["running"]:
            epoch = f" epoch {r.get('epoch') or 0}/{r['epochs']}" if r.get("epochs") else ""
            lines.append(f"  {r['cell_id']} {r.get('label', '')}{epoch} ({fmt_duration(r.get('elapsed_s'))})")
    if st["failed"]:
        lines.append("")
        lines.append("failed:")
        for f in st["failed"]:
            lines.append(f"  {f['cell_id']} {f['dataset']}/{f['category']} {f['method']}: {f['error']}")
    lines.append("")
    lines.append(f"report: {st['report'] or '(not built yet)'}")
    if not st["complete"]:
        lines.append(f"resume: {st['resume_command']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.status", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory (<storage>/<name>)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    args = p.parse_args(argv)
    try:
        st = collect(args.run_dir)
    except NotARunDir as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(st, indent=1) if args.json else render(st))
    return EXIT_OK if st["complete"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
