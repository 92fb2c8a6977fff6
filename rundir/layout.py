"""The run directory's names and its one write rule (temp file in the same folder, then rename).

Every writer of a run directory (the harness's store, the live status, the report) goes through
`atomic_write`, so a reader never sees a half-written file: a writer killed mid-write leaves only a
temp file (`is_temp`), never a final name. Readers skip every dot-file (`is_hidden`), temp files among
them; a starting driver deletes only temp files (`remove_leftover_temps`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

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
#: every per-cell file is `<cell_id>.parquet`; a folder's files of any other suffix are not the run's
PARQUET_SUFFIX = ".parquet"
#: a cell's split list in splits/
SPLIT_SUFFIX = ".csv"
#: the report's tables sit next to its HTML: report.html -> report_tables/
TABLES_SUFFIX = "_tables"


def temp_prefix(name: str) -> str:
    """Temp files of `name` are `.<name>.<random>.tmp`: hidden (dataset readers skip dot-files) and
    marked ".tmp"."""
    return f".{name}."


# `.<name>.<random>.tmp`, `<random>` being tempfile.mkstemp's 8 characters of a-z, 0-9 and "_": only
# atomic_write makes such names, so no dot-file of another writer is taken for one of ours
_TEMP_NAME = re.compile(rf"^\..+\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}$")


def is_temp(path: str | os.PathLike[str]) -> bool:
    """Whether a file is atomic_write's temp file (`.<name>.<random>.tmp`): an in-flight write, or one
    a killed writer abandoned. The one temp rule: readers never read these, and remove_leftover_temps
    deletes exactly these."""
    return bool(_TEMP_NAME.match(Path(path).name))


def is_hidden(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a dot-file. No finished file of a run starts with "." (cell ids and the fixed
    names never do), so readers skip every dot-file: our temp files, and other tools' (macOS's `._x`,
    NFS's `.nfs*`, an editor's swap file), which are never read and never deleted."""
    return Path(path).name.startswith(".")


def cell_file(run_dir: str | os.PathLike[str], folder: str, cell_id: str) -> Path:
    """The file of one cell in one of the per-cell folders (CELL_DIRS)."""
    return Path(run_dir) / folder / f"{cell_id}{PARQUET_SUFFIX}"


def split_file(run_dir: str | os.PathLike[str], cell_id: str) -> Path:
    """A finished cell's split list (funad.data.splits' form: the images it trained and tested on)."""
    return Path(run_dir) / SPLITS_DIR / f"{cell_id}{SPLIT_SUFFIX}"


def report_tables_dir(report: str | os.PathLike[str]) -> Path:
    """The folder of a report's table files: `<report stem>_tables/` next to the HTML."""
    report = Path(report)
    return report.parent / f"{report.stem}{TABLES_SUFFIX}"


def finished_files(folder: str | os.PathLike[str]) -> list[Path]:
    """A per-cell folder's whole Parquet files, sorted (temp files of in-flight or killed writes, and
    any other dot-file, are not files of the run); none when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix == PARQUET_SUFFIX and not is_hidden(p))


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
            if p.is_file() and is_temp(p):
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
