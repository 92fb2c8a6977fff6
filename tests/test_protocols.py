"""Published protocols through the harness: a MeDS-style list trains the cells on exactly its images,
bad lists stop the sweep before Ray (exit 2, list + line), and a run's exported splits reproduce it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest_data import build_mvtec, sweep_env, write_tiny_spec

from harness.cells import expand_cells
from harness.spec import load_spec
from harness.store import RunStore
from harness.sweep import main as sweep_main
from harness.trial import TrialContext, run_one

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "train_mvtec_nr{ratio_pct}_seed_{seed}.csv"


def _tree(tmp_path: Path) -> Path:
    return build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 3, "scratch": 2}, "wood": {"hole": 3}},
                       n_train=4, n_good=2)


def _meds(folder: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("filename,clsname\n" + "".join(f"{f},{c}\n" for f, c in rows))
    return path


GOOD_LIST = [("bottle/train/good/000.png", "bottle"), ("bottle/train/good/001.png", "bottle"),
             ("bottle/train/good/003.png", "bottle"), ("bottle/test/broken/002.png", "bottle"),
             ("wood/train/good/000.png", "wood"), ("wood/train/good/002.png", "wood"),
             ("wood/test/hole/001.png", "wood")]


def test_a_meds_list_trains_the_cells_on_exactly_its_images(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    _meds(tmp_path / "lists", "train_mvtec_nr10_seed_0.csv", GOOD_LIST)
    spec_path = write_tiny_spec(tmp_path / "s.yaml", root, contamination={
        "ratios": [0.1], "overlap": True, "lists": str(tmp_path / "lists" / TEMPLATE)})
    spec = load_spec(spec_path)
    cells = expand_cells(spec)
    run = tmp_path / "runs" / "t"
    store = RunStore(run, methods=spec.resolved()["methods"])
    store.write_spec(spec.resolved())
    ctx = TrialContext(run_name="t", run_dir=str(run), feature_cache=str(tmp_path / "feats"),
                       methods=spec.resolved()["methods"])
    for cell in cells:
        run_one(cell, ctx, attempt=1)
    rows = pd.read_parquet(run / "results")
    assert len(rows) == 2 and (rows["status"] == "ok").all()
    assert set(rows["contamination_source"]) == {"list"}
    assert rows["split_source"].str.contains("train_mvtec_nr10_seed_0.csv sha256:").all()
    for cell in cells:
        with (run / "splits" / f"{cell.cell_id}.csv").open() as fh:
            used = list(csv.DictReader(fh))
        cat = cell.config.category
        train = {r["path"] for r in used if r["role"] == "train"}
        assert train == {f for f, c in GOOD_LIST if c == cat}
        # overlap: the test set is the category's whole test set, the listed anomaly included
        test = {r["path"] for r in used if r["role"] == "test"}
        assert {f for f, c in GOOD_LIST if c == cat and "/test/" in f} <= test
        n_test = {"bottle": 2 + 5, "wood": 2 + 3}[cat]
        assert len(test) == n_test
        row = rows[rows["cell_id"] == cell.cell_id].iloc[0]
        assert row["n_injected"] == 1 and row["n_train_pool"] == len(train)


BAD_LISTS = {
    "missing-image": ([("bottle/train/good/009.png", "bottle"), ("wood/train/good/000.png", "wood")],
                      "line 2: 'bottle/train/good/009.png' is not an image of category 'bottle'"),
    "unknown-category": ([*GOOD_LIST, ("carpet/train/good/000.png", "carpet")],
                         "line 9: category 'carpet' is not in the dataset"),
    "twice": ([*GOOD_LIST, ("wood/train/good/000.png", "wood")],
              "line 9: 'wood/train/good/000.png' listed twice (first on line 6)"),
    "category-not-listed": (GOOD_LIST[:4], "lists no training image of category 'wood'"),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_a_bad_list_stops_the_sweep_before_ray(tmp_path: Path, case: str, capsys) -> None:
    rows, message = BAD_LISTS[case]
    lst = _meds(tmp_path / "lists", "train_mvtec_nr10_seed_0.csv", rows)
    spec = write_tiny_spec(tmp_path / "s.yaml", _tree(tmp_path), contamination={
        "ratios": [0.1], "lists": str(tmp_path / "lists" / TEMPLATE)})
    code = sweep_main([str(spec)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert any(message in ln and str(lst) in ln for ln in lines), err
    assert not (tmp_path / "runs").exists()


def test_a_missing_list_and_a_bad_template_are_named(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path)
    spec = write_tiny_spec(tmp_path / "s.yaml", root, contamination={
        "ratios": [0.1], "lists": str(tmp_path / "lists" / TEMPLATE)})
    assert sweep_main([str(spec), "--dry-run"]) == 2
    assert "train_mvtec_nr10_seed_0.csv: split list does not exist" in capsys.readouterr().err
    spec = write_tiny_spec(tmp_path / "s.yaml", root, contamination={
        "ratios": [0.1], "lists": str(tmp_path / "lists" / "{category}.csv")})
    assert sweep_main([str(spec), "--dry-run"]) == 2
    assert "unknown field(s) category" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_splits_reproduce_a_run(tmp_path: Path) -> None:
    """Run a synthetic sweep, export its splits as MeDS lists, sweep again from the lists: the same
    training and test images in every cell, and identical per-image scores."""
    base = {"datasets": [{"kind": "synthetic", "categories": ["brick"]}],
            "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 96, "crop": 96},
            "contamination": {"ratios": [0.1]}, "seeds": [0, 1],
            "methods": {"patchcore": {"coreset_ratio": 0.5}, "funad": {"epochs": 2}},
            "data_cache": str(tmp_path / "data"), "feature_cache": str(tmp_path / "feats")}
    first = write_tiny_spec(tmp_path / "a.yaml", tmp_path, name="a", **base)
    res = subprocess.run([sys.executable, "-m", "harness.sweep", str(first), "-q"], cwd=ROOT, env=sweep_env(),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run_a = tmp_path / "runs" / "a"
    out = tmp_path / "exported"
    res = subprocess.run([sys.executable, "-m", "harness.splits", "export", str(run_a), str(out)], cwd=ROOT,
                         env=sweep_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"train_synthetic_nr10_seed_{s}.csv" for s in (0, 1)]
    lists = str(out / "train_synthetic_nr{ratio_pct}_seed_{seed}.csv")
    second = write_tiny_spec(tmp_path / "b.yaml", tmp_path, name="b",
                             **{**base, "contamination": {"ratios": [0.1], "lists": lists}})
    res = subprocess.run([sys.executable, "-m", "harness.sweep", str(second), "-q"], cwd=ROOT,
                         env=sweep_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run_b = tmp_path / "runs" / "b"
    key = ["method", "category", "ratio", "seed"]
    a = pd.read_parquet(run_a / "results").set_index(key)
    b = pd.read_parquet(run_b / "results").set_index(key)
    assert len(a) == len(b) == 4 and (b["contamination_source"] == "list").all()
    assert (a["n_injected"] > 0).all() and (a["contamination_source"] == "anomalies").all()
    for k in a.index:
        for role in ("train", "test"):
            used = [pd.read_csv(run / "splits" / f"{df.loc[k, 'cell_id']}.csv")
                    for run, df in ((run_a, a), (run_b, b))]
            sel = [sorted(u.loc[u["role"] == role, "path"]) for u in used]
            assert sel[0] == sel[1], (k, role)
        sa = pd.read_parquet(run_a / "scores" / f"{a.loc[k, 'cell_id']}.parquet").sort_values("image_id")
        sb = pd.read_parquet(run_b / "scores" / f"{b.loc[k, 'cell_id']}.parquet").sort_values("image_id")
        assert list(sa["image_id"]) == list(sb["image_id"])
        assert sa["score"].to_numpy().tobytes() == sb["score"].to_numpy().tobytes(), k


def test_dry_run_says_what_each_policy_does_with_a_short_category(tmp_path: Path, capsys) -> None:
    # wood: 4 normals, 3 test anomalies, min(10, 3 // 2) = 1 stays for testing -> 2 can be spared, so
    # ratio 0.5 fits (floor(0.5 * 4) = 2) and 0.9 (floor(3.6) = 3) does not; bottle (5 anomalies, 2 stay) fits
    spec = write_tiny_spec(tmp_path / "s.yaml", _tree(tmp_path), contamination={"ratios": [0.5, 0.9]})
    assert sweep_main([str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("bottle: 4 normal training images, 5 test anomalies -> up to ratio 0.750, every requested amount "
            "fits") in out
    assert "wood: 4 normal training images, 3 test anomalies -> up to ratio 0.500\n" in out
    assert ("ratio 0.9: wants 3, 2 can be spared -> *cap: 2 (achieved ratio 0.500) | augment: 2 + 1 "
            "perturbed copies | error: the cell fails") in out
    assert "ratio 0.5: wants" not in out
