"""The one way to read a run directory's Parquet files: a file (`read_file`) or a per-cell folder
(`read_folder`), each strict or tolerant.

A run is read while it is written and after writers were killed, and old runs are read by new code, so
every reader meets three things: temp files of in-flight writes (never files of the run: a folder read
does not list them, see `rundir.layout.finished_files`), torn or foreign files (a file cut short, a file
that is not Parquet, or one without the columns a file of that folder has), and schema drift (files
written before a column existed lack it). The caller says which of the second it can live with:

* strict (``strict=True``): the first bad file raises `UnreadableFile`, whose message names the file
  and the problem (an export that must not silently leave a cell out);
* tolerant (``strict=False``): bad files are left out and returned as `Skipped` (path and reason), so
  the caller can warn (the report) or take "unreadable" to mean "not finished" (resume, status).

Drift is never an error: a folder read concatenates files whose columns differ, a column a file lacks
being null in its rows (typed like the files that have it; integer and float columns widen as pyarrow's
"permissive" promotion does). Two files whose column types cannot be unified are the one conflict: the
later file (in name order) is the bad one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rundir.layout import finished_files, is_hidden, is_temp, split_file

#: what pyarrow raises for a file that is not (whole) Parquet; OSError covers a vanished file
_READ_ERRORS = (OSError, pa.ArrowException, ValueError)


class UnreadableFile(ValueError):
    """A file of a run directory that a strict read cannot use; the message names the file and why."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Skipped:
    """A file a tolerant read left out, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Read:
    """What a read returned: one table of the rows it could read, and the files a tolerant read left
    out (always empty for a strict read, which raises instead)."""

    table: pa.Table
    skipped: list[Skipped] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """The table as one dict per row."""
        return self.table.to_pylist()


def _empty(columns: Sequence[str] | None) -> pa.Table:
    """No rows: the asked columns (null-typed), or no columns when none were asked."""
    return pa.table({c: pa.nulls(0) for c in columns or ()})


def _load(path: Path, columns: Sequence[str] | None, require: Sequence[str]) -> pa.Table:
    """One file's table with `columns` (missing ones null), or UnreadableFile."""
    if is_temp(path):
        raise UnreadableFile(path, "a temp file of an unfinished write, not a finished file")
    if is_hidden(path):
        raise UnreadableFile(path, "a hidden file, not a file of the run")
    if not path.is_file():
        raise UnreadableFile(path, "not a file" if path.exists() else "no such file")
    try:
        have = pq.read_schema(path).names
    except _READ_ERRORS as exc:
        raise UnreadableFile(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if lacking := [c for c in require if c not in have]:
        raise UnreadableFile(path, f"not a file of this kind: no column {', '.join(lacking)}")
    wanted = have if columns is None else [c for c in columns if c in have]
    if not wanted:
        asked = f"none of the columns {', '.join(columns)}" if columns else "no columns"
        raise UnreadableFile(path, f"not a file of this kind: {asked}")
    try:
        table = pq.read_table(path, columns=list(wanted))
    except _READ_ERRORS as exc:
        raise UnreadableFile(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if columns is None:
        return table
    return pa.table({c: table.column(c) if c in have else pa.nulls(table.num_rows) for c in columns})


def _unify(schema: pa.Schema | None, other: pa.Schema, path: Path) -> pa.Schema:
    """The folder's schema so far with one more file's (`path`): columns added, types widened."""
    if schema is None:
        return other
    try:
        return pa.unify_schemas([schema, other], promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise UnreadableFile(path, f"column types differ from the folder's earlier files ({exc})") from None


def read_file(
    path: str | os.PathLike[str],
    *,
    strict: bool,
    columns: Sequence[str] | None = None,
    require: Sequence[str] = (),
) -> Read:
    """One Parquet file of a run directory (plan.parquet, or one cell's file).

    columns: the columns to return, in this order (default: all the file has); one the file lacks is
    null. require: columns without which the file is not a file of its kind (foreign). A missing,
    torn, foreign or temp file raises UnreadableFile when strict; tolerant, it gives no rows and one
    Skipped."""
    path = Path(path)
    try:
        return Read(_load(path, columns, require))
    except UnreadableFile as exc:
        if strict:
            raise
        return Read(_empty(columns), [Skipped(path, exc.problem)])


def read_schema(path: str | os.PathLike[str]) -> pa.Schema | None:
    """A finished file's schema without reading its rows (the migration compares it with the run's), or
    None for a missing, torn, temp or hidden file (tolerant: such a file counts as not finished)."""
    path = Path(path)
    if is_temp(path) or is_hidden(path) or not path.is_file():
        return None
    try:
        return pq.read_schema(path).remove_metadata()
    except _READ_ERRORS:
        return None


def split_digest(run_dir: str | os.PathLike[str], cell_id: str) -> str | None:
    """sha256 of a finished cell's split list (splits/<cell_id>.csv), or None when it has none: two cells
    with the same digest trained and tested on the same images."""
    import hashlib

    try:
        return hashlib.sha256(split_file(run_dir, cell_id).read_bytes()).hexdigest()
    except OSError:
        return None


def read_folder(
    folder: str | os.PathLike[str],
    *,
    strict: bool,
    columns: Sequence[str] | None = None,
    require: Sequence[str] = (),
) -> Read:
    """Every finished file of a per-cell folder as one table, in file-name order (none when the folder
    does not exist; temp and other dot-files are not files of the folder and are never reported).

    columns/require: as for read_file; with no `columns`, the union of every file's columns in the
    order first seen. A torn, foreign or type-conflicting file raises UnreadableFile when strict;
    tolerant, it is left out and returned as Skipped."""
    tables: list[pa.Table] = []
    skipped: list[Skipped] = []
    schema: pa.Schema | None = None
    for path in finished_files(folder):
        try:
            table = _load(path, columns, require)
            schema = _unify(schema, table.schema, path)
        except UnreadableFile as exc:
            if strict:
                raise
            skipped.append(Skipped(path, exc.problem))
            continue
        tables.append(table)
    if not tables:
        return Read(_empty(columns), skipped)
    return Read(pa.concat_tables(tables, promote_options="permissive"), skipped)


def readable_rows(folder: str | os.PathLike[str], columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """`columns` of every row of a folder's readable files, a file without them skipped silently: for
    the resume index and status, a cell whose file is torn has not finished."""
    yield from read_folder(folder, strict=False, columns=columns, require=columns).rows()
