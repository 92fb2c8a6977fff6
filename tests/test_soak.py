"""Soak: a 150-cell sweep under seeded faults, two driver kills and a truncated result, checked at the end.

The faults come from the test-only method plugin `faulty` (tests/fault_plugin/): a seeded tenth of the
cells raise (most transiently, failing their first start only; a few on every start), a few SIGKILL
their own worker on their first start. The driver is SIGKILLed twice mid-sweep and restarted with the
same command; between the first two runs one `ok` result file is truncated. The end state must be
exactly what the fault plan says: every cell one result file with one row, `ok` unless its fault is
permanent (then `failed` with the fault's error), no cell started again after its `ok`, never more
than `max_concurrent` cells at once, no temp file anywhere, and a report that builds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest_data import build_mvtec, sweep_env, write_tiny_spec
from fault_plugin import install
from fault_plugin.faultmethod import FaultySettings, cell_key, fault_of, read_events
from test_reliability_faults import kill_session, session_procs

from rundir import TEMP_SUFFIX

REPO = Path(__file__).resolve().parent.parent
CATEGORIES = ("alpha", "beta", "gamma")
SEEDS = list(range(50))
MAX_CONCURRENT = 2
#: with this fault_seed: 10 transient, 3 permanent, 3 kill cells (a failed attempt costs a new worker)
SETTINGS = {"p_transient": 0.07, "transient_failures": 1, "p_permanent": 0.015, "p_kill": 0.025,
            "fault_seed": 3}
#: result files present when the driver is SIGKILLed (first run, second run)
KILL_AT = (40, 100)


def result_files(run_dir: Path) -> list[Path]:
    folder = run_dir / "results"
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def env_with(site: Path) -> dict[str, str]:
    """A sweep subprocess's environment: this checkout first on PYTHONPATH, then the plugin's folder."""
    return sweep_env({"PYTHONPATH": str(site)}, pythonpath=REPO)


def start(spec: Path, site: Path, log: Path) -> subprocess.Popen:
    """The sweep command, its console to `log` (kept in the test's tmp_path)."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "harness.sweep", str(spec), "-q"], cwd=REPO,
                                env=env_with(site), stdout=fh, stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, run_dir: Path, n_files: int, timeout: float = 300) -> None:
    """SIGKILL the driver once `n_files` result files exist (mid-sweep: cells are still running)."""
    t0 = time.monotonic()
    while len(result_files(run_dir)) < n_files:
        assert proc.poll() is None, f"the sweep ended (exit {proc.returncode}) before {n_files} results"
        assert time.monotonic() - t0 < timeout, f"no {n_files} results after {timeout}s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one moment (an end at the same instant as a start does not overlap)."""
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


