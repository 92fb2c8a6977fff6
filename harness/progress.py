"""Where a running sweep stands: a cost model that learns from finished cells, an ETA, and the live view.

A 1,000-cell sweep runs for days and a FUN-AD cell for an hour, so "N of M done" is not enough: the
console shows one updating status line (cells done / running / failed / pending, elapsed, ETA) with the
running cells and their epoch k/E below it; not on a terminal (CI, nohup, a cluster job log) it prints
the same facts as one plain line every `interval` seconds, never a carriage return or a colour code.
The same snapshot goes to `<run>/live.json` (written atomically), which `python -m harness.status`
reads from another shell, after a crash, or on the head node.

The ETA: a cell costs `units` (its method's cost hook: epochs for FUN-AD, 1 for one-pass methods) x its
training pool; the model learns seconds per unit and pool image per (method, dataset) from the cells
finished so far (median, so one slow straggler does not swing it), falls back to the method's, then to
every method's rate, and before the first cell finishes it extrapolates running cells from their epoch
progress. The pending cells are then list-scheduled, in launch order, onto the sweep's concurrent slots
after the running cells' remaining time: the ETA is when the last slot frees up.

tqdm draws the terminal view: it is already a dependency, it redraws in place and knows the terminal
width, and `tqdm.write` keeps the one line per finished cell above the bars (rich would be a new
dependency for the same picture).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rundir import LIVE_FILE, atomic_write

#: seconds between two plain progress lines (and between two live.json writes without events)
DEFAULT_INTERVAL_S = 30.0
#: a live.json not rewritten for this long (with a sweep that wrote every `interval`) is stale
STALE_AFTER_S = 120.0
#: running cells listed under the status line (the rest are counted)
MAX_RUNNING_SHOWN = 8


@dataclass(frozen=True)
class CellInfo:
    """What the progress view needs to know of a cell before it runs."""

    cell_id: str
    method: str
    dataset: str
    category: str
    units: float = 1.0  # the method's cost hook (epochs for FUN-AD)
    epochs: int | None = None  # what per-epoch reports count up to; None for one-pass methods
    label: str = ""


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


def fmt_duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 42s; '?' when unknown."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


class CostModel:
    """Seconds per (unit x pool image), learnt per (method, dataset) from finished cells."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], list[float]] = {}
        self._pools: dict[tuple[str, str], int] = {}

    def observe(self, cell: CellInfo, wall_s: float, pool: int | None) -> None:
        if pool:
            self._pools[(cell.dataset, cell.category)] = int(pool)
        size = self.pool(cell)
        if wall_s > 0 and size:
            self._rates.setdefault((cell.method, cell.dataset), []).append(wall_s / (cell.units * size))

    def pool(self, cell: CellInfo) -> int | None:
        """The category's pool size once a cell of it finished, else the dataset's (then all) mean."""
        if (cell.dataset, cell.category) in self._pools:
            return self._pools[(cell.dataset, cell.category)]
        same = [p for (d, _), p in self._pools.items() if d == cell.dataset] or list(self._pools.values())
        return round(statistics.fmean(same)) if same else None

    def rate(self, cell: CellInfo) -> float | None:
        for pick in (
            lambda k: k == (cell.method, cell.dataset),
            lambda k: k[0] == cell.method,
            lambda k: True,
        ):
            values = [r for key, rates in self._rates.items() if pick(key) for r in rates]
            if values:
                return statistics.median(values)
        return None

    def predict(self, cell: CellInfo) -> float | None:
        rate, size = self.rate(cell), self.pool(cell)
        return None if rate is None or size is None else rate * cell.units * size


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


# ----------------------------------------------------------------------------------------------- views
def plain_line(s: Snapshot) -> str:
    """The non-terminal form: one line, no carriage return, no colour."""
    line = (f"progress: {s.done}/{s.total} done ({s.ok} ok, {s.failed} failed), {len(s.running)} running, "
            f"{s.pending} pending, elapsed {fmt_duration(s.elapsed_s)}, eta {fmt_duration(s.eta_s)}")
    shown = [_running_text(r) for r in s.running[:MAX_RUNNING_SHOWN]]
    more = len(s.running) - len(shown)
    if shown:
        line += " | running: " + ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")
    return line


