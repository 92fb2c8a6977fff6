"""The sweep's progress: the cost model's ETA, the live state file, and both console views."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.progress import (
    STALE_AFTER_S,
    CellInfo,
    CostModel,
    LiveWriter,
    PlainView,
    Snapshot,
    Tracker,
    live_is_current,
    plain_line,
    read_live,
    schedule_eta,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _cells(n_funad: int, n_pc: int, epochs: int = 10) -> list[CellInfo]:
    cells = [CellInfo(f"f{i}", "funad", "mvtec", f"cat{i % 2}", units=epochs, epochs=epochs, label=f"f{i}")
             for i in range(n_funad)]
    cells += [CellInfo(f"p{i}", "patchcore", "mvtec", f"cat{i % 2}", label=f"p{i}") for i in range(n_pc)]
    return cells


def test_schedule_eta_is_the_list_scheduling_makespan() -> None:
    # two slots, running cells with 5 s and 1 s left; pending 4, 4, 2 in launch order:
    # slot B (1) takes 4 -> 5; slot A (5) and B (5) tie: A takes 4 -> 9; B takes 2 -> 7; makespan 9
    assert schedule_eta([5.0, 1.0], [4.0, 4.0, 2.0], slots=2) == 9.0
    assert schedule_eta([], [3.0, 3.0, 3.0], slots=3) == 3.0
    assert schedule_eta([2.0], [None], slots=1) is None
    assert schedule_eta([], [], slots=4) == 0.0


def test_cost_model_learns_per_method_dataset_scaled_by_units_and_pool() -> None:
    m = CostModel()
    f = CellInfo("a", "funad", "mvtec", "bottle", units=100)
    g = CellInfo("b", "funad", "mvtec", "cable", units=50)
    assert m.predict(f) is None
    m.observe(f, wall_s=200.0, pool=20)  # 0.1 s per (epoch x image)
    assert m.predict(f) == pytest.approx(200.0)
    assert m.predict(g) == pytest.approx(0.1 * 50 * 20)  # cable's pool unknown: the dataset's mean
    m.observe(g, wall_s=150.0, pool=30)  # 0.1 again
    assert m.predict(CellInfo("c", "funad", "mvtec", "cable", units=10)) == pytest.approx(0.1 * 10 * 30)
    # another dataset falls back to the method's rate, another method to every rate
    assert m.predict(CellInfo("d", "funad", "visa", "candle", units=1)) == pytest.approx(0.1 * 25)
    assert m.predict(CellInfo("e", "patchcore", "visa", "candle")) == pytest.approx(0.1 * 25)


def test_tracker_eta_on_a_synthetic_sequence_of_finish_times() -> None:
    """4 FUN-AD cells of 10 epochs (10 s each at 1 s/epoch, pool 5) and 4 PatchCore cells (2 s each),
    2 slots; after the first cells finish the ETA must equal the true remaining makespan."""
    clock = Clock()
    cells = _cells(4, 4)
    t = Tracker(cells, slots=2, clock=clock)
    assert t.snapshot().eta_s is None  # nothing learnt, nothing running
    t.start("f0")
    t.start("f1")
    clock.t = 5.0
    t.epoch("f0", 5)
    t.epoch("f1", 5)
    s = t.snapshot()
    # before any finish: running cells extrapolate from epochs (5 s left each), pending FUN-AD cells from
    # the running cells' seconds per epoch (10 s), PatchCore cannot be predicted yet
    assert s.eta_s is None and s.pending == 6 and len(s.running) == 2
    clock.t = 10.0
    t.finish("f0", ok=True, wall_s=10.0, pool=5)
    t.finish("f1", ok=True, wall_s=10.0, pool=5)
    t.start("f2")
    t.start("f3")
    s = t.snapshot()
    assert s.ok == 2 and len(s.running) == 2
    # running f2, f3: 10 s left each; PatchCore rate unknown -> falls back to every rate (0.2 s/unit/image
    # x 1 unit x pool 5 = 1 s); makespan: 10 + 2 x 1 = 12 s
    assert s.eta_s == pytest.approx(12.0)
    clock.t = 20.0
    t.finish("f2", ok=True, wall_s=10.0, pool=5)
    t.finish("f3", ok=False)
    t.start("p0")
    t.start("p1")
    clock.t = 21.0
    t.finish("p0", ok=True, wall_s=2.0, pool=5)  # PatchCore's own rate now: 0.4 s/unit/image = 2 s
    s = t.snapshot()
    # p1 running, predicted 2 s with 1 s elapsed -> 1 s left; p2, p3 pending 2 s each on 2 slots:
    # slot A (1) -> 3, slot B (0) -> 2: makespan 3 s
    assert s.eta_s == pytest.approx(3.0)
    assert (s.ok, s.failed, s.pending) == (4, 1, 2)
    t.start("f3")  # a retry of the failed cell is running again, not failed
    assert t.snapshot().failed == 0


def test_plain_line_has_every_fact_and_no_control_characters() -> None:
    s = Snapshot(total=10, ok=3, failed=1, pending=4, elapsed_s=125.0, eta_s=3700.0,
                   running=[{"cell_id": "x", "label": "funad/brick", "epoch": 7, "epochs": 50,
                             "elapsed_s": 3.0},
                            {"cell_id": "y", "label": "patchcore/grass", "epoch": None, "epochs": None,
                             "elapsed_s": 1.0}])
    line = plain_line(s)
    assert line == ("progress: 4/10 done (3 ok, 1 failed), 2 running, 4 pending, elapsed 2m05s, eta 1h01m"
                    " | running: funad/brick 7/50, patchcore/grass")
    assert not any(ch in line for ch in "\r\x1b\n")


def test_plain_view_prints_every_interval_only() -> None:
    clock, buf = Clock(), io.StringIO()
    view = PlainView(buf, interval=10.0, clock=clock)
    snap = Snapshot(total=1, ok=0, failed=0, running=[], pending=1, elapsed_s=0.0, eta_s=None)
    view.update(snap)
    clock.t = 5.0
    view.update(snap)
    clock.t = 10.0
    view.update(snap)
    view.close(snap)
    assert len(buf.getvalue().splitlines()) == 3


def test_live_state_round_trip_and_staleness(tmp_path: Path) -> None:
    clock = Clock()
    writer = LiveWriter(tmp_path, command="python -m harness.sweep x.yaml", interval=30.0, clock=clock)
    snap = Snapshot(total=2, ok=1, failed=0, pending=0, elapsed_s=1.0, eta_s=4.0,
                      running=[{"cell_id": "a", "label": "a", "epoch": 1, "epochs": 2, "elapsed_s": 1.0}])
    writer.write(snap)
    live = read_live(tmp_path)
    assert live["state"] == "running" and live["ok"] == 1 and live["running"][0]["cell_id"] == "a"
    assert live["command"] == "python -m harness.sweep x.yaml" and live["pid"] == os.getpid()
    assert live_is_current(live)
    later = datetime.now(UTC) + timedelta(seconds=3 * 30 + STALE_AFTER_S + 5)
    assert not live_is_current(live, now=later)  # a driver that stopped rewriting it
    assert not live_is_current(dict(live, pid=2**22 + 12345))  # same host, the process is gone
    writer.write(snap, state="finished", force=True)
    assert not live_is_current(read_live(tmp_path))
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "live.json").write_text("{torn")
    assert read_live(tmp_path) is None


_VIEW_SCRIPT = """
import sys, time
from harness.progress import CellInfo, Tracker, make_view
cells = [CellInfo("a", "funad", "synthetic", "brick", units=4, epochs=4, label="funad/brick"),
         CellInfo("b", "patchcore", "synthetic", "brick", label="patchcore/brick")]
