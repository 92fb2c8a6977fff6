"""The sweep on Ray, end to end through the CLI: local run, resume, grown spec, 2-node cluster, failures.

Each sweep runs in a subprocess (exit codes matter, and a driver's Ray must not leak into pytest);
the Parquet files of the run directory are what every assertion reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest_data import build_mvtec, sweep_env, write_image, write_mask, write_tiny_spec

from rundir import RESULT_FIELDS

REPO = Path(__file__).resolve().parent.parent
CONTRACT_COLUMNS = [f.name for f in RESULT_FIELDS]


def make_spec(
    tmp_path: Path, root: Path, *, name: str = "t", seeds: list[int] | None = None, **changes: object
) -> Path:
    """Tiny cells: 2 MVTec-layout categories, a 64 px bundled CPU backbone, patchcore + 1-epoch FUN-AD."""
    methods = {"patchcore": {"coreset_ratio": 0.5}, "funad": {"epochs": 1}}
    changes = {"name": name, "seeds": seeds or [0], "methods": methods, **changes}
    return write_tiny_spec(tmp_path / f"{name}.yaml", root, **changes)


def sweep(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 600
) -> subprocess.CompletedProcess:
    full_env = sweep_env(env, pythonpath=REPO)
    res = subprocess.run(
        [sys.executable, "-m", "harness.sweep", *args, "-q"],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    print(res.stdout[-4000:], res.stderr[-4000:], sep="\n--- stderr ---\n")
    return res


def results(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results")


def mtimes(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*.parquet")}


def test_local_sweep_resume_and_growth(tmp_path: Path) -> None:
    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    spec = make_spec(tmp_path, root, report=True)
    run_dir = tmp_path / "runs" / "t"

    first = sweep(str(spec))
    assert first.returncode == 0
    assert (run_dir / "report.html").is_file() and f"report: {run_dir / 'report.html'}" in first.stdout
    df = results(run_dir)
    assert len(df) == 4 and df.cell_id.is_unique  # 2 categories x 2 methods
    assert set(df.status) == {"ok"}
    assert set(CONTRACT_COLUMNS) <= set(df.columns)
    assert df.attempt.tolist() == [1] * 4
    assert df.image_auroc.between(0, 1).all()
    assert df.error.isna().all() and (df.node != "").all() and set(df.device) == {"cpu"}
    assert (df.finished_at >= df.started_at).all() and (df.peak_rss_mb > 0).all()
    assert (run_dir / "sweep.yaml").is_file() and (run_dir / "features").is_dir()
    for table in ("scores", "history", "maps"):
        assert len(list((run_dir / table).glob("*.parquet"))) == 4
    assert "4 ok" in first.stdout and "0 failed" in first.stdout
    assert "features: " in first.stdout and "backbone forwards" in first.stdout
    history = pd.read_parquet(run_dir / "history")
    assert (history.method == "funad").any()

    # A rerun has nothing to do: no Ray, no features, no trial, no file rewritten (report kept).
    before = mtimes(run_dir)
    again = sweep(str(spec))
    assert again.returncode == 0
    assert "0 to run" in again.stdout and "ray:" not in again.stdout and "features:" not in again.stdout
    assert mtimes(run_dir) == before

    # A grown spec (one more seed) runs only its new cells, on a warm feature cache.
    grown = sweep(str(make_spec(tmp_path, root, seeds=[0, 1])))
    assert grown.returncode == 0
    assert "4 already ok, 4 to run" in grown.stdout
    assert "features: 0 backbone forwards" in grown.stdout
    after = mtimes(run_dir)
    assert {k: after[k] for k in before} == before
    df = results(run_dir)
    assert len(df) == 8 and set(df.status) == {"ok"} and sorted(df.seed.unique()) == [0, 1]


@pytest.mark.slow
def test_trial_failure_is_recorded_and_others_finish(tmp_path: Path) -> None:
    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    # 2 injected anomalies with shortfall `error`: bottle (3 anomalies, 1 stays for testing) can spare
    # them, wood (2 anomalies, 1 stays) cannot, so its cell fails inside the trial (an undecodable
    # image would stop the whole sweep before any trial: tests/test_reliability_inputs.py).
    # Relative dataset root and storage, resolved against the driver's working directory even
    # though trials and feature tasks run in other processes.
    spec = make_spec(
        tmp_path, root, methods={"patchcore": {"coreset_ratio": 0.5}}, max_failures=1, storage="runs",
        datasets=[{"kind": "mvtec", "root": "mvtec", "categories": "all"}],
        contamination={"counts": [2], "shortfall": "error"},
    )
    res = sweep(str(spec), cwd=tmp_path)
    assert res.returncode == 1
    df = results(tmp_path / "runs" / "t").set_index("category")
    assert df.loc["bottle", "status"] == "ok"
    assert df.loc["wood", "status"] == "failed"
    assert "shortfall policy 'error'" in df.loc["wood", "error"] and "mvtec/wood" in df.loc["wood", "error"]
    assert df.loc["wood", "attempt"] == 2  # retried once (max_failures: 1), then recorded as failed
    assert pd.isna(df.loc["wood", "image_auroc"])
    assert "1 ok" in res.stdout and "1 failed" in res.stdout

    # Repaired data (a third wood anomaly): the rerun runs only the failed cell; its ok row replaces
    # the failed one and the attempt count continues from the earlier invocation.
    write_image(root / "wood" / "test" / "hole" / "002.png", value=102)
    write_mask(root / "wood" / "ground_truth" / "hole" / "002_mask.png")
    again = sweep(str(spec), cwd=tmp_path)
    assert again.returncode == 0
    assert "1 already ok, 1 to run" in again.stdout
    df = results(tmp_path / "runs" / "t").set_index("category")
    assert set(df.status) == {"ok"} and df.loc["wood", "attempt"] == 3 and df.loc["bottle", "attempt"] == 1


@pytest.mark.slow
def test_sweep_on_two_node_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    spec = make_spec(tmp_path, root, methods={"patchcore": {"coreset_ratio": [0.5, 1.0]}})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # One machine, so tmp_path is "shared" storage: say so explicitly, as a user on NFS would.
        res = sweep(str(spec), "--address", cluster.address, env={"FUNAD_STORAGE_SHARED": "1"})
    finally:
        cluster.shutdown()
    assert res.returncode == 0
    df = results(tmp_path / "runs" / "t")
    assert len(df) == 4 and df.cell_id.is_unique and set(df.status) == {"ok"}
    assert "2 CPU" in res.stdout


@pytest.mark.slow
def test_interrupt_stops_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    import signal
    import time

    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    # 2 categories x 2 settings x 3 seeds = 12 short trials, 2 at a time: long enough to interrupt.
    spec = make_spec(tmp_path, root, seeds=[0, 1, 2], methods={"patchcore": {"coreset_ratio": [0.5, 1.0]}})
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.sweep", str(spec), "-q"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the trials phase has begun
        lines.append(line)
        if "backbone forwards in" in line:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    print(text[-4000:])
    assert proc.returncode == 130
    assert "INCOMPLETE" in text and "Resume with:" in text and "harness.sweep" in text
    run_dir = tmp_path / "runs" / "t"
    done = len(list((run_dir / "results").glob("*.parquet"))) if (run_dir / "results").exists() else 0
    assert done < 12

    res = sweep(str(spec))
    assert res.returncode == 0
    df = results(run_dir)
    assert len(df) == 12 and set(df.status) == {"ok"}
