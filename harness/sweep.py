"""`python -m harness.sweep SPEC.yaml`: validate, plan, extract features once, run every cell on Ray Tune.

Resuming is by the run directory, not by Tune's state: a cell whose results/<cell_id>.parquet says
`ok` is skipped, everything else (failed, missing, new cells of a grown spec) runs. Nothing touches
Ray until the spec is valid and there is work to do, so mistakes cost no cluster time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.cells import Cell, expand_cells, feature_jobs
from harness.feasibility import feasibility_lines
from harness.progress import (
    DEFAULT_INTERVAL_S,
    LiveWriter,
    Tracker,
    cell_infos,
    concurrent_slots,
    make_view,
    tune_callback,
)
from harness.raycluster import ClusterError, check_storage, ray_session, resolve_address
from harness.spec import SpecError, SweepSpec, load_spec
from rundir import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    REPORT_FILE,
    RESULTS_DIR,
    TUNE_DIR,
    readable_rows,
    remove_leftover_temps,
)

N_EXAMPLES = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="sweep file (YAML)")
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto, ray://host:10001)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; start nothing")
    p.add_argument("--fresh", action="store_true", help="start a new run directory <name>-<UTC time>")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting (dotted path, value parsed as YAML); repeatable",
    )
    p.add_argument("--no-report", action="store_true", help="do not build report.html at the end")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no live status display and no Ray worker logs here (finished cells still print)")
    p.add_argument("--progress-every", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                   help="seconds between two status lines when not on a terminal (default %(default)s)")
    return p.parse_args(argv)


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def out(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """The sweep as decided before Ray starts: which cells exist, which still have to run."""

    spec: SweepSpec
    cells: list[Cell]
    run_dir: Path
    run_name: str
    feature_cache: Path
    todo: list[Cell] = field(default_factory=list)
    skipped: int = 0
    #: the run's schema methods (this spec's merged with earlier invocations'); set before Ray starts
    methods: dict[str, Any] = field(default_factory=dict)


def make_plan(spec: SweepSpec, cells: list[Cell], *, fresh: bool) -> Plan:
    """Decide the run directory and the feature cache of this invocation (no I/O)."""
    name = spec.name
    if fresh:
        name = f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    run_dir = spec.storage_root() / name
    return Plan(
        spec=spec, cells=cells, run_dir=run_dir, run_name=name, feature_cache=spec.feature_cache_dir(run_dir)
    )


def print_dry_run(plan: Plan) -> None:
    """The plan a user checks before spending cluster time: counts, feature jobs, example cells."""
    cells = plan.cells
    by_method = Counter(c.config.method for c in cells)
    jobs = feature_jobs(cells)
    out(f"sweep {plan.spec.name}: {len(cells)} cells ({', '.join(f'{m} {n}' for m, n in by_method.items())})")
    out(f"run directory: {plan.run_dir}")
    # reading results/ starts nothing and creates nothing
    ok = sum(1 for st in read_statuses(plan.run_dir, [c.cell_id for c in cells]).values() if st == "ok")
    out(f"already ok there: {ok}; to run: {len(cells) - ok}")
    for line in feasibility_lines(cells, plan.spec.data_dir()):
        out(line)
    out(f"feature cache: {plan.feature_cache}")
    out(f"feature jobs: {len(jobs)}")
    for j in jobs[:10]:
        out(f"  {j.label}")
    if len(jobs) > 10:
        out(f"  ... {len(jobs) - 10} more")
    out("example cells:")
    # spread over the grid (first, middle, last), so different categories/methods show up
    picks = sorted({round(i * (len(cells) - 1) / max(1, N_EXAMPLES - 1)) for i in range(N_EXAMPLES)})
    for c in [cells[i] for i in picks if cells]:
        cfg = c.config
        ratio = cfg.split.ratio if cfg.split.count is None else f"count={cfg.split.count}"
        out(
            f"  {c.cell_id}  {cfg.dataset.get('kind')}/{cfg.category} {cfg.method} "
            f"ratio={ratio} seed={cfg.seed} hp={json.dumps(c.hp, sort_keys=True, default=str)}"
        )
    out("dry run: nothing started")


# ------------------------------------------------------------------------------------------ results
def read_statuses(run_dir: Path, cell_ids: Sequence[str]) -> dict[str, str]:
    """cell_id -> status ('ok' | 'failed') from results/, the source of truth; absent = not run."""
    from harness.store import RunStore

    wanted = set(cell_ids)
    return {cid: st for cid, st in RunStore(run_dir, methods={}).statuses().items() if cid in wanted}


def previous_attempts(run_dir: Path, cells: Sequence[Cell]) -> dict[str, int]:
    """cell_id -> attempts already recorded by failed rows of earlier invocations (an unreadable
    result counts as never tried)."""
    wanted = {c.cell_id for c in cells}
    return {
        row["cell_id"]: int(row["attempt"])
        for row in readable_rows(run_dir / RESULTS_DIR, ["cell_id", "status", "attempt"])
        if row["cell_id"] in wanted and row["status"] != "ok" and row["attempt"]
    }


@dataclass
class Summary:
    total: int
    ok: int
    failed: int
    missing: int
    skipped: int

    @property
    def complete(self) -> bool:
        return self.ok == self.total


def summarize(plan: Plan) -> Summary:
    ids = [c.cell_id for c in plan.cells]
    statuses = read_statuses(plan.run_dir, ids)
    counts = Counter(statuses.values())
    ok = counts.get("ok", 0)
    failed = sum(n for s, n in counts.items() if s != "ok")
    return Summary(len(ids), ok, failed, len(ids) - ok - failed, plan.skipped)


def print_summary(plan: Plan, s: Summary, *, dashboard: str | None, report: str | None) -> None:
    out("")
    out(f"sweep {plan.run_name}: {s.total} cells: {s.ok} ok ({s.skipped} already ok before this run), "
        f"{s.failed} failed, {s.missing} not run")
    out(f"run directory: {plan.run_dir}")
    if dashboard:
        out(f"ray dashboard: {dashboard}")
    if report:
        out(f"report: {report}")


def resume_command(args: argparse.Namespace, plan: Plan) -> str:
    """The exact command that continues this run directory (also after --fresh)."""
    parts = [sys.executable, "-m", "harness.sweep", args.spec]
    if args.address:
        parts += ["--address", args.address]
    for o in args.overrides:
        parts += ["--set", o]
    if args.fresh:
        parts += ["--set", f"name={plan.run_name}"]
    if args.no_report:
        parts.append("--no-report")
    return shlex.join(parts)


def build_report(plan: Plan) -> str | None:
    """Build report.html; the results are already safe on disk, so a failing report only warns."""
    from reports.build import build_report as build

    try:
        return str(build(plan.run_dir))
    except Exception as exc:
        err(f"warning: report not built: {type(exc).__name__}: {exc}; "
            f"build it later with: python -m reports.build {plan.run_dir}")
        return None


# --------------------------------------------------------------------------------------------- ray
def backfill_failures(plan: Plan, result_grid: Any, cells: dict[str, Cell], counter: Any) -> None:
    """Trials Tune saw die without a row (worker killed, OOM) get a failed row from the driver."""
    import ray

    from harness.rows import build_failed_row
    from harness.store import RunStore

    statuses = read_statuses(plan.run_dir, list(cells))
    store = RunStore(plan.run_dir, methods=plan.methods)
    for i in range(len(result_grid)):
        res = result_grid[i]
        cid = (res.config or {}).get("cell_id")
        if res.error is None or cid not in cells or cid in statuses:
            continue
        try:
            attempt = int(ray.get(counter.get.remote(cid), timeout=10)) or 1
        except Exception:  # the counter is bookkeeping only
            attempt = 1
        now = datetime.now(UTC)
        row = build_failed_row(
            run=plan.run_name, cell=cells[cid], error=f"{type(res.error).__name__}: {res.error}",
            attempt=attempt, started_at=now, finished_at=now, wall_s=None, node="unknown",
            peak_rss_mb=None, peak_gpu_mb=None,
        )
        row["peak_rss_mb"] = None  # the driver's own memory says nothing about the dead trial
        store.write_failed(row)


def _data_cache(spec: SweepSpec) -> str | None:
    """Where trials and tasks find the built-in datasets (an absolute path: they run elsewhere)."""
    data_dir = spec.data_dir()
    return None if data_dir is None else str(data_dir)


class OneLineTrialErrors(logging.Filter):
    """Tune logs every failed trial attempt with its full traceback; the cell's row already keeps the
    error (and its traceback), so the console gets one line: the trial, the exception type, message."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and info[1] is not None:
            exc = info[1]
            cause = getattr(exc, "cause", None)  # RayTaskError wraps the trial's own exception
            exc = cause if isinstance(cause, BaseException) else exc
            text = str(exc).strip().splitlines()
            line = next((t for t in text if t.strip() and not t.startswith("ray::")), "")
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {line}".rstrip(": ")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def run_on_ray(plan: Plan, args: argparse.Namespace, address: str | None) -> tuple[bool, str | None]:
    """Features stage then Tune; returns (interrupted, dashboard url). Ray is always shut down."""
    from ray import tune

    from harness.features_stage import run_stage
    from harness.progress import launch_order
    from harness.trial import TrialContext, cell_trainable, start_counter, trial_name

    spec = plan.spec
    cpu, gpu = float(spec.resources.cpu), float(spec.resources.gpu)
    # Trials stay in the working directory they are given (see trial.enter_workdir); Tune passes
    # this variable on to every trial, on every node.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    with ray_session(spec, address, quiet=args.quiet) as handle:
        if handle.dashboard_url:
            out(f"ray dashboard: {handle.dashboard_url}")
        out(f"ray: {'local' if handle.started_local else address} "
            f"({handle.num_cpus:g} CPU, {handle.num_gpus:g} GPU)")
        tracker: Tracker | None = None
        live: LiveWriter | None = None
        try:
            stage = run_stage(
                feature_jobs(plan.todo), str(plan.feature_cache), cluster_gpus=handle.num_gpus,
                want_gpu=gpu > 0, cpus_per_task=max(1.0, cpu), data_cache=_data_cache(spec), log=out,
            )
            out(f"features: {stage.forwards} backbone forwards in {stage.wall_s:.1f}s")
            counter_name = f"funad-attempts-{uuid.uuid4().hex[:8]}"
            counter = start_counter(counter_name, previous_attempts(plan.run_dir, plan.todo))
            ctx = TrialContext(
                run_name=plan.run_name, run_dir=str(plan.run_dir), feature_cache=str(plan.feature_cache),
                methods=plan.methods, cpus=max(cpu, 1.0),
                data_cache=_data_cache(spec), counter_name=counter_name, workdir=os.getcwd(),
            )
            cells = {c.cell_id: c for c in plan.todo}
            order = launch_order(plan.todo)
            tracker = Tracker(cell_infos(plan.todo, order), concurrent_slots(
                spec.max_concurrent, handle.num_cpus, handle.num_gpus, cpu, gpu))
            view = None if args.quiet else make_view(sys.stdout, len(cells), args.progress_every)
            live = LiveWriter(plan.run_dir, resume_command(args, plan), interval=args.progress_every)
            callback = tune_callback(tracker, view, live, view.write if view is not None else out)
            trainable = tune.with_resources(
                tune.with_parameters(cell_trainable, cells=cells, ctx=ctx), {"cpu": cpu, "gpu": gpu}
            )
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            tuner = tune.Tuner(
                trainable,
                param_space={"cell_id": tune.grid_search(order)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.max_concurrent,
                    # one worker process runs cell after cell: no torch import and process start per
                    # cell; run_one resets the per-cell peak-RSS counter
                    reuse_actors=True,
                    trial_name_creator=trial_name,
                    trial_dirname_creator=trial_name,
                ),
                run_config=tune.RunConfig(
                    name=f"tune-{stamp}",
                    storage_path=str(plan.run_dir / TUNE_DIR),
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    verbose=0,  # our one-line progress below; Tune's tables are unreadable at scale
                    callbacks=[callback],
                ),
            )
            # Trials cut short by Ctrl-C have no Tune results; the Parquet files say what is missing.
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
            controller_log = logging.getLogger("ray.tune.execution.tune_controller")
            if not any(isinstance(f, OneLineTrialErrors) for f in controller_log.filters):
                controller_log.addFilter(OneLineTrialErrors())
            try:
                result_grid = tuner.fit()
            finally:
                final = tracker.snapshot()
                if view is not None:
                    view.close(final)
            backfill_failures(plan, result_grid, cells, counter)
            live.write(final, state="finished", force=True)
        except KeyboardInterrupt:
            if live is not None and tracker is not None:
                live.write(tracker.snapshot(), state="interrupted", force=True)
            return True, handle.dashboard_url
    statuses = read_statuses(plan.run_dir, [c.cell_id for c in plan.todo])
    return len(statuses) < len(plan.todo), handle.dashboard_url


