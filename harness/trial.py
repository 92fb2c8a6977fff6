"""One Ray Tune trial = one cell: run it, write its Parquet row, report progress to Tune.

The Parquet files are the source of truth, so the trial writes its own row (ok, or failed with the
error) from wherever it runs; Tune only schedules, retries and shows progress. A failed attempt is
written and then re-raised so Tune retries it; a later success overwrites the row with `ok`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.cells import Cell

#: Lines of traceback kept in a failed row's `error` (enough to locate it, small enough for a table).
TRACEBACK_LINES = 12


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its cell, shared by all trials of one sweep invocation."""

    run_name: str
    run_dir: str
    feature_cache: str
    #: the run's schema methods (harness.migrate.unify_run_schema)
    methods: dict[str, Any] = field(default_factory=dict)
    cpus: float = 1.0
    data_cache: str | None = None
    counter_name: str | None = None
    #: the driver's working directory: relative dataset roots in the spec are relative to it
    workdir: str | None = None


def enter_workdir(workdir: str | None) -> None:
    """Run in the driver's working directory when this node has it, so relative paths in the spec
    resolve as on the driver (Tune would otherwise put us in the trial's own directory)."""
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)


class AttemptCounter:
    """A tiny Ray actor counting starts per cell, so `attempt` is right even after a hard crash.

    A retry may land on another node and a killed worker writes nothing, so neither the trial dir nor
    the last failed row can count attempts reliably; the driver-owned actor can.
    """

    def __init__(self, previous: dict[str, int] | None = None) -> None:
        # Attempts of earlier invocations (failed rows), so a rerun keeps counting instead of restarting.
        self._counts: dict[str, int] = dict(previous or {})

    def next(self, cell_id: str) -> int:
        self._counts[cell_id] = self._counts.get(cell_id, 0) + 1
        return self._counts[cell_id]

    def get(self, cell_id: str) -> int:
        return self._counts.get(cell_id, 0)


def start_counter(name: str, previous: dict[str, int] | None = None) -> Any:
    """Create the sweep's attempt counter actor on the driver's node (no CPU reserved, dies with the
    driver): an actor with num_cpus=0 may land on any node, and a lost worker node would take the
    counts with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(AttemptCounter).options(name=name, num_cpus=0, scheduling_strategy=here)
    return actor.remote(previous)


def _next_attempt(ctx: TrialContext, cell_id: str) -> int:
    if not ctx.counter_name:
        return 1
    import ray

    try:
        return int(ray.get(ray.get_actor(ctx.counter_name).next.remote(cell_id), timeout=30))
    except Exception:  # the counter is bookkeeping; never fail a cell because of it
        return 1


def _set_threads(cpus: float) -> int:
    """Match torch/OpenMP/faiss threads to the trial's CPU share so concurrent trials do not thrash."""
    n = max(1, int(math.floor(cpus)))
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except Exception:  # faiss is optional for some methods
        pass
    return n


def _numeric(metrics: dict[str, Any]) -> dict[str, float | int]:
    """Keep what Tune can chart: finite-or-nan numbers; drop None, strings, arrays."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, int | float):
            out[key] = value
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            out[key] = value.item()
    return out


def tune_reporter() -> Any:
    """The run_cell `report` callback: forwards epoch, loss and diag_* values to tune.report."""
    from ray import tune

    def report(metrics: dict[str, Any]) -> None:
        tune.report(_numeric(metrics))

    return report


def run_one(cell: Cell, ctx: TrialContext, *, attempt: int, report: Any = None) -> dict[str, Any]:
    """Run one cell and write its row; on error write a failed row and re-raise. Returns the metrics.

    Separate from the Tune function so it can be tested and used without Ray.
    """
    import torch

    from funad.run import run_cell
    from harness.rows import build_failed_row, build_ok_row, error_text
    from harness.store import RunStore
    from harness.versions import node_name, peak_gpu_mb, peak_rss_mb, reset_peak_rss

    store = RunStore(Path(ctx.run_dir), methods=ctx.methods)
    node = node_name()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    reset_peak_rss()  # Tune reuses worker processes: the peak must be this cell's own
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        outcome = run_cell(
            cell.config,
            feature_cache=Path(ctx.feature_cache),
            data_cache=Path(ctx.data_cache) if ctx.data_cache else None,
            report=report,
        )
    except Exception as exc:  # not KeyboardInterrupt: an interrupted cell is "not run", not failed
        device = "cuda" if torch.cuda.is_available() else "cpu"
        row = build_failed_row(
            run=ctx.run_name,
            cell=cell,
            error=error_text(exc, max_lines=TRACEBACK_LINES),
            attempt=attempt,
            started_at=started,
            finished_at=datetime.now(UTC),
            wall_s=time.perf_counter() - t0,
            device=device,
            node=node,
            peak_rss_mb=peak_rss_mb(),
            peak_gpu_mb=peak_gpu_mb(device),
        )
        store.write_failed(row)
        raise
    row = build_ok_row(
        run=ctx.run_name,
        cell=cell,
        outcome=outcome,
        attempt=attempt,
        started_at=started,
        finished_at=datetime.now(UTC),
        wall_s=time.perf_counter() - t0,
        node=node,
        peak_rss_mb=peak_rss_mb(),
        peak_gpu_mb=peak_gpu_mb(outcome.device),
    )
    store.write_cell(row, outcome.scores, outcome.history, outcome.map_examples, split=outcome.split)
    diags = {f"diag_{k}": v for k, v in outcome.diagnostics.items()}
    # wall_s and the pool size feed the sweep's cost model (harness.progress)
    return {**outcome.metrics, **outcome.oracle, **diags, "wall_s": row["wall_s"],
            "n_train_pool": outcome.n_train_pool}


def cell_trainable(config: dict[str, Any], cells: dict[str, Cell], ctx: TrialContext) -> None:
    """The Tune function trainable: config = {"cell_id": ...}; cells and ctx come via with_parameters."""
    from ray import tune

    cell_id = config["cell_id"]
    cell = cells[cell_id]
    enter_workdir(ctx.workdir)
    _set_threads(ctx.cpus)
    attempt = _next_attempt(ctx, cell_id)
    metrics = run_one(cell, ctx, attempt=attempt, report=tune_reporter())
    tune.report({"done": 1, "attempt": attempt, **_numeric(metrics)})


def trial_name(trial: Any) -> str:
    """Name trials (and their directories) after the cell, so Tune's output maps onto results/."""
    return str(trial.config.get("cell_id", trial.trial_id))
