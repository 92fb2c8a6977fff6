"""The run directory's names and its one write rule (temp file in the same folder, then rename).

Every writer of a run directory (the harness's store, the live status, the report) goes through
`atomic_write`, so a reader never sees a half-written file, and every reader skips what `is_temp`
names: a writer killed mid-write leaves only a temp file, never a final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RESULTS_DIR = "results"
SCORES_DIR = "scores"
HISTORY_DIR = "history"
MAPS_DIR = "maps"
#: one Parquet file per cell in each; results/ is written last (the cell's completion mark)
CELL_DIRS: tuple[str, ...] = (RESULTS_DIR, SCORES_DIR, HISTORY_DIR, MAPS_DIR)
#: one CSV per finished cell: the images it trained and tested on (funad.data.splits' list form)
SPLITS_DIR = "splits"
FEATURES_DIR = "features"
TUNE_DIR = "tune"

#: the resolved sweep spec of the latest invocation
SPEC_FILE = "sweep.yaml"
#: the union of every invocation's `methods`, which fixes the run's hp_*/diag_* columns
SCHEMA_METHODS_FILE = "schema_methods.yaml"
#: one row per cell of the latest invocation's grid (missing = plan minus results)
PLAN_FILE = "plan.parquet"
REPORT_FILE = "report.html"
#: where a running sweep stands (harness.progress)
LIVE_FILE = "live.json"

#: mode of every file written here: readable by the other users of a shared run directory
FILE_MODE = 0o644
TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """Temp files of `name` are `.<name>.<random>.tmp`: hidden (dataset readers skip dot-files) and
    marked ".tmp" (our readers skip those too)."""
    return f".{name}."


def is_temp(path: str | os.PathLike[str]) -> bool:
    """Whether a file is an in-flight (or abandoned) write rather than a finished file."""
    name = Path(path).name
    return name.startswith(".") or TEMP_SUFFIX in name


def finished_files(folder: str | os.PathLike[str]) -> list[Path]:
    """A per-cell folder's whole Parquet files, sorted (temp files of in-flight or killed writes are not
    files of the run); none when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".parquet" and not is_temp(p))


def readable_rows(folder: str | os.PathLike[str], columns: list[str]) -> Iterator[dict[str, Any]]:
    """`columns` of every row of a folder's finished files; a torn or foreign file (unreadable, or
    without those columns) is skipped: for resume and status, its cell has not finished."""
    import pyarrow.parquet as pq

    for path in finished_files(folder):
        try:
            rows = pq.read_table(path, columns=columns).to_pylist()
        except Exception:  # noqa: BLE001 - any damage means "not finished", never a crash
            continue
        yield from rows


def remove_leftover_temps(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files that killed writers left in a run directory's own files (its top level,
    the per-cell folders and splits/; features/ and tune/ have writers of their own).

    Called once when a driver starts: the run's trials belong to its driver and Ray ends them with it,
    so no writer of these files is alive then. A SIGKILLed driver or worker otherwise leaves its
    in-flight temp file behind for good (readers skip it; it only costs disk)."""
    root = Path(run_dir)
    removed: list[Path] = []
    for folder in (root, *(root / d for d in (*CELL_DIRS, SPLITS_DIR))):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_write(path: str | os.PathLike[str], data: str | bytes | Callable[[Path], None]) -> Path:
    """Write `data` (text, bytes, or a function that writes a given temp path) to a temp file next to
    `path`, then rename it onto `path`. On any error the temp file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, FILE_MODE)
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path
