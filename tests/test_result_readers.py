"""A run's ``results/`` is plain Parquet under one schema: pandas, pyarrow, duckdb and polars read the same
rows (and so does the report's loader), so anyone can analyse a run with the tool they like."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from report_fixtures import make_run_dir, result_schema

from reports.load import load_results


def _norm(v: Any) -> Any:
    """One comparable Python value: nulls and NaN as None, timestamps as UTC datetimes, arrays as lists."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "tolist") and not isinstance(v, str | bytes):
        v = v.tolist()
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, pd.Timestamp):
        v = v.to_pydatetime()
    if isinstance(v, datetime):
        return v.astimezone().isoformat() if v.tzinfo else v.isoformat() + "+00:00"
    return v


def _records(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    cols = sorted(df.columns)
    rows = [tuple(_norm(r[c]) for c in cols) for r in df.to_dict("records")]
    return sorted(rows, key=lambda r: r[cols.index("cell_id")])


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("readers")) / "results"


def test_four_readers_agree(results_dir: Path) -> None:
    files = sorted(results_dir.glob("*.parquet"))
    glob = str(results_dir / "*.parquet")
    frames = {
        "pandas": pd.read_parquet(results_dir),
        "pyarrow": ds.dataset(results_dir, format="parquet").to_table().to_pandas(),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df(),
        "polars": pl.read_parquet(glob).to_pandas(),
    }
    names = [f.name for f in result_schema()]
    for name, df in frames.items():
        assert len(df) == len(files), name
        assert sorted(df.columns) == sorted(names), name
    want = _records(frames["pandas"][names])
    for name, df in frames.items():
        assert _records(df[names]) == want, name
    # the types survive every reader: list column, booleans, integer seeds
    rec = frames["duckdb"].sort_values("cell_id").iloc[0]
    assert isinstance(_norm(rec["injected_ids"]), list)
    assert frames["polars"]["seed"].dtype.kind == "i" and frames["polars"]["overlap"].dtype == bool


def test_duckdb_and_polars_aggregate_like_pandas(results_dir: Path) -> None:
    glob = str(results_dir / "*.parquet")
    q = (
        "SELECT method, ratio, avg(image_auroc) AS m, count(*) AS n FROM read_parquet('{g}') "
        "WHERE status = 'ok' GROUP BY method, ratio ORDER BY method, ratio"
    )
    duck = duckdb.sql(q.format(g=glob)).df()
    polars = (
        pl.scan_parquet(glob)
        .filter(pl.col("status") == "ok")
        .group_by(["method", "ratio"])
        .agg(m=pl.col("image_auroc").mean(), n=pl.len())
        .sort(["method", "ratio"])
        .collect()
        .to_pandas()
    )
    ok = pd.read_parquet(results_dir).query("status == 'ok'")
    pand = ok.groupby(["method", "ratio"], as_index=False).agg(
        m=("image_auroc", "mean"), n=("cell_id", "size")
    )
    for other in (duck, polars):
        assert list(other["method"]) == list(pand["method"])
        assert other["m"].to_numpy() == pytest.approx(pand["m"].to_numpy(), abs=1e-12)
        assert list(other["n"]) == list(pand["n"])


def test_report_loader_reads_the_same_rows(results_dir: Path) -> None:
    mine = load_results(results_dir.parent)
    raw = pd.read_parquet(results_dir)
    assert sorted(mine["cell_id"]) == sorted(raw["cell_id"])
    merged = mine.merge(raw, on="cell_id", suffixes=("_r", "_p"))
    for col in ("image_auroc", "pixel_auroc", "ratio", "seed", "status"):
        assert [_norm(v) for v in merged[f"{col}_r"]] == [_norm(v) for v in merged[f"{col}_p"]], col
