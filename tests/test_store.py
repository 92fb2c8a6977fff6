"""The run directory: one schema for every file, atomic writes, and the resume index."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from funad.data.contamination import Split
from funad.methods import method_class
from funad.run import CellConfig, CellOutcome
from harness.cells import Cell
from harness.rows import build_failed_row, build_ok_row
from harness.schema import history_schema, result_schema
from harness.store import RunStore

METHODS = {"funad": {"epochs": [2, 3], "keep_ratio": 0.5}, "patchcore": {"coreset_ratio": [0.1, 0.2]}}
CONTRACT_COLUMNS = {
    "run": pa.string(),
    "cell_id": pa.string(),
    "dataset": pa.string(),
    "category": pa.string(),
    "method": pa.string(),
    "backbone": pa.string(),
    "ratio": pa.float64(),
    "achieved_ratio": pa.float64(),
    "overlap": pa.bool_(),
    "seed": pa.int64(),
    "params": pa.string(),
    "n_train_normal": pa.int64(),
    "n_injected": pa.int64(),
    "n_test_normal": pa.int64(),
    "n_test_anomalous": pa.int64(),
    "injected_ids": pa.list_(pa.string()),
    "image_auroc": pa.float64(),
    "pixel_auroc": pa.float64(),
    "aupro": pa.float64(),
    "image_ap": pa.float64(),
    "pixel_ap": pa.float64(),
    "image_f1max": pa.float64(),
    "oracle_image_auroc": pa.float64(),
    "oracle_pixel_auroc": pa.float64(),
    "oracle_epoch": pa.int64(),
    "status": pa.string(),
    "error": pa.string(),
    "attempt": pa.int64(),
    "feature_s": pa.float64(),
    "fit_s": pa.float64(),
    "eval_s": pa.float64(),
    "wall_s": pa.float64(),
    "peak_rss_mb": pa.float64(),
    "peak_gpu_mb": pa.float64(),
    "device": pa.string(),
    "node": pa.string(),
    "git_commit": pa.string(),
    "versions": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
}
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_cell(cell_id: str, method: str, hp: dict) -> Cell:
    cfg = CellConfig.build(
        dataset={"kind": "synthetic", "root": None},
        category="brick",
        backbone={"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64},
        method=method,
        settings=dict(hp),
        split={"ratio": 0.1},
        seed=1,
    )
    return Cell(cell_id, cfg, tuple(hp))


def make_outcome(method: str, pixel: bool = True) -> CellOutcome:
    split = Split(
        train=[],
        test=[],
        injected_ids=["brick/test/hole/000.png"],
        n_train_normal=10,
        n_injected=1,
        n_test_normal=5,
        n_test_anomalous=4,
        requested_ratio=0.1,
        requested_count=None,
        achieved_ratio=0.1,
        shortfall_applied=None,
    )
    metrics = {
        "image_auroc": 0.9,
        "pixel_auroc": 0.8 if pixel else None,
        "aupro": 0.7 if pixel else None,
        "image_ap": 0.85,
        "pixel_ap": 0.3 if pixel else None,
        "image_f1max": 0.8,
    }
    diag = {d: 0.5 for d in method_class(method).diagnostic_names}
    rng = np.random.default_rng(0)
    examples = [
        {
            "image_id": "brick/test/hole/001.png",
            "pick": "best",
            "label": 1,
            "score": 2.0,
            "image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
            "map": np.linspace(0, 4, 64 * 64, dtype=np.float32).reshape(64, 64),
            "mask": np.eye(64, dtype=bool),
            "map_min": 0.0,
            "map_max": 4.0,
        }
    ]
    oracle = {"oracle_image_auroc": 0.95, "oracle_pixel_auroc": float("nan"), "oracle_epoch": 2.0}
    return CellOutcome(
        metrics=metrics,
        oracle=oracle if method == "funad" else {},
        split=split,
        scores=[{"image_id": "a", "label": 0, "score": 0.1}, {"image_id": "b", "label": 1, "score": 0.9}],
        history=[{"epoch": 1, "iteration": 3, "loss": 0.5, "diag_pos_frac": 0.1, "novel_key": 7}],
        diagnostics=diag,
        params={"epochs": 2},
        timings={"feature_s": 1.0, "fit_s": 2.0, "eval_s": 0.5},
        device="cpu",
        map_examples=examples if pixel else [],
        pixel_level=pixel,
        n_train_pool=11,
    )


def ok_row(store: RunStore, cell: Cell, pixel: bool = True) -> dict:
    return build_ok_row(
        run="r",
        cell=cell,
        outcome=make_outcome(cell.config.method, pixel),
        attempt=1,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=3),
    )


def test_schema_has_every_contract_column_typed() -> None:
    schema = result_schema(METHODS)
    for name, typ in CONTRACT_COLUMNS.items():
        assert schema.field(name).type == typ, name
        assert schema.field(name).nullable
    assert schema.field("hp_epochs").type == pa.int64()
    assert schema.field("hp_coreset_ratio").type == pa.float64()
    assert "hp_keep_ratio" not in schema.names  # not swept
    for m in METHODS:
        for d in method_class(m).diagnostic_names:
            assert schema.field(f"diag_{d}").type == pa.float64()
    h = history_schema(METHODS)
    for name in ("cell_id", "method", "epoch", "iteration", "loss", "loss_bce", "loss_ms"):
        assert name in h.names
    assert h.field("eval_image_auroc").type == pa.float64() and "diag_pos_frac" in h.names


def test_two_files_with_different_nulls_read_back(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", METHODS)
    a = make_cell("aaaa000000000000", "funad", {"epochs": 2})
    b = make_cell("bbbb000000000000", "patchcore", {"coreset_ratio": 0.2})
    out_a = make_outcome("funad", pixel=False)  # pixel metrics null, oracle set, hp_epochs set
    row_a = build_ok_row(run="r", cell=a, outcome=out_a, started_at=T0, finished_at=T0 + timedelta(seconds=2))
    store.write_cell(row_a, out_a.scores, out_a.history, out_a.map_examples)
    out_b = make_outcome("patchcore")
    row_b = build_ok_row(run="r", cell=b, outcome=out_b, started_at=T0, finished_at=T0 + timedelta(seconds=2))
    store.write_cell(row_b, out_b.scores, out_b.history, out_b.map_examples)

    df = pd.read_parquet(tmp_path / "run" / "results").set_index("cell_id")
    assert set(result_schema(METHODS).names) - {"cell_id"} <= set(df.columns)
    assert pd.isna(df.loc[a.cell_id, "pixel_auroc"]) and df.loc[b.cell_id, "pixel_auroc"] == 0.8
    assert df.loc[a.cell_id, "hp_epochs"] == 2 and pd.isna(df.loc[b.cell_id, "hp_epochs"])
    assert df.loc[b.cell_id, "hp_coreset_ratio"] == 0.2
    assert df.loc[a.cell_id, "oracle_epoch"] == 2 and pd.isna(df.loc[a.cell_id, "oracle_pixel_auroc"])
    assert df.loc[b.cell_id, "diag_bank_size"] == 0.5 and pd.isna(df.loc[b.cell_id, "diag_pl_precision"])
    assert list(df.loc[a.cell_id, "injected_ids"]) == ["brick/test/hole/000.png"]
    assert df.loc[a.cell_id, "status"] == "ok" and df.loc[a.cell_id, "wall_s"] == 2.0
    assert str(df["started_at"].dtype).startswith("datetime64") and "UTC" in str(df["started_at"].dtype)
    assert df.loc[a.cell_id, "device"] == "cpu" and df.loc[a.cell_id, "peak_rss_mb"] > 0

    scores = pd.read_parquet(tmp_path / "run" / "scores")
    assert len(scores) == 4 and set(scores.columns) >= {"cell_id", "image_id", "label", "score"}
    hist = pd.read_parquet(tmp_path / "run" / "history")
    assert len(hist) == 2 and hist["diag_pos_frac"].tolist() == [0.1, 0.1]
    assert '"novel_key":7' in hist["extra"].iloc[0]  # unknown keys are kept, not dropped
    maps = pd.read_parquet(tmp_path / "run" / "maps")
    assert len(maps) == 1 and maps.iloc[0]["pick"] == "best"
    m = np.asarray(Image.open(io.BytesIO(maps.iloc[0]["map_png"])))
    assert m.dtype == np.uint8 and m.shape == (64, 64) and m.min() == 0 and m.max() == 255
    mask = np.asarray(Image.open(io.BytesIO(maps.iloc[0]["mask_png"])))
    assert (mask > 0).sum() == 64
    assert store.ok_cell_ids() == {a.cell_id, b.cell_id}


def test_failed_rows_and_resume_index(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", METHODS)
    c = make_cell("cccc000000000000", "patchcore", {"coreset_ratio": 0.1})
    try:
        raise RuntimeError("boom in fit")
    except RuntimeError as e:
        failed = build_failed_row(run="r", cell=c, error=e, attempt=1, started_at=T0, finished_at=T0)
    assert store.write_failed(failed)
    assert store.ok_cell_ids() == set() and store.status(c.cell_id) == "failed"
    df = pd.read_parquet(tmp_path / "run" / "results")
    assert df.iloc[0]["error"].startswith("RuntimeError: boom in fit") and "Traceback" in df.iloc[0]["error"]
    assert pd.isna(df.iloc[0]["image_auroc"]) and df.iloc[0]["hp_coreset_ratio"] == 0.1
    # a retry that succeeds replaces the failed row; a late failure never replaces ok
    out = make_outcome("patchcore")
    store.write_cell(ok_row(store, c), out.scores, out.history, out.map_examples)
    assert store.ok_cell_ids() == {c.cell_id}
    assert not store.write_failed(dict(failed, attempt=2))
    assert store.status(c.cell_id) == "ok"


def test_temp_and_broken_files_are_ignored(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", METHODS)
    c = make_cell("dddd000000000000", "patchcore", {"coreset_ratio": 0.1})
    out = make_outcome("patchcore")
    store.write_cell(ok_row(store, c), out.scores, out.history, out.map_examples)
    results = tmp_path / "run" / "results"
    # a writer killed mid-write leaves a temp file with a partial body, never a final name
    (results / ".eeee000000000000.parquet.x1y2.tmp").write_bytes(b"PAR1 partial")
    (results / "ffff000000000000.parquet").write_bytes(b"not parquet at all")
    assert store.ok_cell_ids() == {c.cell_id}
    os.remove(results / "ffff000000000000.parquet")
    df = pd.read_parquet(results)  # pyarrow skips dot-files: the temp file is invisible
    assert df["cell_id"].tolist() == [c.cell_id]
    assert [p.name for p in results.iterdir() if not p.name.startswith(".")] == [f"{c.cell_id}.parquet"]


def test_atomic_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "run", METHODS)
    c = make_cell("abab000000000000", "patchcore", {"coreset_ratio": 0.1})
    row = ok_row(store, c)

    def die(*args: object, **kw: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", die)
    out = make_outcome("patchcore")
    with pytest.raises(OSError, match="disk full"):
        store.write_cell(row, out.scores, out.history, out.map_examples)
    monkeypatch.undo()
    leftovers = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert leftovers == [] and store.ok_cell_ids() == set()


def test_unknown_column_is_an_error(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run", METHODS)
    c = make_cell("acac000000000000", "patchcore", {"coreset_ratio": 0.1})
    with pytest.raises(KeyError, match="hp_nope"):
        store.write_failed(
            build_failed_row(run="r", cell=c, error="x", started_at=T0, finished_at=T0) | {"hp_nope": 1}
        )


def test_write_spec_and_schema_from_sweep_yaml(tmp_path: Path) -> None:
    run = tmp_path / "run"
    RunStore(run).write_spec({"name": "r", "methods": METHODS})
    assert (run / "sweep.yaml").is_file() and not [p for p in run.iterdir() if p.name.startswith(".")]
    worker = RunStore(run)  # a worker knows only the directory
    assert worker.result_schema == result_schema(METHODS)
    c = make_cell("adad000000000000", "funad", {"epochs": 3})
    out = make_outcome("funad")
    worker.write_cell(
        build_ok_row(run="r", cell=c, outcome=out, started_at=T0, finished_at=T0),
        out.scores,
        out.history,
        out.map_examples,
    )
    assert worker.read_results()["hp_epochs"].tolist() == [3]


def test_peak_rss_is_per_cell_after_reset() -> None:
    """Reused Tune workers: after reset_peak_rss the peak is that of the new cell, not the process's."""
    import numpy as np

    from harness.versions import peak_rss_mb, reset_peak_rss

    big = np.ones(40_000_000)  # 305 MiB touched
    high = peak_rss_mb()
    del big
    if not reset_peak_rss():
        pytest.skip("this kernel does not allow resetting the peak RSS")
    assert high >= 300
    assert peak_rss_mb() < high - 250


