"""The report of a REAL small sweep (synthetic data, three methods, two ratios) renders in Chromium.

The fixture-based browser test checks the report against hand-made Parquet files; this one closes the
loop: harness -> Parquet -> reports -> browser, with a failed cell in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report_browser import _errors, render_in_chromium

REPO = Path(__file__).resolve().parent.parent


def _sweep(spec: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(
        [sys.executable, "-m", "harness.sweep", str(spec)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    print(res.stdout[-3000:], res.stderr[-3000:], sep="\n--- stderr ---\n")
    return res


@pytest.mark.slow
def test_report_of_a_real_sweep_renders(tmp_path: Path, artifacts_dir: Path) -> None:
    spec = {
        "name": "real",
        "storage": str(tmp_path / "runs"),
        "ray": {"dashboard": False, "num_cpus": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 0,
        "datasets": [{"kind": "synthetic", "categories": ["brick"]}],
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 96, "crop": 96},
        "contamination": {"ratios": [0.0, 0.1], "overlap": False, "shortfall": "cap"},
        "seeds": [0],
        "methods": {"funad": {"epochs": 2}, "patchcore": {}, "softpatch": {}},
        "report": True,
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = _sweep(path)
    run = tmp_path / "runs" / "real"
    assert res.returncode == 0, res.stderr[-2000:]
    report = run / "report.html"
    assert f"report: {report}" in res.stdout

    df = pd.read_parquet(run / "results")
    assert len(df) == 6 and set(df.status) == {"ok"} and df.cell_id.is_unique

    state, events, png = render_in_chromium(report, tmp_path / "profile")
    (artifacts_dir / "report_real_sweep.png").write_bytes(png)
    assert _errors(events) == []
    assert state["n"] >= 8 and state["empty"] == [], state
    assert state["ratio"], "no ratio plots"
    for plot in state["ratio"]:  # one mean trace per method (no swept settings here)
        assert sorted(n.split(" ")[0] for n in plot["means"]) == sorted(df.method.unique()), plot
    assert state["imgs"] > 0  # the anomaly-map gallery came from the run's maps/ files
