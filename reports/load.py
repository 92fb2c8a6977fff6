"""Read a run directory (Parquet + sweep.yaml + plan.parquet) without importing funad or harness.

The report must rebuild old runs with the methods uninstalled, and must survive a run that is still being
written or that crashed: every Parquet file is read through rundir's tolerant readers, so temp files are
never read and a torn or foreign file is skipped with a warning (kept in ``RunData.problems``, which the
report shows) rather than failing the whole report. Column and file names come from ``rundir``, the run
directory's contract.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from rundir import (
    HISTORY_DIR,
    HP_PREFIX,
    MAPS_DIR,
    MAPS_SCHEMA,
    METRIC_KEYS,
    ORACLE_KEYS,
    PLAN_FILE,
    RESULT_FIELDS,
    RESULTS_DIR,
    SCORES_DIR,
    SPEC_FILE,
    Read,
    cell_file,
    read_file,
    read_folder,
)

METRICS: tuple[str, ...] = METRIC_KEYS
ORACLE: tuple[str, ...] = ORACLE_KEYS


def _pandas_dtype(f: pa.Field) -> str | None:
    """The dtype the report reads a contract column as; None for lists and timestamps (kept as read).
    Metrics and oracle values are averaged, so they are floats (oracle_epoch included)."""
    if f.name in METRICS or f.name in ORACLE or pa.types.is_floating(f.type):
        return "float64"
    if pa.types.is_integer(f.type):
        return "Int64"
    if pa.types.is_boolean(f.type):
        return "boolean"
    if pa.types.is_string(f.type):
        return "string"
    return None


# Columns the report relies on; any that a run lacks are added as nulls so old/partial runs still render.
RESULT_COLUMNS: dict[str, str] = {
    f.name: dtype for f in RESULT_FIELDS if (dtype := _pandas_dtype(f)) is not None
}
HISTORY_COLUMNS: dict[str, str] = {
    "cell_id": "string",
    "method": "string",
    "epoch": "float64",
    "iteration": "float64",
}
MAP_COLUMNS: tuple[str, ...] = tuple(MAPS_SCHEMA.names)


@dataclass
class RunData:
    """Everything the report needs from one run directory."""

    run_dir: Path
    results: pd.DataFrame
    history: pd.DataFrame
    maps: pd.DataFrame
    spec: dict[str, Any]
    spec_text: str
    #: plan.parquet: the cells of the latest invocation's grid; None for runs made before it existed
    plan: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)
    #: several runs joined into one report (reports.join): their folders, each cell's folder, the join
    #: table; one run: empty, empty, None
    runs: list[Path] = field(default_factory=list)
    cell_runs: dict[str, Path] = field(default_factory=dict)
    join: pd.DataFrame | None = None

    @property
    def run_dirs(self) -> list[Path]:
        """The run directories this report reads."""
        return self.runs or [self.run_dir]

    def scores(self, cell_ids: list[str]) -> pd.DataFrame:
        """The per-image scores of some cells, each read from its own run directory."""
        by_run: dict[Path, list[str]] = {}
        for cid in cell_ids:
            by_run.setdefault(self.cell_runs.get(cid, self.run_dir), []).append(cid)
        frames = [load_scores(run, ids, self.problems) for run, ids in by_run.items()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def name(self) -> str:
        """Run name: the spec's ``name``, else the ``run`` column, else the directory name."""
        if isinstance(self.spec.get("name"), str):
            return self.spec["name"]
        runs = self.results["run"].dropna().unique() if len(self.results) else []
        return str(runs[0]) if len(runs) else self.run_dir.name


def _warn(read: Read, problems: list[str]) -> pd.DataFrame:
    """A tolerant read's rows as a frame; each file it skipped becomes a warning and a problem."""
    for skipped in read.skipped:
        msg = f"skipped {skipped.path}: {skipped.reason}"
        warnings.warn(msg, stacklevel=3)
        problems.append(msg)
    return read.table.to_pandas()


