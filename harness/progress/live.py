"""`<run>/live.json`: the snapshot of a running sweep, written atomically, which `python -m harness.status`
reads from another shell, after a crash, or on the head node."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.progress.eta import Snapshot
from harness.progress.views import DEFAULT_INTERVAL_S
from rundir import LIVE_FILE, atomic_write

#: a live.json not rewritten for this long (with a sweep that wrote every `interval`) is stale
STALE_AFTER_S = 120.0


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
