"""Faults during a sweep: a killed driver, a killed trial worker, a lost node, half-written and
corrupt files, a grown spec, determinism across concurrency, and the security defaults.

The sweeps run through the real CLI in subprocesses (helpers from test_sweep_ray); the Parquet files
of the run directory are what the assertions read. Every Ray a test's driver starts is removed by
PID at the end (never `ray stop`, which would also stop other users' clusters on the machine).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from conftest_data import build_mvtec, sweep_env
from fault_plugin import install
from fault_plugin.faultmethod import read_events
from test_sweep_ray import REPO, make_spec, results, sweep

METRICS = ["image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max"]


# ------------------------------------------------------------------------------------ Ray hygiene
def session_procs(driver_pid: int) -> list[psutil.Process]:
    """Every process of the local Ray that the driver `driver_pid` started (its session directory
    ends in the driver's pid), with their children (workers)."""
    pattern = re.compile(rf"session_[0-9_\-]+_{driver_pid}\b")
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if pattern.search(" ".join(p.info.get("cmdline") or [])):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def kill_session(driver_pid: int) -> None:
    procs = session_procs(driver_pid)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=20)


@pytest.fixture
def drivers() -> list[int]:
    """PIDs of sweep drivers a test starts; their Rays are removed afterwards, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        kill_session(pid)
    for pid in pids:
        assert not session_procs(pid), f"Ray processes of driver {pid} survived the cleanup"


def popen_sweep(spec: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "harness.sweep", str(spec), "-q"],
        cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def read_until(proc: subprocess.Popen, pred, lines: list[str], timeout: float = 400) -> bool:
    """Read the driver's output until a line satisfies pred (True) or it ends (False)."""
    assert proc.stdout is not None
    t0 = time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        if pred(line):
            return True
        if time.monotonic() - t0 > timeout:
            break
    return False