# -------------------------------------------------------------------------------------------- main
def _sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler or Kubernetes stopping the driver) takes the Ctrl-C path, so the Ray we
    started is shut down and the resume command printed instead of leaving Ray processes behind."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(Path(args.spec), overrides=tuple(args.overrides))
        cells = expand_cells(spec, data_cache=spec.data_dir())
    except SpecError as exc:
        for problem in exc.problems:
            err(f"error: {problem}")
        return EXIT_USAGE
    except (ValueError, OSError) as exc:  # e.g. DatasetError naming a path while listing categories
        err(f"error: {args.spec}: {exc}")
        return EXIT_USAGE
    plan = make_plan(spec, cells, fresh=args.fresh)
    if args.dry_run:
        print_dry_run(plan)
        return EXIT_OK

    address = resolve_address(args.address, spec)
    try:
        check_storage(address, str(plan.run_dir), spec)
    except ClusterError as exc:
        err(f"error: {args.spec}: {exc}")
        return EXIT_USAGE

    from harness.migrate import unify_run_schema
    from harness.store import RunStore

    try:
        if leftovers := remove_leftover_temps(plan.run_dir):
            out(f"removed {len(leftovers)} temp file(s) that an earlier killed writer left in {plan.run_dir}")
        # A grown spec (new method, new swept setting): existing files get the new columns first,
        # so `pandas.read_parquet(run/"results")` keeps reading every column of every file.
        plan.methods = unify_run_schema(plan.run_dir, spec.concrete_methods(), log=out)
        store = RunStore(plan.run_dir, methods=plan.methods)
        store.write_spec(spec.resolved())
        store.write_plan(cells)
    except OSError as exc:  # storage not writable, a file where a folder should be, disk full
        err(f"error: {args.spec}: storage: cannot write the run directory {plan.run_dir}: "
            f"{exc.strerror or exc} (allowed: a writable directory)")
        return EXIT_USAGE
    done = set(store.ok_cell_ids())
    plan.todo = [c for c in cells if c.cell_id not in done]
    plan.skipped = len(cells) - len(plan.todo)
    out(f"sweep {plan.run_name}: {len(cells)} cells, {plan.skipped} already ok, {len(plan.todo)} to run")

    t0 = time.perf_counter()
    interrupted, dashboard = False, None
    _sigterm_as_interrupt()
    if plan.todo:
        from harness.features_stage import BadInput

        try:
            interrupted, dashboard = run_on_ray(plan, args, address)
        except KeyboardInterrupt:
            interrupted = True
        except BadInput as exc:  # an undecodable image or mask: like a bad spec, before any trial
            err(f"error: {exc}")
            return EXIT_USAGE
    summary = summarize(plan)
    report = None
    existing = plan.run_dir / REPORT_FILE
    if not interrupted and spec.report and not args.no_report:
        # A no-op rerun keeps the report it already has (nothing in results/ changed).
        report = build_report(plan) if plan.todo or not existing.is_file() else str(existing)
    print_summary(plan, summary, dashboard=dashboard, report=report)
    out(f"wall time: {time.perf_counter() - t0:.1f}s")
    if interrupted:
        out("sweep INCOMPLETE (interrupted). Resume with:")
        out(f"  {resume_command(args, plan)}")
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.complete else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
