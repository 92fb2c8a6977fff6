"""The sweep CLI before Ray: validation, dry runs and the storage rule start no Ray process at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest_data import build_mvtec, sweep_env, write_tiny_spec

REPO = Path(__file__).resolve().parent.parent
RAY_DAEMONS = ("raylet", "gcs_server")


def ray_daemons() -> set[int]:
    """PIDs of Ray daemons on this machine (other tests' clusters included: compare before/after)."""
    pids = set()
    for p in psutil.process_iter(["name"]):
        if (p.info.get("name") or "") in RAY_DAEMONS:
            pids.add(p.pid)
    return pids


def write_spec(tmp_path: Path, **changes: object) -> Path:
    """A tiny valid sweep: a 2-category MVTec-layout tree, a small CPU backbone, patchcore."""
    root = build_mvtec(tmp_path / "mvtec", n_train=4, n_good=2)
    changes = {"seeds": [0, 1], "methods": {"patchcore": {"coreset_ratio": [0.5, 1.0]}}, **changes}
    return write_tiny_spec(tmp_path / "spec.yaml", root, **changes)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    full_env = sweep_env(env)
    return subprocess.run(
        [sys.executable, "-m", "harness.sweep", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def test_dry_run_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from harness.sweep import main

    spec = write_spec(tmp_path)
    before = ray_daemons()
    assert main([str(spec), "--dry-run"]) == 0
    text = capsys.readouterr().out
    # 2 categories x 2 coreset ratios x 2 seeds
    assert "8 cells" in text
    assert "feature jobs: 2" in text and "mvtec/bottle/tf_efficientnet_lite0" in text
    assert "example cells:" in text and "coreset_ratio" in text
    assert ray.is_initialized() is False
    assert ray_daemons() - before == set()
    assert not (tmp_path / "runs").exists()


def test_dry_run_override_changes_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.sweep import main

    spec = write_spec(tmp_path)
    overrides = ["--set", "seeds=[0]", "--set", "methods.patchcore.coreset_ratio=0.5"]
    assert main([str(spec), "--dry-run", *overrides]) == 0
    assert "2 cells" in capsys.readouterr().out


def test_bad_spec_exits_2_before_ray(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, contamination={"ratios": [1.5]}, bogus_key=1)
    before = ray_daemons()
    res = run_cli(str(spec))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "bogus_key" in res.stderr
    assert "ratios" in res.stderr
    assert "error:" in res.stderr
    assert ray_daemons() - before == set()
    assert not (tmp_path / "runs").exists()


def test_missing_env_var_exits_2(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, datasets=[{"kind": "mvtec", "root": "${FUNAD_SURELY_UNSET_ROOT}"}])
    env = {k: v for k, v in os.environ.items() if k != "FUNAD_SURELY_UNSET_ROOT"}
    res = subprocess.run(
        [sys.executable, "-m", "harness.sweep", str(spec), "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2
    assert "FUNAD_SURELY_UNSET_ROOT" in res.stderr


def test_local_storage_with_cluster_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    before = ray_daemons()
    res = run_cli(str(spec), "--address", "127.0.0.1:1", env={"FUNAD_STORAGE_SHARED": "0"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "storage_shared" in res.stderr and "s3://" in res.stderr
    assert ray_daemons() - before == set()
    assert not (tmp_path / "runs").exists()


def test_address_precedence_and_storage_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from harness.raycluster import ClusterError, check_storage, is_uri, resolve_address

    spec = SimpleNamespace(ray=SimpleNamespace(address="spec:6379"), storage_shared=False)
    monkeypatch.setenv("RAY_ADDRESS", "env:6379")
    assert resolve_address("cli:6379", spec) == "cli:6379"
    assert resolve_address(None, spec) == "spec:6379"
    spec.ray.address = None
    assert resolve_address(None, spec) == "env:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address(None, spec) is None

    assert is_uri("s3://b/runs") and is_uri("gs://b/r") and not is_uri("/mnt/efs/runs")
    assert not is_uri("file:///tmp/x")
    monkeypatch.delenv("FUNAD_STORAGE_SHARED", raising=False)
    check_storage(None, "/tmp/runs", spec)  # local Ray: any path
    check_storage("auto", "s3://bucket/runs", spec)
    with pytest.raises(ClusterError, match="storage_shared"):
        check_storage("auto", "/tmp/runs", spec)
    spec.storage_shared = True
    check_storage("auto", "/tmp/runs", spec)
    spec.storage_shared = False
    monkeypatch.setenv("FUNAD_STORAGE_SHARED", "1")
    check_storage("auto", "/tmp/runs", spec)


def test_resume_command_names_the_fresh_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from harness.sweep import parse_args, resume_command

    args = parse_args(["s.yaml", "--fresh", "--set", "seeds=[0]", "--address", "auto"])
    cmd = resume_command(args, SimpleNamespace(run_name="t-20260101T000000Z"))
    assert "--fresh" not in cmd
    assert "--set 'seeds=[0]'" in cmd and "--set name=t-20260101T000000Z" in cmd and "--address auto" in cmd


def test_feature_jobs_are_deduplicated() -> None:
    from funad.run import CellConfig
    from harness.cells import Cell, feature_jobs

    def cell(category: str, method: str, seed: int) -> Cell:
        cfg = CellConfig.build(dataset={"kind": "mvtec", "root": "/d"}, category=category,
                               backbone={"name": "x"}, method=method, seed=seed)
        return Cell(f"{category}-{method}-{seed}", cfg)

    cells = [cell("bottle", "patchcore", 0), cell("wood", "patchcore", 0), cell("bottle", "softpatch", 1)]
    tasks = feature_jobs([*cells, cell("bottle", "patchcore", 2)])
    assert [t.category for t in tasks] == ["bottle", "wood"]
    assert tasks[0].label == "mvtec/bottle/x"


def test_plan_is_written_before_ray_and_follows_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every invocation writes <run>/plan.parquet (the current grid) before Ray starts."""
    import pyarrow.parquet as pq

    import harness.sweep as hs
    from harness.cells import expand_cells
    from harness.spec import load_spec

    spec = write_spec(tmp_path)
    plan_file = tmp_path / "runs" / "t" / "plan.parquet"
    seen: list[list[str]] = []

    def no_ray(plan: hs.Plan, args: object, address: object) -> tuple[bool, None]:
        seen.append(pq.read_table(plan_file).column("cell_id").to_pylist())
        return False, None

    monkeypatch.setattr(hs, "run_on_ray", no_ray)
    monkeypatch.setattr(hs, "_sigterm_as_interrupt", lambda: None)  # keep pytest's own SIGTERM
    assert hs.main([str(spec)]) == 1  # nothing ran: not complete
    assert seen == [[c.cell_id for c in expand_cells(load_spec(spec))]] and len(seen[0]) == 8
    grown = ["--set", "seeds=[0,1,2]"]
    assert hs.main([str(spec), *grown]) == 1
    assert len(seen[1]) == 12 and set(seen[0]) < set(seen[1])
    assert pq.read_table(plan_file).column("cell_id").to_pylist() == seen[1]
    assert not [p for p in plan_file.parent.iterdir() if p.name.startswith(".")]  # no temp files
    capsys.readouterr()


@pytest.mark.parametrize("key", ["storage", "feature_cache", "data_cache"])
def test_uri_storage_is_refused_at_validation(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket URI is refused before anything starts (exit 2), with what to do instead."""
    import harness.sweep as hs

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a URI reached Ray")

    monkeypatch.setattr(hs, "run_on_ray", forbidden)
    spec = write_spec(tmp_path, **{key: "s3://bucket/runs"})
    assert hs.main([str(spec)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {spec}: {key}: 's3://bucket/runs' is a URI")
    assert "mount it on every node" in lines[0] and "storage_shared: true" in lines[0]
    assert not (tmp_path / "runs").exists()
