"""A grown spec: one schema for the whole run, older files rewritten to it before any trial runs.

A rerun may add a method or a swept setting (new hp_*/diag_* columns) or drop one. The run keeps
the union of every invocation's `methods` in schema_methods.yaml, builds its schemas from that, and
rewrites each results/ or history/ file whose schema differs, so `pandas.read_parquet(run/results)`
keeps reading every column of every file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from harness.cells import is_axis, list_valued_settings
from harness.rows import to_json
from harness.schema import Methods, history_schema, result_schema
from rundir import (
    HISTORY_DIR,
    RESULTS_DIR,
    SCHEMA_METHODS_FILE,
    SPEC_FILE,
    atomic_write,
    finished_files,
    read_file,
    read_schema,
)


def merge_methods(*mappings: Methods | None) -> dict[str, dict[str, Any]]:
    """Union of methods mappings: a setting given different values (or swept in any) becomes an axis
    of all its values, so its hp_* column and type cover every file of the run."""
    values: dict[str, dict[str, list[Any]]] = {}
    axis: dict[tuple[str, str], bool] = {}
    for mapping in mappings:
        for name, settings in (mapping or {}).items():
            lv = list_valued_settings(name)
            cur = values.setdefault(name, {})
            for key, value in (settings or {}).items():
                swept = is_axis(name, key, value, lv)
                vals = list(value) if swept else [value]
                seen = {to_json(v) for v in cur.get(key, [])}
                cur.setdefault(key, []).extend(v for v in vals if to_json(v) not in seen)
                axis[(name, key)] = axis.get((name, key), False) or swept
    # sorted by method and setting, as schema_methods.yaml stores them: the column order of every file
    # (hp_*, diag_*) must not depend on the order a spec happened to list its methods in
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(values):
        settings = values[name]
        out[name] = {
            k: (list(settings[k]) if axis[(name, k)] or len(settings[k]) > 1 else settings[k][0])
            for k in sorted(settings)
        }
    return out


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns: missing ones null, present ones cast."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _rewrite(run_dir: Path, merged: Methods, log: Callable[[str], None] | None) -> None:
    """Rewrite every results/history file whose schema is not the merged one (each atomically)."""
    targets = {RESULTS_DIR: result_schema(merged), HISTORY_DIR: history_schema(merged)}
    rewritten, dropped = 0, set()
    for folder_name, schema in targets.items():
        folder = run_dir / folder_name
        if not folder.is_dir():
            continue
        for p in finished_files(folder):
            have = read_schema(p)
            if have is None or have.equals(schema):  # unreadable: the resume logic treats it as missing
                continue
            read = read_file(p, strict=False)
            if read.skipped:
                continue
            table = read.table
            dropped |= set(table.column_names) - set(schema.names)
            new = _conform(table, schema)
            atomic_write(p, lambda tmp, new=new: pq.write_table(new, tmp))
            rewritten += 1
    if log and rewritten:
        log(f"schema: the run's columns changed; rewrote {rewritten} results/history file(s) "
            "to one schema")
    if log and dropped:
        log("warning: schema: columns no method of this run declares were dropped: "
            + ", ".join(sorted(dropped)))


def unify_run_schema(
    run_dir: str | os.PathLike[str], methods: Mapping[str, Any], log: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Before a (re)run: merge this invocation's methods into the run's schema methods and rewrite
    every results/ and history/ file whose schema differs.

    Returns the merged methods, which every writer of this invocation must use. Safe to interrupt:
    the schema file is updated last, so a killed migration is simply redone on the next start.
    """
    run_dir = Path(run_dir)
    schema_file = run_dir / SCHEMA_METHODS_FILE
    previous: Mapping[str, Any] | None = None
    if schema_file.is_file():
        previous = yaml.safe_load(schema_file.read_text()) or {}
    elif (run_dir / SPEC_FILE).is_file():  # a run from before the schema file existed
        previous = (yaml.safe_load((run_dir / SPEC_FILE).read_text()) or {}).get("methods") or {}
    merged = merge_methods(previous, methods)
    # every file is compared with the schema even when the methods did not change: a newer version of
    # the project may have added fixed columns (rows of both versions must still read as one table)
    tables = (run_dir / RESULTS_DIR, run_dir / HISTORY_DIR)
    if any(finished_files(t) for t in tables):
        _rewrite(run_dir, merged, log)
    if not (schema_file.is_file() and previous == merged):
        atomic_write(schema_file, yaml.safe_dump(merged, sort_keys=True, default_flow_style=False))
    return merged
