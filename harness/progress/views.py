"""The console's view of a sweep: one updating tqdm status line with the running cells (epoch k/E) below
it on a terminal; not on a terminal (CI, nohup, a cluster job log), the same facts as one plain line
every `interval` seconds, never a carriage return or a colour code.

tqdm draws the terminal view: it is already a dependency, it redraws in place and knows the terminal
width, and `tqdm.write` keeps the one line per finished cell above the bars (rich would be a new
dependency for the same picture).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any, TextIO

from harness.progress.eta import Snapshot

#: seconds between two plain progress lines (and between two live.json writes without events)
DEFAULT_INTERVAL_S = 30.0
#: running cells listed under the status line (the rest are counted)
MAX_RUNNING_SHOWN = 8


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