def test_plan_one_row_per_cell_rewritten_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plan.parquet holds every cell of the grid with its defining values; a grown grid replaces it,
    and a failed write leaves the previous plan whole (no temp file behind)."""
    store = RunStore(tmp_path / "run", METHODS)
    cells = [
        make_cell("p1", "funad", {"epochs": 2}),
        make_cell("p2", "funad", {"epochs": 3}),
        make_cell("p3", "patchcore", {"coreset_ratio": 0.2}),
    ]
    path = store.write_plan(cells[:2])
    plan = pq.read_table(path).to_pandas()
    assert plan["cell_id"].tolist() == ["p1", "p2"] and plan["hp_epochs"].tolist() == [2, 3]
    assert pq.read_schema(path).field("hp_epochs").type == pa.int64()
    row = plan.iloc[0]
    assert (row["dataset"], row["category"], row["method"], row["seed"]) == ("synthetic", "brick", "funad", 1)
    assert row["ratio"] == 0.1 and not row["overlap"] and row["shortfall"] == "cap"
    assert pd.isna(row["dataset_root"]) and pd.isna(row["requested_count"])
    assert json.loads(row["params"]) == method_class("funad").Settings(epochs=2).model_dump(mode="json")

    grown = store.write_plan(cells)
    assert pq.read_table(grown).column("cell_id").to_pylist() == ["p1", "p2", "p3"]
    assert pd.isna(pq.read_table(grown).to_pandas().set_index("cell_id").loc["p3", "hp_epochs"])

    def die(*args: object, **kw: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", die)
    with pytest.raises(OSError, match="disk full"):
        store.write_plan(cells[:1])
    monkeypatch.undo()
    assert pq.read_table(path).column("cell_id").to_pylist() == ["p1", "p2", "p3"]
    assert [p.name for p in (tmp_path / "run").iterdir() if p.is_file()] == ["plan.parquet"]


def test_a_newer_version_s_columns_reach_old_files_without_a_spec_change(tmp_path: Path) -> None:
    """A rerun with the same methods after an upgrade that added fixed columns: the old result files
    are rewritten to the current schema, so the run still reads as one table with every column."""
    from harness.migrate import unify_run_schema

    methods = {"patchcore": {"coreset_ratio": [0.1, 0.5]}}
    run = tmp_path / "run"
    unify_run_schema(run, methods)
    store = RunStore(run, methods=methods)
    c = make_cell("c1", "patchcore", {"coreset_ratio": 0.1})
    out = make_outcome("patchcore")
    store.write_cell(ok_row(store, c), out.scores, out.history, out.map_examples)
    path = run / "results" / "c1.parquet"
    old = pq.read_table(path).drop_columns(["metric_notes", "split_source"])  # as an older version wrote it
    pq.write_table(old, path)
    logs: list[str] = []
    unify_run_schema(run, methods, log=logs.append)
    assert pq.read_schema(path).remove_metadata().equals(result_schema(methods))
    assert any("rewrote 1" in line for line in logs)
    assert "split_source" in pd.read_parquet(run / "results").columns