def _running_text(r: dict[str, Any]) -> str:
    epoch = f" {r['epoch'] or 0}/{r['epochs']}" if r.get("epochs") else ""
    return f"{r['label']}{epoch}"


class PlainView:
    """Every `interval` seconds one plain line (also at the end); for pipes and job logs."""

    def __init__(self, stream: TextIO, interval: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.stream, self.interval, self.clock = stream, interval, clock
        self._last = -float("inf")

    def update(self, s: Snapshot, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last >= self.interval:
            self._last = now
            print(plain_line(s), file=self.stream, flush=True)

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self, s: Snapshot) -> None:
        self.update(s, force=True)


class TerminalView:
    """One tqdm status bar plus one bar per running cell (epoch k/E), redrawn in place."""

    def __init__(self, stream: TextIO, total: int):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream = stream
        # the width from $COLUMNS or the terminal, 100 where a terminal reports none (a bare pty)
        self.ncols = shutil.get_terminal_size((100, 24)).columns
        self.main = tqdm(total=total, file=stream, position=0, ncols=self.ncols, leave=True,
                         bar_format="{desc} {bar} {n_fmt}/{total_fmt} {postfix}", desc="cells")
        self.bars: dict[str, Any] = {}

    def update(self, s: Snapshot, force: bool = False) -> None:
        self.main.n = s.done
        self.main.set_postfix_str(
            f"ok {s.ok} | failed {s.failed} | running {len(s.running)} | pending {s.pending} | "
            f"elapsed {fmt_duration(s.elapsed_s)} | eta {fmt_duration(s.eta_s)}", refresh=False)
        self.main.refresh()
        shown = {r["cell_id"]: r for r in s.running[:MAX_RUNNING_SHOWN]}
        for cid in [c for c in self.bars if c not in shown]:
            self.bars.pop(cid).close()
        for i, (cid, r) in enumerate(shown.items(), start=1):
            bar = self.bars.get(cid)
            if bar is None:
                bar = self._tqdm(total=r["epochs"] or 1, file=self.stream, position=i, leave=False,
                                 ncols=self.ncols, desc=f"  {r['label']}",
                                 bar_format="{desc} {bar} {n_fmt}/{total_fmt} {postfix}")
                self.bars[cid] = bar
            bar.n = (r["epoch"] or 0) if r["epochs"] else 0
            bar.set_postfix_str(fmt_duration(r["elapsed_s"]), refresh=False)
            bar.refresh()

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=self.stream)

    def close(self, s: Snapshot) -> None:
        self.update(s, force=True)
        for bar in self.bars.values():
            bar.close()
        self.main.close()


def make_view(stream: TextIO, total: int, interval: float = DEFAULT_INTERVAL_S) -> PlainView | TerminalView:
    """The terminal view on a TTY (unless TERM=dumb), the plain lines anywhere else."""
    tty = hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM", "") != "dumb"
    return TerminalView(stream, total) if tty else PlainView(stream, interval)