t = Tracker(cells, slots=2)
view = make_view(sys.stdout, total=2, interval=0.0)
t.start("a"); t.start("b"); t.epoch("a", 2)
view.update(t.snapshot())
t.finish("b", ok=True, wall_s=1.0, pool=3)
view.write("[1/2] ok     b synthetic/brick patchcore")
view.update(t.snapshot())
t.epoch("a", 4); t.finish("a", ok=True, wall_s=2.0, pool=3)
view.close(t.snapshot())
"""


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root, "TERM": "xterm", "COLUMNS": "120"}


def test_terminal_view_in_a_pseudo_terminal() -> None:
    """On a TTY: bars redrawn in place (carriage returns), the running cell's epoch k/E, the status line."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120 x 24 terminal
    proc = subprocess.Popen([sys.executable, "-c", _VIEW_SCRIPT], stdin=follower, stdout=follower,
                            stderr=subprocess.PIPE, env=_env(), close_fds=True)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=30)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read().decode()
    text = out.decode("utf-8", "replace")
    assert "\r" in text  # redrawn in place
    assert "funad/brick" in text and "2/4" in text
    assert "running 2" in text and "eta" in text
    assert "[1/2] ok     b synthetic/brick patchcore" in text
    assert "2/2" in text  # the status line at the end


def test_plain_view_from_a_pipe() -> None:
    res = subprocess.run([sys.executable, "-c", _VIEW_SCRIPT], capture_output=True, text=True, env=_env(),
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("progress: 0/2 done (0 ok, 0 failed), 2 running, 0 pending")
    assert "funad/brick 2/4" in lines[0]
    assert lines[1] == "[1/2] ok     b synthetic/brick patchcore"
    assert lines[-1].startswith("progress: 2/2 done (2 ok, 0 failed), 0 running, 0 pending")
    assert "\r" not in res.stdout and "\x1b" not in res.stdout
    json.dumps(lines)  # plain text all the way