@pytest.mark.slow
@pytest.mark.long
def test_soak_faults_driver_kills_and_a_truncated_result(tmp_path: Path) -> None:
    t_all = time.monotonic()
    site = install(tmp_path / "site")
    root = build_mvtec(tmp_path / "data", {c: {"dent": 2} for c in CATEGORIES}, n_train=4, n_good=2)
    markers = tmp_path / "markers"
    settings = {"marker_dir": str(markers), **SETTINGS}
    spec = write_tiny_spec(tmp_path / "soak.yaml", root, seeds=SEEDS, max_concurrent=MAX_CONCURRENT,
                           max_failures=1, methods={"faulty": settings})
    run_dir = tmp_path / "runs" / "t"
    plan = {cell_key(c, s): fault_of(c, s, FaultySettings(**settings)) for c in CATEGORIES for s in SEEDS}
    planned = Counter(k for k in plan.values() if k)
    assert all(planned[k] for k in ("transient", "permanent", "kill")), planned  # every kind is exercised

    drivers: list[int] = []
    walls: list[float] = []
    try:
        # Run 1, killed mid-sweep; then one ok result is cut short, as a kill during a copy would leave it.
        t0 = time.monotonic()
        proc = start(spec, site, tmp_path / "run1.log")
        drivers.append(proc.pid)
        kill_when(proc, run_dir, KILL_AT[0])
        walls.append(time.monotonic() - t0)
        ok_files = [p for p in result_files(run_dir)
                    if pq.read_table(p, columns=["status"]).column("status").to_pylist() == ["ok"]]
        victim = ok_files[0]
        victim.write_bytes(victim.read_bytes()[:100])
        truncated_at = time.time()

        # Run 2, killed again; run 3 to the end, the same command each time.
        t0 = time.monotonic()
        proc = start(spec, site, tmp_path / "run2.log")
        drivers.append(proc.pid)
        kill_when(proc, run_dir, KILL_AT[1])
        walls.append(time.monotonic() - t0)
        t0 = time.monotonic()
        proc = start(spec, site, tmp_path / "run3.log")
        drivers.append(proc.pid)
        rc = proc.wait(timeout=300)
        walls.append(time.monotonic() - t0)
    finally:
        for pid in drivers:
            kill_session(pid)
    assert all(not session_procs(pid) for pid in drivers)
    assert rc == (1 if planned["permanent"] else 0), (tmp_path / "run3.log").read_text()[-4000:]

    # Every planned cell: one result file holding one row.
    plan_ids = pd.read_parquet(run_dir / "plan.parquet").cell_id.tolist()
    files = result_files(run_dir)
    tables = {p.stem: pq.read_table(p).to_pandas() for p in files}
    assert sorted(tables) == sorted(plan_ids) and len(plan_ids) == len(plan)
    lost = len(set(plan_ids) - set(tables))
    duplicated = sum(len(t) - 1 for t in tables.values()) + sum(
        1 for cid, t in tables.items() if set(t.cell_id) != {cid})
    assert lost == 0 and duplicated == 0
    rows = pd.concat(tables.values(), ignore_index=True)
    rows["key"] = [cell_key(c, s) for c, s in zip(rows.category, rows.seed, strict=True)]
    assert sorted(rows.key) == sorted(plan)

    # Status as the fault plan says: only permanent faults end failed, with their own error.
    by_key = rows.set_index("key")
    for key, kind in plan.items():
        row = by_key.loc[key]
        if kind == "permanent":
            assert row.status == "failed" and "injected permanent fault" in row.error, (key, row.error)
        else:
            assert row.status == "ok", (key, kind, row.error)
            assert (run_dir / "scores" / f"{row.cell_id}.parquet").is_file()

    # No cell started again after its ok row: its successful start is its last one.
    events = read_events(markers)
    starts = [e for e in events if e["event"] == "start"]
    for key, row in by_key[by_key.status == "ok"].iterrows():
        mine = [e for e in starts if e["key"] == key]
        assert max(e["t"] for e in mine) <= row.finished_at.timestamp(), key
        assert [e for e in mine if e["t"] >= row.started_at.timestamp()] == [max(mine, key=lambda e: e["t"])]
        assert int(row.diag_starts) == len(mine), key  # the ok attempt was the cell's last start
        if kind := plan[key]:
            assert len(mine) >= {"transient": SETTINGS["transient_failures"] + 1, "kill": 2}[kind], key
    victim_row = rows.set_index("cell_id").loc[victim.stem]
    assert victim_row.status == "ok" and victim_row.started_at.timestamp() > truncated_at  # re-run

    # Never more than max_concurrent at once: the rows' intervals, and every finished attempt's.
    spans = [(r.started_at.timestamp(), r.finished_at.timestamp()) for r in rows.itertuples()]
    assert max_overlap(spans) <= MAX_CONCURRENT
    ends = {(e["key"], e["start"]): e["t"] for e in events if e["event"] == "end"}
    attempts = [(e["t"], ends[(e["key"], e["start"])]) for e in starts if (e["key"], e["start"]) in ends]
    assert max_overlap(attempts) <= MAX_CONCURRENT

    temps = [p for p in run_dir.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
    assert not temps, temps
    report = subprocess.run([sys.executable, "-m", "reports.build", str(run_dir)], cwd=REPO,
                            env=env_with(site), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (run_dir / "report.html").stat().st_size > 0

    kills = sum(1 for e in starts if plan[e["key"]] == "kill" and e["start"] == 1)
    print(f"\nsoak: {len(plan)} cells; faults planned: {dict(planned)}; starts {len(starts)}, "
          f"retries {len(starts) - len(plan)}, worker SIGKILLs {kills}, driver SIGKILLs 2, truncated 1; "
          f"final: {int((rows.status == 'ok').sum())} ok, {int((rows.status == 'failed').sum())} failed; "
          f"rows lost {lost}, rows duplicated {duplicated}; runs {', '.join(f'{w:.0f}s' for w in walls)}, "
          f"total {time.monotonic() - t_all:.0f}s", file=sys.stderr)
