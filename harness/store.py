"""The run store: one run directory's Parquet files (one per cell and table), written atomically,
and the resume index read back from them.

Why atomic: a trial may be killed at any moment. Each file is written to a temp file in the same
directory and renamed into place (rundir.atomic_write); results/ is written LAST, so a cell whose
results file exists has its scores, history and maps too. Readers, ok_cell_ids() included, skip
temp files (rundir.is_temp).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from funad.data.contamination import Split
from funad.data.splits import rows_to_csv, split_rows
from harness.cells import Cell
from harness.gallery import map_rows
from harness.rows import finite, history_rows, plan_row
from harness.schema import Methods, history_schema, plan_schema, result_schema
from rundir import (
    CELL_DIRS,
    HISTORY_DIR,
    MAPS_DIR,
    MAPS_SCHEMA,
    PLAN_FILE,
    RESULTS_DIR,
    SCORES_DIR,
    SCORES_SCHEMA,
    SPEC_FILE,
    atomic_write,
    cell_file,
    finished_files,
    read_file,
    read_folder,
    readable_rows,
    split_file,
)


def write_table_atomic(path: Path, rows: list[Mapping[str, Any]], schema: pa.Schema) -> None:
    """Rows -> one Parquet file with exactly `schema`; an unknown key is an error (a schema bug)."""
    names = set(schema.names)
    for r in rows:
        unknown = sorted(set(r) - names)
        if unknown:
            raise KeyError(f"{path.name}: columns not in the run's schema: {', '.join(unknown)}")
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


class RunStore:
    """One run directory: results/, scores/, history/, maps/ (one Parquet file per cell each),
    sweep.yaml and plan.parquet.

    methods: the run's schema methods (see harness.migrate), which fix the schemas; when omitted
    they are read from the run's sweep.yaml (so a worker only needs the directory).
    """

    def __init__(self, run_dir: str | os.PathLike[str], methods: Methods | None = None):
        self.run_dir = Path(run_dir)
        self._methods = methods
        self._schemas: dict[str, pa.Schema] = {}

    # directories -----------------------------------------------------------------------------
    def ensure_dirs(self) -> None:
        for d in CELL_DIRS:
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)

    def path(self, table: str, cell_id: str) -> Path:
        return cell_file(self.run_dir, table, cell_id)

    # schemas ---------------------------------------------------------------------------------
    @property
    def methods(self) -> Methods:
        if self._methods is None:
            spec_file = self.run_dir / SPEC_FILE
            if not spec_file.is_file():
                raise FileNotFoundError(f"{spec_file}: no {SPEC_FILE}; pass methods= to RunStore")
            self._methods = (yaml.safe_load(spec_file.read_text()) or {}).get("methods") or {}
        return self._methods

    def _schema(self, table: str) -> pa.Schema:
        if table not in self._schemas:
            build = {"results": result_schema, "history": history_schema, "plan": plan_schema}[table]
            self._schemas[table] = build(self.methods)
        return self._schemas[table]

    @property
    def result_schema(self) -> pa.Schema:
        return self._schema("results")

    @property
    def history_schema(self) -> pa.Schema:
        return self._schema("history")

    # writes ----------------------------------------------------------------------------------
    def write_spec(self, resolved: Mapping[str, Any]) -> Path:
        """Save the resolved sweep as sweep.yaml and adopt its methods for the schemas."""
        text = yaml.safe_dump(dict(resolved), sort_keys=False, default_flow_style=False)
        path = atomic_write(self.run_dir / SPEC_FILE, text)
        if self._methods is None:
            self._methods = dict(resolved.get("methods") or {})
        return path

    def write_plan(self, cells: Iterable[Cell]) -> Path:
        """Save this invocation's grid as plan.parquet (one row per cell), replacing the last one."""
        path = self.run_dir / PLAN_FILE
        write_table_atomic(path, [plan_row(c) for c in cells], self._schema("plan"))
        return path

    def history_rows(self, cell_id: str, method: str, history: Iterable[Mapping[str, Any]]) -> list[dict]:
        return history_rows(cell_id, method, history, self.history_schema)

    def write_cell(
        self,
        row: Mapping[str, Any],
        scores: Iterable[Mapping[str, Any]],
        history: Iterable[Mapping[str, Any]] = (),
        maps: Iterable[Mapping[str, Any]] = (),
        split: Split | None = None,
    ) -> None:
        """Write one finished cell: scores, history, maps, its split list, then results LAST (the
        completion mark).

        scores: {image_id, label, score[, defect_type]}; history: the method's per-epoch dicts;
        maps: run_cell's map_examples; split: the cell's contamination split (splits/<cell_id>.csv,
        one row per image it used, so others can reuse it without our code).
        """
        cell_id = str(row["cell_id"])
        self.ensure_dirs()
        score_rows = [
            {
                "cell_id": cell_id,
                "image_id": s["image_id"],
                "label": int(s["label"]),
                "score": finite(s["score"]),
                "defect_type": s.get("defect_type"),
            }
            for s in scores
        ]
        write_table_atomic(self.path(SCORES_DIR, cell_id), score_rows, SCORES_SCHEMA)
        hist = self.history_rows(cell_id, str(row["method"]), history)
        write_table_atomic(self.path(HISTORY_DIR, cell_id), hist, self.history_schema)
        write_table_atomic(self.path(MAPS_DIR, cell_id), map_rows(cell_id, maps), MAPS_SCHEMA)
        if split is not None:
            atomic_write(split_file(self.run_dir, cell_id), rows_to_csv(split_rows(split)))
        write_table_atomic(self.path(RESULTS_DIR, cell_id), [row], self.result_schema)

    def write_failed(self, row: Mapping[str, Any]) -> bool:
        """Record a failed attempt; never replaces an `ok` result. Returns whether it wrote."""
        cell_id = str(row["cell_id"])
        if self.status(cell_id) == "ok":
            return False
        self.ensure_dirs()
        write_table_atomic(self.path(RESULTS_DIR, cell_id), [row], self.result_schema)
        return True

    # reads -----------------------------------------------------------------------------------

    def status(self, cell_id: str) -> str | None:
        """`ok`, `failed`, or None when the cell has no readable result."""
        # a missing, foreign or damaged file counts as "not done"
        rows = read_file(self.path(RESULTS_DIR, cell_id), strict=False, columns=["status"],
                         require=["status"]).rows()
        return rows[0]["status"] if rows else None

    def statuses(self) -> dict[str, str]:
        """cell_id -> status over all readable result files (unreadable ones are skipped)."""
        rows = readable_rows(self.run_dir / RESULTS_DIR, ["cell_id", "status"])
        return {r["cell_id"]: r["status"] for r in rows if r["cell_id"] is not None}

    def ok_cell_ids(self) -> set[str]:
        """Ids of cells whose result says ok: the resume index."""
        return {cid for cid, st in self.statuses().items() if st == "ok"}

    def read_results(self) -> Any:
        """All result rows as a pandas DataFrame (empty frame with the schema's columns if none)."""
        import pandas as pd

        if not finished_files(self.run_dir / RESULTS_DIR):
            if self._methods is None and not (self.run_dir / SPEC_FILE).is_file():
                return pd.DataFrame()
            return self.result_schema.empty_table().to_pandas()
        return read_folder(self.run_dir / RESULTS_DIR, strict=True).table.to_pandas()
