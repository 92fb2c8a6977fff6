"""Methods from other packages: the example plugin installs and runs a sweep; broken plugins exit 2.

Plugins are found through installed distributions' metadata. The broken cases are tiny hand-made
distributions (a `*.dist-info` folder with METADATA and entry_points.txt beside a module) on PYTHONPATH,
exactly what an installed wheel leaves on disk; the example package is installed by pip.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest_data import build_mvtec, sweep_env, write_tiny_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "patchknn"

GOOD_BODY = '''
from dataclasses import dataclass
from typing import ClassVar
import numpy as np
from funad.methods import Method, MethodSettings, Scores

class S(MethodSettings):
    k: int = 1

@dataclass
class M(Method):
    name: ClassVar[str] = "{name}"
    Settings: ClassVar[type] = S
    def fit(self, train, ctx):
        pass
    def score(self, test, ctx):
        return Scores(np.zeros(test.n, np.float32), None)
'''


def fake_distribution(where: Path, dist: str, entry: str, module: str, body: str) -> Path:
    """A minimal installed distribution: `<dist>-0.1.dist-info/{METADATA,entry_points.txt}` + a module."""
    where.mkdir(parents=True, exist_ok=True)
    info = where / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[funad_bench.methods]\n{entry}\n")
    (where / f"{module}.py").write_text(body)
    return where


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Put a folder of fake distributions on sys.path for this process, with a fresh method registry
    (the registry reads entry points once), and remove them again afterwards."""
    import importlib

    import funad.methods as registry

    before = dict(registry._REGISTRY)

    def add(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        monkeypatch.setattr(registry, "_plugins_loaded", False)

    yield add
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    registry._plugins_loaded = False


def dry_run(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`python -m harness.sweep SPEC --dry-run` in this process (its exit code, stdout, stderr)."""
    from harness.sweep import main

    code = main([str(spec), "--dry-run"])
    out = capsys.readouterr()
    return code, out.out, out.err


CASES = {
    "import": ("broken = broken_mod:M", "broken_mod", "import no_such_package_here\n",
               "cannot be imported: ModuleNotFoundError"),
    "not-a-method": ("plain = plain_mod:M", "plain_mod", "class M:\n    pass\n",
                     "is not a subclass of funad.methods.Method"),
    "no-name": ("nameless = nameless_mod:M", "nameless_mod", GOOD_BODY.format(name=""), "has no `name`"),
    "other-name": ("alias = alias_mod:M", "alias_mod", GOOD_BODY.format(name="other"),
                   "the class's name is 'other', but the entry point calls it 'alias'"),
    "no-settings": ("bare = bare_mod:M", "bare_mod",
                    GOOD_BODY.format(name="bare").replace("Settings: ClassVar[type] = S", ""),
                    "has no `Settings` of its own"),
    "clash": ("patchcore = clash_mod:M", "clash_mod", GOOD_BODY.format(name="patchcore"),
              "clashes with the built-in method 'patchcore'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_plugin_stops_the_sweep_before_ray(tmp_path: Path, case: str, installed, capsys) -> None:
    entry, module, body, message = CASES[case]
    installed(fake_distribution(tmp_path / "site", f"acme-{case}", entry, module, body))
    spec = write_tiny_spec(tmp_path / "s.yaml", build_mvtec(tmp_path / "data"))
    code, out, err = dry_run(spec, capsys)
    assert code == 2, out + err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert message in lines[0] and f"acme-{case}" in lines[0] and f"{module}:M" in lines[0], lines[0]
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_a_broken_plugin_exits_2_from_the_command_line(tmp_path: Path) -> None:
    entry, module, body, message = CASES["import"]
    site = fake_distribution(tmp_path / "site", "acme-cli", entry, module, body)
    spec = write_tiny_spec(tmp_path / "s.yaml", build_mvtec(tmp_path / "data"))
    res = subprocess.run([sys.executable, "-m", "harness.sweep", str(spec), "--dry-run"], cwd=ROOT,
                         env=sweep_env(pythonpath=site), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_a_good_fake_plugin_validates_its_settings(tmp_path: Path, installed, capsys) -> None:
    installed(fake_distribution(tmp_path / "site", "acme-ok", "okm = ok_mod:M", "ok_mod",
                                GOOD_BODY.format(name="okm")))
    data = build_mvtec(tmp_path / "data")
    spec = write_tiny_spec(tmp_path / "s.yaml", data, methods={"okm": {"k": [1, 2]}})
    code, out, err = dry_run(spec, capsys)
    assert code == 0, err
    assert "okm 4" in out  # 2 categories x k in {1, 2}
    bad = write_tiny_spec(tmp_path / "b.yaml", data, methods={"okm": {"k": "x", "nope": 1}})
    code, out, err = dry_run(bad, capsys)
    assert code == 2
    assert "methods.okm.k" in err and "methods.okm.nope: unknown setting" in err


@pytest.mark.slow
def test_the_example_plugin_installs_and_runs_a_sweep(tmp_path: Path) -> None:
    """pip installs examples/patchknn (into a target folder, not the venv), and a Ray sweep runs it: ok
    rows with its diag_bank_size column, next to a built-in method, in one schema."""
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--target", str(site), "--quiet", str(EXAMPLE)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr
    assert list(site.glob("funad_bench_patchknn-*.dist-info"))
    spec = write_tiny_spec(tmp_path / "s.yaml", build_mvtec(tmp_path / "data"),
                           methods={"patchknn": {"k": 2}, "patchcore": {"coreset_ratio": 0.5}})
    res = subprocess.run([sys.executable, "-m", "harness.sweep", str(spec), "-q"], cwd=ROOT,
                         env=sweep_env(pythonpath=site), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "runs" / "t" / "results")
    assert set(rows["method"]) == {"patchknn", "patchcore"} and (rows["status"] == "ok").all()
    knn_rows = rows[rows["method"] == "patchknn"]
    assert len(knn_rows) == 2 and knn_rows["diag_bank_size"].gt(0).all()
    assert rows.loc[rows["method"] == "patchcore", "diag_bank_size"].notna().all()
    assert knn_rows["image_auroc"].between(0, 1).all()
