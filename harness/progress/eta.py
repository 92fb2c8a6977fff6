"""When a sweep will finish: the state of the running invocation (Tracker) and its ETA.

Before the first cell finishes the ETA extrapolates running cells from their epoch progress; after,
the pending cells are list-scheduled, in launch order, onto the sweep's concurrent slots after the
running cells' remaining time (cost.CostModel): the ETA is when the last slot frees up.
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from harness.progress.cost import CellInfo, CostModel


@dataclass
class RunningCell:
    cell_id: str
    label: str
    started: float
    epoch: int | None = None
    epochs: int | None = None



@dataclass
class Snapshot:
    """Counts, running cells and the ETA at one moment (what both views and live.json show)."""

    total: int
    ok: int
    failed: int
    running: list[dict[str, Any]]
    pending: int
    elapsed_s: float
    eta_s: float | None

    @property
    def done(self) -> int:
        return self.ok + self.failed



def schedule_eta(running_left: Iterable[float], pending: Iterable[float | None], slots: int) -> float | None:
    """Makespan of list-scheduling `pending` (in order) onto `slots` after the running cells' remaining
    times; None when a pending cell cannot be predicted yet."""
    loads = sorted(running_left)
    free = loads + [0.0] * max(0, slots - len(loads))
    heapq.heapify(free)
    for cost in pending:
        if cost is None:
            return None
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free) if free else 0.0



class Tracker:
    """The state of a sweep invocation, updated by the Tune callback's events."""

    def __init__(self, cells: Iterable[CellInfo], slots: int, clock: Callable[[], float] = time.monotonic):
        self.cells = {c.cell_id: c for c in cells}
        self.order = list(self.cells)  # launch order
        self.slots = max(1, int(slots))
        self.clock = clock
        self.t0 = clock()
        self.model = CostModel()
        self.running: dict[str, RunningCell] = {}
        self.ok: set[str] = set()
        self.failed: set[str] = set()

    def start(self, cell_id: str) -> None:
        cell = self.cells.get(cell_id)
        if cell is None:
            return
        self.failed.discard(cell_id)  # a retry
        self.running[cell_id] = RunningCell(cell_id, cell.label or cell_id, self.clock(), None, cell.epochs)

    def epoch(self, cell_id: str, epoch: int) -> None:
        if cell_id in self.running:
            self.running[cell_id].epoch = int(epoch)

    def finish(self, cell_id: str, ok: bool, wall_s: float | None = None, pool: int | None = None) -> None:
        cell = self.cells.get(cell_id)
        run = self.running.pop(cell_id, None)
        if cell is None:
            return
        if ok:
            self.ok.add(cell_id)
            self.failed.discard(cell_id)
            took = wall_s if wall_s is not None else (self.clock() - run.started if run else None)
            if took is not None:
                self.model.observe(cell, float(took), pool)
        else:
            self.failed.add(cell_id)

    def _left(self, run: RunningCell, now: float) -> float | None:
        elapsed = now - run.started
        if run.epochs and run.epoch:
            return elapsed * max(0, run.epochs - run.epoch) / run.epoch
        predicted = self.model.predict(self.cells[run.cell_id])
        if predicted is None:
            return None
        return predicted - elapsed if predicted > elapsed else 0.1 * elapsed

    def _epoch_rate_prediction(self, cell: CellInfo, now: float) -> float | None:
        """Before any cell finished: a running cell's seconds per epoch-unit, scaled to `cell`."""
        rates = [
            (now - r.started) / r.epoch / self.cells[r.cell_id].units * (r.epochs or 1)
            for r in self.running.values()
            if r.epoch and r.epochs and self.cells[r.cell_id].method == cell.method
        ]
        return statistics.median(rates) * cell.units if rates else None

    def snapshot(self) -> Snapshot:
        now = self.clock()
        done = self.ok | self.failed
        pending = [c for c in self.order if c not in done and c not in self.running]
        lefts = [self._left(r, now) for r in self.running.values()]
        costs = [self.model.predict(self.cells[c]) or self._epoch_rate_prediction(self.cells[c], now)
                 for c in pending]
        eta = None if any(x is None for x in lefts) else schedule_eta(lefts, costs, self.slots)  # type: ignore[arg-type]
        running = [
            {"cell_id": r.cell_id, "label": r.label, "epoch": r.epoch, "epochs": r.epochs,
             "elapsed_s": round(now - r.started, 1)}
            for r in sorted(self.running.values(), key=lambda r: r.started)
        ]
        return Snapshot(len(self.cells), len(self.ok), len(self.failed), running, len(pending),
                        now - self.t0, eta)


def concurrent_slots(max_concurrent: int | None, cpus: float, gpus: float, cpu: float, gpu: float) -> int:
    """How many trials can run at once: the cluster's CPUs and GPUs per trial's share, capped."""
    limits = [cpus / cpu if cpu > 0 else float("inf"), gpus / gpu if gpu > 0 else float("inf")]
    slots = int(min(limits)) if min(limits) != float("inf") else 1
    if max_concurrent is not None:
        slots = min(slots, int(max_concurrent))
    return max(1, slots)