# -------------------------------------------------------------------------------------------- live.json
@dataclass
class LiveState:
    """The small file beside the Parquet results that tells another shell how the sweep stands."""

    state: str  # running | finished | interrupted
    pid: int
    host: str
    started_at: str
    updated_at: str
    interval_s: float
    command: str
    total: int
    ok: int
    failed: int
    pending: int
    running: list[dict[str, Any]] = field(default_factory=list)
    eta_s: float | None = None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LiveWriter:
    """Writes <run>/live.json atomically: on events, and at most every `interval` seconds otherwise."""

    def __init__(self, run_dir: str | Path, command: str, interval: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(run_dir) / LIVE_FILE
        self.command, self.interval, self.clock = command, interval, clock
        self.started_at = _now_iso()
        self._last = -float("inf")

    def write(self, s: Snapshot, state: str = "running", force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        live = LiveState(state, os.getpid(), socket.gethostname(), self.started_at, _now_iso(), self.interval,
                         self.command, s.total, s.ok, s.failed, s.pending, s.running,
                         None if s.eta_s is None else round(s.eta_s, 1))
        text = json.dumps(asdict(live), indent=1)
        try:
            atomic_write(self.path, text)
        except OSError as exc:  # bookkeeping: never stop a sweep because the status file failed
            print(f"warning: cannot write {self.path}: {exc}", file=sys.stderr)


def read_live(run_dir: str | Path) -> dict[str, Any] | None:
    """The live state of a run directory, or None (absent or unreadable)."""
    path = Path(run_dir) / LIVE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def live_is_current(live: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether a `running` live state belongs to a sweep that is still alive.

    On the same host the pid must exist; anywhere, the file must have been rewritten within its
    interval (plus slack): a SIGKILLed driver leaves `running` behind, and this tells it apart.
    """
    if live.get("state") != "running":
        return False
    try:
        updated = datetime.fromisoformat(str(live["updated_at"]))
    except (KeyError, ValueError):
        return False
    now = now or datetime.now(UTC)
    limit = 3 * float(live.get("interval_s") or DEFAULT_INTERVAL_S) + STALE_AFTER_S
    if (now - updated).total_seconds() > limit:
        return False
    if live.get("host") == socket.gethostname():
        try:
            os.kill(int(live.get("pid", -1)), 0)
        except (OSError, ValueError):
            return False
    return True


# ----------------------------------------------------------------------------------------- the sweep
def cell_infos(cells: Iterable[Any], order: Iterable[str]) -> list[CellInfo]:
    """CellInfo of the sweep's cells (harness.cells.Cell), in launch order, from the methods' hooks."""
    from funad.methods import method_class

    by_id = {c.cell_id: c for c in cells}
    out = []
    for cid in order:
        cfg = by_id[cid].config
        cls = method_class(cfg.method)
        settings = cls.Settings(**cfg.params)
        hp = " ".join(f"{k}={v}" for k, v in sorted(by_id[cid].hp.items()))
        label = f"{cfg.dataset['kind']}/{cfg.category} {cfg.method} seed={cfg.seed} {hp}".rstrip()
        out.append(CellInfo(cid, cfg.method, cfg.dataset["kind"], cfg.category, units=cls.cost(settings),
                            epochs=cls.epochs(settings), label=label))
    return out


def concurrent_slots(max_concurrent: int | None, cpus: float, gpus: float, cpu: float, gpu: float) -> int:
    """How many trials can run at once: the cluster's CPUs and GPUs per trial's share, capped."""
    limits = [cpus / cpu if cpu > 0 else float("inf"), gpus / gpu if gpu > 0 else float("inf")]
    slots = int(min(limits)) if min(limits) != float("inf") else 1
    if max_concurrent is not None:
        slots = min(slots, int(max_concurrent))
    return max(1, slots)


def tune_callback(tracker: Tracker, view: PlainView | TerminalView | None, live: LiveWriter | None,
                  write: Callable[[str], None]) -> Any:
    """The Tune callback that feeds the tracker, redraws the view, keeps live.json current and prints
    one line per finished, failed or retried cell (readable for 1000+ cells, unlike Tune's tables)."""
    from ray import tune

    total = len(tracker.cells)

    def cid_of(trial: Any) -> str:
        return str(trial.config.get("cell_id", trial.trial_id))

    def label(trial: Any) -> str:
        cid = cid_of(trial)
        cell = tracker.cells.get(cid)
        return f"{cid} {cell.label}" if cell is not None else cid

    class Progress(tune.Callback):
        def refresh(self, event: bool = False) -> None:
            """Redraw (the plain view keeps its own interval); live.json on every event."""
            snap = tracker.snapshot()
            if view is not None:
                view.update(snap)
            if live is not None:
                live.write(snap, force=event)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.start(cid_of(trial))
            self.refresh(event=True)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if isinstance(result.get("epoch"), int | float) and not result.get("done"):
                tracker.epoch(cid_of(trial), int(result["epoch"]))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            wall, pool = result.get("wall_s"), result.get("n_train_pool")
            tracker.finish(cid_of(trial), ok=True, wall_s=wall if isinstance(wall, int | float) else None,
                           pool=int(pool) if isinstance(pool, int | float) else None)
            auroc = result.get("image_auroc")
            score = f" image_auroc={auroc:.3f}" if isinstance(auroc, int | float) else ""
            write(f"[{tracker.snapshot().done}/{total}] ok     {label(trial)}{score}")
            self.refresh(event=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.finish(cid_of(trial), ok=False)
            write(f"[{tracker.snapshot().done}/{total}] FAILED {label(trial)} "
                  f"(error: results/{cid_of(trial)}.parquet)")
            self.refresh(event=True)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            write(f"  retrying {label(trial)}")

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self.refresh()

    return Progress()