def mtimes(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*.parquet")}


# ----------------------------------------------------------- 1 + 5: driver SIGKILL, corrupt files
@pytest.mark.slow
def test_driver_sigkill_then_rerun_with_corrupt_files(tmp_path: Path, drivers: list[int]) -> None:
    from funad.features.cache import DTYPE, entry_key

    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    # 2 categories x 2 seeds = 4 short trials, one at a time: killed after the second.
    spec = make_spec(
        tmp_path, root, seeds=[0, 1], max_concurrent=1, max_failures=1,
        methods={"patchcore": {"coreset_ratio": 0.5}},
    )
    run_dir = tmp_path / "runs" / "t"
    proc = popen_sweep(spec)
    drivers.append(proc.pid)
    lines: list[str] = []
    oks = 0

    def two_ok(line: str) -> bool:
        nonlocal oks
        oks += " ok " in line and line.startswith("[")
        return oks >= 2

    assert read_until(proc, two_ok, lines), "".join(lines)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: Ray and a running trial are orphaned
    proc.wait(timeout=30)
    # Ray fate-shares a local cluster's daemons with the driver that started it, so they usually go
    # with it; whatever is left (workers finishing, a slow raylet) stays up during the rerun below.
    left = session_procs(proc.pid)
    print(f"after SIGKILL of the driver: {len(left)} of its Ray processes still alive:",
          sorted({p.name() for p in left if p.is_running()}))
    finished = {
        name: m for name, m in mtimes(run_dir).items()
        if pq.read_table(run_dir / "results" / name).column("status").to_pylist() == ["ok"]
    }
    assert 2 <= len(finished) < 4

    # Half-written files, as a kill during a write would leave them:
    # (a) a truncated result: must count as missing and be re-run;
    victim = sorted(finished)[0]
    victim_path = run_dir / "results" / victim
    category = pq.read_table(victim_path).column("category").to_pylist()[0]
    victim_path.write_bytes(victim_path.read_bytes()[:100])
    del finished[victim]
    # (b) stray temp files of an interrupted atomic write: readers must ignore them, and the next
    #     driver removes them (no writer of them is alive when a driver starts);
    strays = [  # atomic_write's temp names: .<name>.<8 random characters>.tmp
        run_dir / "results" / f".{victim}.parquet.abc123de.tmp",
        run_dir / "scores" / ".x.parquet.q1w2e3r4.tmp",
        run_dir / ".live.json.k1ll3d00.tmp",
    ]
    for stray in strays:
        stray.write_bytes(b"PAR1 half a file")
    # (c) a corrupt feature-cache entry of the victim's category (same size, flipped bytes), with
    #     every pack broken too so the entries are read: it must be detected and recomputed.
    bdir = next((run_dir / "features").glob("*/entries")).parent
    key = entry_key(root / category / "train" / "good" / "000.png", None)
    entry = bdir / "entries" / key[:2] / f"{key}.npy"
    data = bytearray(entry.read_bytes())
    data[-64:] = bytes(255 - b for b in data[-64:])
    entry.write_bytes(bytes(data))
    for pack in (bdir / "packs").glob("*.npy"):
        raw = bytearray(pack.read_bytes())
        raw[-8:] = b"\0" * 8 if raw[-8:] != b"\0" * 8 else b"\1" * 8
        pack.write_bytes(bytes(raw))

    # Rerun the same command (without stopping anything the killed driver left).
    res = sweep(str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"sweep t: 4 cells, (\d+) already ok, (\d+) to run", res.stdout)
    assert m and int(m.group(1)) == len(finished), res.stdout
    assert not any(p.exists() for p in strays), res.stdout
    # (3, or more where the kill itself interrupted a write)
    assert (n := re.search(r"removed (\d+) temp file", res.stdout)) and int(n.group(1)) >= 3, res.stdout
    assert re.search(r"features: [1-9]\d* backbone forwards", res.stdout), res.stdout
    df = results(run_dir)
    assert len(df) == 4 and df.cell_id.is_unique and set(df.status) == {"ok"}
    after = mtimes(run_dir)
    assert {k: after[k] for k in finished} == finished  # finished cells were not re-run
    assert victim in after and pq.read_table(victim_path).column("status").to_pylist() == ["ok"]
    arr = np.load(entry, allow_pickle=False)
    assert arr.dtype == DTYPE and np.isfinite(arr).all()
    from funad.features.cache import FeatureCache

    assert FeatureCache(bdir, arr.shape).read_entry(key) is not None  # recomputed and verified


# ------------------------------------------- 3 + 7 + 9: worker killed, determinism, grown schema
def plugin_env(site: Path) -> dict[str, str]:
    """PYTHONPATH for `sweep()`: the test-only method plugin's folder (the repository goes first)."""
    return {"PYTHONPATH": str(site)}


@pytest.mark.slow
@pytest.mark.long
def test_killed_worker_retried_determinism_and_grown_schema(tmp_path: Path) -> None:
    site = install(tmp_path / "site")
    markers = tmp_path / "markers"
    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 2, "scratch": 1}}, n_train=4, n_good=2)
    # The plugin's cell SIGKILLs its own worker on its first start (like the OOM killer would).
    faulty = {"marker_dir": str(markers), "p_kill": 1.0}
    methods = {"patchcore": {"coreset_ratio": 0.5}, "funad": {"epochs": 1}, "faulty": faulty}
    # Run A: 2 trials at a time.
    spec_a = make_spec(
        tmp_path, root, name="a", max_concurrent=2, max_failures=1, methods=methods,
        storage=str(tmp_path / "store_a"),
    )
    res_a = sweep(str(spec_a), env=plugin_env(site))
    assert res_a.returncode == 0, res_a.stdout + res_a.stderr
    events = read_events(markers)
    assert [(e["event"], e["start"]) for e in events] == [("start", 1), ("start", 2), ("end", 2)], events
    assert events[0]["pid"] != events[1]["pid"]  # the retry ran in a new worker process
    df_a = results(tmp_path / "store_a" / "a").set_index("cell_id")
    assert len(df_a) == 3 and set(df_a.status) == {"ok"}
    killed = df_a.index[df_a.method == "faulty"][0]
    assert df_a.loc[killed, "attempt"] == 2  # the killed attempt was counted, then retried
    assert (df_a.drop(index=killed).attempt == 1).all()

    # Run B: same cells, one at a time, separate storage (and so its own feature cache). The faulty
    # cell has started before (the marker log), so it does not kill itself again.
    spec_b = make_spec(
        tmp_path, root, name="b", max_concurrent=1, methods=methods, storage=str(tmp_path / "store_b"),
    )
    res_b = sweep(str(spec_b), env=plugin_env(site))
    assert res_b.returncode == 0, res_b.stdout + res_b.stderr
    run_b = tmp_path / "store_b" / "b"
    df_b = results(run_b).set_index("cell_id")
    assert sorted(df_a.index) == sorted(df_b.index)  # cell ids do not depend on the run
    diag = [c for c in df_a.columns if c.startswith("diag_") and c != "diag_starts"]
    pd.testing.assert_frame_equal(
        df_a.loc[sorted(df_a.index), METRICS + diag], df_b.loc[sorted(df_a.index), METRICS + diag],
        check_exact=True,
    )
    scores_a = pd.read_parquet(tmp_path / "store_a" / "a" / "scores").sort_values(["cell_id", "image_id"])
    scores_b = pd.read_parquet(run_b / "scores").sort_values(["cell_id", "image_id"])
    assert scores_a.score.tolist() == scores_b.score.tolist()

    # Grown spec on run B: a new swept setting (hp_coreset_ratio) appears. Old files are rewritten
    # to the new schema first, so one read_parquet of the directory returns every column.
    grown = make_spec(
        tmp_path, root, name="b", max_concurrent=1, storage=str(tmp_path / "store_b"),
        methods={**methods, "patchcore": {"coreset_ratio": [0.5, 1.0]}},
    )
    res_g = sweep(str(grown), env=plugin_env(site))
    assert res_g.returncode == 0, res_g.stdout + res_g.stderr
    assert "3 already ok, 1 to run" in res_g.stdout and "schema:" in res_g.stdout
    df = results(run_b)
    assert len(df) == 4 and set(df.status) == {"ok"} and "hp_coreset_ratio" in df.columns
    assert df.hp_coreset_ratio.dropna().tolist() == [1.0]
    assert set(df.columns) == set(pq.read_schema(next((run_b / "results").glob("*.parquet"))).names)
    hist = pd.read_parquet(run_b / "history")
    assert (hist.method == "funad").any()


