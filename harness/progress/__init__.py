"""Where a running sweep stands, for a sweep of 1,000 cells that runs for days ("N of M done" is not
enough). Its parts, each importing only the ones before it:

- `cost`: what a cell is expected to cost (the method's hooks, then rates learnt from finished cells);
- `eta`: the running invocation's state (Tracker, Snapshot) and the ETA (list scheduling onto the slots);
- `views`: the console (a tqdm status line on a terminal, plain lines elsewhere);
- `live`: `<run>/live.json`, which `python -m harness.status` reads from another shell;
- `callback`: the Tune callback that feeds them (the only part that knows Ray).
"""

from harness.progress.callback import tune_callback
from harness.progress.cost import CellInfo, CostModel, cell_infos, launch_order, method_units
from harness.progress.eta import RunningCell, Snapshot, Tracker, concurrent_slots, schedule_eta
from harness.progress.live import STALE_AFTER_S, LiveState, LiveWriter, live_is_current, read_live
from harness.progress.views import (
    DEFAULT_INTERVAL_S,
    MAX_RUNNING_SHOWN,
    PlainView,
    TerminalView,
    fmt_duration,
    make_view,
    plain_line,
)

__all__ = [
    "DEFAULT_INTERVAL_S",
    "MAX_RUNNING_SHOWN",
    "STALE_AFTER_S",
    "CellInfo",
    "CostModel",
    "LiveState",
    "LiveWriter",
    "PlainView",
    "RunningCell",
    "Snapshot",
    "TerminalView",
    "Tracker",
    "cell_infos",
    "launch_order",
    "method_units",
    "concurrent_slots",
    "fmt_duration",
    "live_is_current",
    "make_view",
    "plain_line",
    "read_live",
    "schedule_eta",
    "tune_callback",
]