def _read_folder(folder: Path, problems: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Every readable file of a folder (a bad file or schema drift cannot sink the rest)."""
    return _warn(read_folder(folder, strict=False, columns=columns), problems)


def _ensure_columns(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Add missing optional columns as nulls and coerce dtypes, so later code needs no existence checks."""
    df = df.copy()
    for col, dtype in columns.items():
        if col not in df.columns:
            df[col] = pd.Series(pd.NA, index=df.index, dtype="object")
        try:
            if dtype == "float64":
                df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
            elif dtype == "Int64":
                df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
            elif dtype == "boolean":
                df[col] = df[col].astype("boolean")
            else:
                df[col] = df[col].astype("object").where(df[col].notna(), None)
        except (TypeError, ValueError):
            pass
    return df


def _dedupe_results(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: an ok row wins over failed attempts, then the latest attempt/finish time."""
    if df.empty or df["cell_id"].isna().all():
        return df
    order = df.assign(_ok=(df["status"] == "ok").astype(int), _att=df["attempt"].fillna(-1).astype("int64"))
    sort_cols = ["_ok", "_att"] + (["finished_at"] if "finished_at" in df.columns else [])
    order = order.sort_values(sort_cols, kind="stable", na_position="first")
    order = order.drop_duplicates("cell_id", keep="last").drop(columns=["_ok", "_att"])
    return order.sort_index().reset_index(drop=True)


def load_results(run_dir: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """All result rows of a run, with every expected column present (nulls where absent)."""
    problems = [] if problems is None else problems
    df = _read_folder(Path(run_dir) / RESULTS_DIR, problems)
    df = _ensure_columns(df, RESULT_COLUMNS)
    df["status"] = df["status"].fillna("failed")
    return _dedupe_results(df)


def load_history(run_dir: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """Per-step training history of all cells (empty frame with key columns when there is none)."""
    problems = [] if problems is None else problems
    df = _read_folder(Path(run_dir) / HISTORY_DIR, problems)
    return _ensure_columns(df, HISTORY_COLUMNS)


def load_maps(run_dir: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """Gallery examples (PNG bytes) of all cells."""
    problems = [] if problems is None else problems
    df = _read_folder(Path(run_dir) / MAPS_DIR, problems, columns=list(MAP_COLUMNS))
    for col in MAP_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype="object")
    return df


def load_scores(
    run_dir: Path, cell_ids: list[str] | None = None, problems: list[str] | None = None
) -> pd.DataFrame:
    """Per-image scores (optionally only some cells); large, so the report reads them only on demand."""
    problems = [] if problems is None else problems
    if cell_ids is None:
        return _read_folder(Path(run_dir) / SCORES_DIR, problems)
    frames = []
    for path in (cell_file(run_dir, SCORES_DIR, cid) for cid in cell_ids):
        if path.is_file():
            read = read_file(path, strict=False)
            scores = _warn(read, problems)
            if not read.skipped:
                frames.append(scores)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_spec(run_dir: Path, problems: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """The sweep spec as run: parsed dict (empty if missing/invalid) and its raw text for the appendix."""
    problems = [] if problems is None else problems
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        return {}, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{SPEC_FILE} is not valid YAML: {exc}"
        warnings.warn(msg, stacklevel=2)
        problems.append(msg)
        spec = {}
    return (spec if isinstance(spec, dict) else {}), text


def load_plan(run_dir: Path, problems: list[str] | None = None) -> pd.DataFrame | None:
    """The run's planned grid (one row per cell), or None when the run has no readable plan.parquet."""
    problems = [] if problems is None else problems
    path = Path(run_dir) / PLAN_FILE
    if not path.is_file():
        return None
    read = read_file(path, strict=False)
    plan = _warn(read, problems)
    return None if read.skipped else plan


def load_run(run_dir: str | Path) -> RunData:
    """Read everything a report needs; never raises for missing folders or unreadable files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    problems: list[str] = []
    spec, spec_text = load_spec(run_dir, problems)
    return RunData(
        run_dir=run_dir,
        results=load_results(run_dir, problems),
        history=load_history(run_dir, problems),
        maps=load_maps(run_dir, problems),
        spec=spec,
        spec_text=spec_text,
        plan=load_plan(run_dir, problems),
        problems=problems,
    )


def hp_columns(df: pd.DataFrame) -> list[str]:
    """The ``hp_*`` columns present in a frame, in order."""
    return [c for c in df.columns if c.startswith(HP_PREFIX)]


def parse_versions(value: Any) -> dict[str, Any]:
    """The ``versions`` JSON of a row as a dict ({} when absent or malformed)."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return {"raw": value}
    return parsed if isinstance(parsed, dict) else {"raw": value}