# ---------------------------------------------------------------------------- 4: a node is lost
@pytest.mark.slow
@pytest.mark.long
def test_worker_node_lost_mid_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node is removed while a cell runs on it (the plugin's event log says where each start
    ran); that cell must be rescheduled, start again on a surviving node and finish there."""
    from ray.cluster_utils import Cluster

    site = install(tmp_path / "site")
    # The nodes' workers must find the plugin too (a plugin is installed on every node).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    markers = tmp_path / "markers"
    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    spec = make_spec(
        tmp_path, root, seeds=[0, 1], max_failures=2,
        methods={"faulty": {"marker_dir": str(markers), "sleep_s": 4.0}},
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    proc = None
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        lost_node = worker.node_id
        env = sweep_env({"FUNAD_STORAGE_SHARED": "1"}, pythonpath=REPO)
        with open(tmp_path / "driver.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harness.sweep", str(spec), "--address", cluster.address, "-q"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )
        # Wait until a cell is running on the worker node (started there, not finished).
        t0 = time.monotonic()
        while not any(e["event"] == "start" and e["node"] == lost_node for e in read_events(markers)):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.monotonic() - t0 < 300, "no cell started on the worker node"
            time.sleep(0.1)
        running = next(e for e in read_events(markers) if e["event"] == "start" and e["node"] == lost_node)
        removed_at = time.time()
        cluster.remove_node(worker)  # the node dies with whatever runs on it
        proc.wait(timeout=500)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    text = (tmp_path / "driver.log").read_text()
    print(text[-4000:])
    assert proc.returncode == 0, text[-4000:]
    df = results(tmp_path / "runs" / "t")
    assert len(df) == 4 and df.cell_id.is_unique and set(df.status) == {"ok"}
    events = read_events(markers)
    mine = [e for e in events if e["key"] == running["key"]]
    # The lost start never finished; the cell started again after the loss, on a surviving node,
    # and that start is the one that finished and wrote the row.
    assert not [e for e in mine if e["event"] == "end" and e["start"] == running["start"]], mine
    retry = [e for e in mine if e["event"] == "start" and e["t"] > removed_at]
    assert len(retry) == 1 and retry[0]["node"] not in ("", lost_node), mine
    assert [e["start"] for e in mine if e["event"] == "end"] == [retry[0]["start"]], mine
    category, seed = running["key"].rsplit(":", 1)
    row = df[(df.category == category) & (df.seed == int(seed))].iloc[0]
    assert int(row.diag_starts) == retry[0]["start"], row
    # The driver's attempt counter must have counted the lost attempt (it must not live on the lost node).
    assert row.attempt == retry[0]["start"], f"attempt {row.attempt} after {retry[0]['start']} starts"
    assert row.started_at.timestamp() > removed_at
    # Nothing finished on the lost node after it was gone.
    assert not [e for e in events if e["event"] == "end" and e["node"] == lost_node and e["t"] > removed_at]


# ------------------------------------------------------------------ 9 (unit): schema unification
def _cell(cell_id: str, method: str, hp: dict):
    from funad.run import CellConfig
    from harness.cells import Cell

    cfg = CellConfig.build(
        dataset={"kind": "synthetic", "root": None}, category="brick",
        backbone={"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64},
        method=method, settings=dict(hp), split={"ratio": 0.1}, seed=1,
    )
    return Cell(cell_id, cfg, tuple(hp))


def _write(run_dir: Path, methods: dict, cell_id: str, method: str, hp: dict, history: list[dict]) -> None:
    from datetime import UTC, datetime

    from harness.rows import build_failed_row
    from harness.store import RunStore, write_table_atomic

    store = RunStore(run_dir, methods=methods)
    store.ensure_dirs()
    now = datetime(2025, 1, 1, tzinfo=UTC)
    row = build_failed_row(run="r", cell=_cell(cell_id, method, hp), error="x", started_at=now,
                           finished_at=now, device="cpu", node="n", peak_rss_mb=1.0, peak_gpu_mb=None)
    store.write_failed(row)
    write_table_atomic(store.path("history", cell_id), store.history_rows(cell_id, method, history),
                       store.history_schema)


def test_grown_and_shrunk_spec_keep_one_schema(tmp_path: Path) -> None:
    from harness.migrate import unify_run_schema
    from harness.schema import history_schema, result_schema
    from rundir import SCHEMA_METHODS_FILE

    run_dir = tmp_path / "run"
    logs: list[str] = []
    v1 = {"patchcore": {"coreset_ratio": 0.5}}
    m1 = unify_run_schema(run_dir, v1, log=logs.append)
    _write(run_dir, m1, "c1", "patchcore", {}, [{"epoch": 0, "loss": 1.0}])

    # Grown: a new method with a swept int setting, and patchcore's setting now swept (floats).
    v2 = {"patchcore": {"coreset_ratio": [0.5, 1.0]}, "funad": {"epochs": [1, 2]}}
    m2 = unify_run_schema(run_dir, v2, log=logs.append)
    assert any("rewrote 2" in ln for ln in logs), logs
    _write(run_dir, m2, "c2", "funad", {"epochs": 2}, [{"epoch": 1, "loss": 0.5, "pos_frac": 0.1}])
    _write(run_dir, m2, "c3", "patchcore", {"coreset_ratio": 1.0}, [])
    for table, schema in (("results", result_schema(m2)), ("history", history_schema(m2))):
        for p in (run_dir / table).glob("*.parquet"):
            assert pq.read_schema(p).remove_metadata().equals(schema), p
    df = pd.read_parquet(run_dir / "results")
    assert len(df) == 3 and {"hp_coreset_ratio", "hp_epochs"} <= set(df.columns)
    assert set(result_schema(m2).names) == set(df.columns)
    by = df.set_index("cell_id")
    assert pd.isna(by.loc["c1", "hp_epochs"]) and by.loc["c2", "hp_epochs"] == 2
    assert by.loc["c3", "hp_coreset_ratio"] == 1.0
    assert len(pd.read_parquet(run_dir / "history")) == 2

    # Shrunk: funad dropped from the spec. Its columns stay (the run still holds its rows), nothing
    # is rewritten, and the schema file keeps the union.
    logs.clear()
    m3 = unify_run_schema(run_dir, {"patchcore": {"coreset_ratio": 0.5}}, log=logs.append)
    assert m3 == m2 and not logs
    assert "funad" in (run_dir / SCHEMA_METHODS_FILE).read_text()
    assert {"hp_epochs"} <= set(pd.read_parquet(run_dir / "results").columns)
    # Temp files of an interrupted write are ignored by readers and by the migration.
    (run_dir / "results" / ".c9.parquet.abc.tmp").write_bytes(b"garbage")
    unify_run_schema(run_dir, {"softpatch": {}}, log=logs.append)
    assert len(pd.read_parquet(run_dir / "results")) == 3


# ------------------------------------------------------------------------------- 8: security
SOURCE_DIRS = ("harness", "funad", "reports", "benchmarks", "scripts")


def _sources() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]


def _calls(text: str, name: str) -> list[tuple[int, str]]:
    """(line, call text) of every `name(` call, arguments included (also across lines)."""
    out = []
    for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\s*\(", text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        out.append((text.count("\n", 0, m.start()) + 1, text[m.start() : i + 1]))
    return out


def test_no_unsafe_deserialisation_in_source() -> None:
    """yaml only through safe_load/SafeLoader, torch.load only with weights_only=True, no pickle of
    files, no numpy allow_pickle, no eval/exec: a sweep file, a weights file or a cache entry can
    never run code."""
    problems = []
    for path in _sources():
        text = "\n".join(ln.split("#", 1)[0] for ln in path.read_text(errors="replace").splitlines())
        rel = path.relative_to(REPO)
        for fn in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            problems += [f"{rel}:{n}: {c}" for n, c in _calls(text, fn) if "SafeLoader" not in c]
        problems += [f"{rel}:{n}: {c}" for n, c in _calls(text, "torch.load") if "weights_only=True" not in c]
        for fn in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load",
                   "joblib.load", "eval", "exec", "np.load", "numpy.load"):
            problems += [
                f"{rel}:{n}: {c}" for n, c in _calls(text, fn)
                if not fn.endswith("np.load") and fn != "numpy.load" or "allow_pickle=True" in c
            ]
        if re.search(r"yaml\.(Unsafe|Full)?Loader\b", text):
            problems.append(f"{rel}: uses an unsafe yaml Loader")
    assert not problems, "\n".join(problems)


def test_local_ray_dashboard_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local run's dashboard (HTTP, the one unauthenticated-by-design surface) listens on 127.0.0.1."""
    from types import SimpleNamespace

    from harness.raycluster import dashboard_installed, ray_session

    if not dashboard_installed():
        pytest.skip("ray[default] not installed")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # token auth stays at Ray's default (on)
    spec = SimpleNamespace(ray=SimpleNamespace(dashboard=True, num_cpus=1, num_gpus=0))
    with ray_session(spec, None, quiet=True) as handle:
        url = handle.dashboard_url
        port = int(url.rsplit(":", 1)[1])
        procs = [psutil.Process(), *psutil.Process().children(recursive=True), *session_procs(os.getpid())]
        listening = [
            c.laddr.ip
            for p in procs
            for c in _safe_conns(p)
            if c.status == "LISTEN" and c.laddr.port == port
        ]
    assert url.startswith("http://127.0.0.1:"), url
    assert listening and set(listening) == {"127.0.0.1"}, listening
    kill_session(os.getpid())
    assert not session_procs(os.getpid())


def _safe_conns(p: psutil.Process) -> list:
    try:
        return p.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
