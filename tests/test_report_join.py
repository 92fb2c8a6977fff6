"""One report over several runs (reports.join): cells of the same split are joined and paired, cells whose
splits differ are shown side by side and never paired."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import RunSpec, make_run_dir

from reports.build import build_report
from reports.build import main as build_main
from reports.compute import compute
from reports.join import load_runs
from rundir import EXIT_USAGE, split_file

CATS = ["brick", "grass"]


def _runs(tmp_path: Path, c_differs: bool) -> tuple[Path, Path, Path]:
    """A: funad + patchcore; B: softpatch on the same splits; C: softpatch [tau] whose split lists
    differ from A's when `c_differs` (another dataset version), else equal."""
    common = dict(categories=CATS, ratios=[0.0, 0.1], seeds=[0, 1, 2], failed=None, extra_grid_ratio=None)
    a = make_run_dir(tmp_path, RunSpec(name="a", methods={"funad": [{}], "patchcore": [{}]}, **common))
    b = make_run_dir(tmp_path, RunSpec(name="b", methods={"softpatch": [{}]}, **common))
    c = make_run_dir(tmp_path, RunSpec(name="c", methods={"softpatch": [{"hp_tau_n": 0.5}]}, **common))
    for run in (a, b, c):
        res = pd.read_parquet(run / "results")
        for row in res.itertuples():
            version = "v2" if (run == c and c_differs) else "v1"
            path = split_file(run, row.cell_id)
            path.parent.mkdir(exist_ok=True)
            path.write_text(f"path,category,role,label,injected\n{version}/{row.category}/{row.seed}/"
                            f"{row.ratio},{row.category},train,0,0\n")
    return a, b, c


def _pairs(report, a: str, b: str) -> pd.DataFrame:
    pw = report.raw["pairwise"]
    pw = pw[pw["metric"] == "image_auroc"]
    ab = (pw["method_a"] == a) & (pw["method_b"] == b)
    return pw[ab | ((pw["method_a"] == b) & (pw["method_b"] == a))]


def test_runs_on_the_same_splits_are_paired(tmp_path: Path) -> None:
    a, b, _ = _runs(tmp_path, c_differs=False)
    data = load_runs([a, b])
    assert data.run_dirs == [a, b] and set(data.results["run_dir"]) == {"a", "b"}
    assert len(data.results) == 2 * 2 * 3 * 3  # three methods x categories x ratios x seeds
    report = compute(data)
    both = _pairs(report, "patchcore", "softpatch")
    assert len(both) == 2 and (both["n"] == len(CATS) * 3).all()  # one row per ratio: 6 matched cells each
    assert data.join is not None and len(data.join) == 2 * 2 * 3 and data.join["paired"].all()
    # the per-image scores of each cell come from its own run
    assert set(data.cell_runs.values()) == {a, b}


def test_cells_whose_splits_differ_are_never_paired(tmp_path: Path) -> None:
    a, _, c = _runs(tmp_path, c_differs=True)
    data = load_runs([a, c])
    report = compute(data)
    pairs = _pairs(report, "patchcore", "softpatch")
    assert len(pairs) == 2 and (pairs["n"] == 0).all()  # no matched cell: no difference computed
    within = _pairs(report, "funad", "patchcore")
    assert (within["n"] == len(CATS) * 3).all()  # the cells of one run still pair
    assert not data.join["paired"].any() and data.join["note"].str.contains("never paired").all()
    # the tables keep both runs' cells: softpatch's mean is over its own cells only
    main = report.raw["main"]
    assert set(main["method"]) == {"funad", "patchcore", "softpatch"}


def test_the_cli_writes_one_report_for_several_runs(tmp_path: Path, capsys) -> None:
    a, b, c = _runs(tmp_path, c_differs=True)
    out = tmp_path / "joined"
    assert build_main([str(a), str(b), str(c), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Runs joined" in html and "never paired" in html
    assert (out / "report_tables").is_dir()
    assert build_main([str(a), str(b)]) == EXIT_USAGE  # several runs need --out
    assert "needs --out" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        build_report([a, tmp_path / "nope"], tmp_path / "x")


def test_one_run_is_read_as_before(tmp_path: Path) -> None:
    a, _, _ = _runs(tmp_path, c_differs=False)
    data = load_runs([a])
    assert "split_id" not in data.results.columns and data.join is None and data.run_dirs == [a]
