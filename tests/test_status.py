"""`python -m harness.status RUN_DIR`: a run killed mid-sweep, resumed to the end, then with failed,
missing and out-of-grid cells, and a directory that is not a run. The sweep is real (subprocess, local
Ray), as in the fault tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest_data import build_mvtec, sweep_env, write_tiny_spec
from test_reliability_faults import drivers, kill_session  # noqa: F401 - `drivers` is a fixture

ROOT = Path(__file__).resolve().parents[1]


def status(run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.status", str(run), *extra], cwd=ROOT,
                          env=sweep_env(), capture_output=True, text=True, timeout=120)


def status_json(run: Path) -> tuple[int, dict]:
    res = status(run, "--json")
    return res.returncode, json.loads(res.stdout)


def test_not_a_run_directory(tmp_path: Path) -> None:
    for target in (tmp_path, tmp_path / "missing"):
        res = status(target)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert res.stderr.count("error:") == 1 and str(target) in res.stderr


@pytest.mark.slow
@pytest.mark.long
def test_status_while_killed_after_resume_and_with_failed_missing_and_foreign_cells(
    tmp_path: Path, drivers: list[int]  # noqa: F811
) -> None:
    spec = write_tiny_spec(tmp_path / "s.yaml", build_mvtec(tmp_path / "data"), seeds=[0, 1, 2],
                           methods={"funad": {"epochs": 150, "batch_size": 2}})
    run = tmp_path / "runs" / "t"
    cmd = [sys.executable, "-m", "harness.sweep", str(spec), "-q", "--progress-every", "1", "--set",
           "max_concurrent=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=sweep_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    drivers.append(proc.pid)
    # while it runs: a running cell with its epoch, an ETA field, the resume command
    deadline, seen = time.monotonic() + 400, None
    while time.monotonic() < deadline:
        if (run / "live.json").is_file():
            code, st = status_json(run)
            if st["sweep"] == "running" and st["running"] and st["running"][0].get("epoch"):
                seen = st
                break
        time.sleep(1.0)
    assert seen is not None, "the sweep never showed a running cell"
    assert code == 1 and seen["counts"]["running"] == 1 and seen["total"] == 6
    assert seen["running"][0]["epochs"] == 150 and "eta_s" in seen
    assert seen["resume_command"].endswith("--set max_concurrent=1")
    # SIGKILL the driver: live.json still says running, but its pid is gone
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    kill_session(proc.pid)
    code, st = status_json(run)
    assert code == 1 and st["sweep"] == "stopped" and st["stale_live_state"]
    assert st["counts"]["running"] == 0
    assert st["counts"]["not started"] + st["counts"]["failed"] + st["counts"]["ok"] == 6
    text = status(run).stdout
    assert "crashed or killed" in text and "resume: " in text

    # resume with the same command: everything ok, exit 0
    done = subprocess.run(cmd, cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    code, st = status_json(run)
    assert code == 0 and st["counts"]["ok"] == 6 and st["sweep"] == "finished" and st["complete"]

    # a failed cell, a missing cell, and a result of a cell the spec no longer has
    files = sorted((run / "results").glob("*.parquet"))
    table = pq.read_table(files[0]).to_pylist()
    table[0].update(status="failed", error="RuntimeError: out of memory\n  traceback line")
    schema = pq.read_schema(files[0])
    pq.write_table(pa.Table.from_pylist(table, schema=schema), files[0])
    files[1].unlink()
    table[0].update(cell_id="0000000000000000")
    pq.write_table(pa.Table.from_pylist(table, schema=schema), run / "results" / "0000000000000000.parquet")
    code, st = status_json(run)
    assert code == 1
    assert st["counts"] == {"ok": 4, "failed": 1, "running": 0, "not started": 1}
    assert st["out_of_grid"] == ["0000000000000000"]
    assert st["failed"][0]["error"] == "RuntimeError: out of memory"
    assert st["by_method_dataset"]["funad / mvtec"]["failed"] == 1
    text = status(run).stdout
    assert "out of the spec's grid" in text and "RuntimeError: out of memory" in text
