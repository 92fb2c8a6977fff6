"""rundir: the temp rule, and the readers of a run directory's Parquet files, on real files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rundir import (
    Skipped,
    UnreadableFile,
    atomic_write,
    finished_files,
    is_hidden,
    is_temp,
    read_file,
    read_folder,
    readable_rows,
    remove_leftover_temps,
    temp_prefix,
)
from rundir.layout import TEMP_SUFFIX


def _temp_of(path: Path) -> Path:
    """The temp file atomic_write makes for `path` (the same mkstemp call), as a kill mid-write leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    os.write(fd, b"half")
    os.close(fd)
    return Path(name)


def _write(path: Path, **columns: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _torn(path: Path, whole: Path) -> Path:
    """`whole` cut short, as a copy interrupted by a full disk leaves it."""
    path.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    return path


# ------------------------------------------------------------------------------------------ the temp rule


def test_the_temp_rule_is_atomic_writes_names_only(tmp_path: Path) -> None:
    temp = _temp_of(tmp_path / "a.parquet")
    assert is_temp(temp) and is_hidden(temp)
    # other writers' dot-files are hidden (readers skip them) but not ours to delete
    for name in (".keep", ".lock.tmp", "._a.parquet", ".a.parquet.swp", ".nfs000000001"):
        assert not is_temp(tmp_path / name) and is_hidden(tmp_path / name), name
    # a visible name is never a temp, whatever it contains
    for name in ("a.tmp.parquet", "a.parquet.tmp", "a.parquet"):
        assert not is_temp(tmp_path / name) and not is_hidden(tmp_path / name), name


def test_leftover_temps_of_killed_writers_are_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    kept = [atomic_write(run / "live.json", "{}"), atomic_write(run / "results" / "a.parquet", b"x")]
    # what a SIGKILL mid-write leaves: the temp name atomic_write uses, in the run's own folders
    left = [_temp_of(run / "live.json"), _temp_of(run / "results" / "a.parquet"),
            _temp_of(run / "scores" / "a.parquet"), _temp_of(run / "splits" / "a.csv")]
    # features/ and tune/ have writers of their own (another run's extraction, Ray Tune), and dot-files
    # that are not atomic_write's belong to someone else: untouched
    foreign = [_temp_of(run / "features" / "pack.npy"), _temp_of(run / "tune" / "state"),
               run / "results" / ".keep", run / "results" / ".lock.tmp", run / ".sweep.yaml.swp"]
    for p in foreign:
        if not p.exists():
            p.write_bytes(b"theirs")
    assert sorted(remove_leftover_temps(run)) == sorted(left)
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept + foreign)
    assert remove_leftover_temps(tmp_path / "no-run") == []


def test_finished_files_skip_dot_files_folders_and_other_suffixes(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    whole = _write(folder / "a.parquet", cell_id=["a"])
    _temp_of(folder / "b.parquet")
    _write(folder / "._c.parquet", cell_id=["c"])  # macOS's resource fork of c.parquet
    (folder / "d.parquet").mkdir()
    (folder / "e.csv").write_text("cell_id\ne\n")
    assert finished_files(folder) == [whole]
    assert finished_files(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------ one file


def test_read_file_reads_a_good_file_and_selects_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "plan.parquet", cell_id=["a", "b"], seed=[0, 1], method=["x", "y"])
    read = read_file(path, strict=True)
    assert read.skipped == [] and read.table.column_names == ["cell_id", "seed", "method"]
    assert read.rows() == [{"cell_id": "a", "seed": 0, "method": "x"},
                           {"cell_id": "b", "seed": 1, "method": "y"}]
    picked = read_file(path, strict=True, columns=["method", "cell_id", "later"])
    # the asked order; a column the file does not have (one added after it was written) is null
    assert picked.rows() == [{"method": "x", "cell_id": "a", "later": None},
                             {"method": "y", "cell_id": "b", "later": None}]


@pytest.mark.parametrize("damage", ["truncated", "not_parquet", "missing", "temp", "foreign"])
def test_read_file_strict_raises_naming_the_file_tolerant_skips(tmp_path: Path, damage: str) -> None:
    whole = _write(tmp_path / "whole.parquet", cell_id=["a"], status=["ok"])
    path = {
        "truncated": lambda: _torn(tmp_path / "c.parquet", whole),
        "not_parquet": lambda: atomic_write(tmp_path / "c.parquet", "cell_id,status\na,ok\n"),
        "missing": lambda: tmp_path / "c.parquet",
        "temp": lambda: _temp_of(tmp_path / "c.parquet"),
        "foreign": lambda: _write(tmp_path / "c.parquet", image=["x.png"], label=[1]),
    }[damage]()
    why = {"truncated": "unreadable", "not_parquet": "unreadable", "missing": "no such file",
           "temp": "temp file", "foreign": "no column cell_id, status"}[damage]
    with pytest.raises(UnreadableFile, match=why) as err:
        read_file(path, strict=True, columns=["cell_id", "status"], require=["cell_id", "status"])
    assert str(path) in str(err.value) and err.value.path == path
    read = read_file(path, strict=False, columns=["cell_id", "status"], require=["cell_id", "status"])
    assert read.table.num_rows == 0 and read.table.column_names == ["cell_id", "status"]
    assert len(read.skipped) == 1 and read.skipped[0].path == path and why in read.skipped[0].reason


def test_a_file_with_none_of_the_asked_columns_is_foreign(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.parquet", other=[1])
    with pytest.raises(UnreadableFile, match="none of the columns cell_id, pick"):
        read_file(path, strict=True, columns=["cell_id", "pick"])


# ------------------------------------------------------------------------------------------ a folder


def _drifted_folder(root: Path) -> Path:
    """Two cells' results: the older file lacks a column added later, and stores an int where the newer
    stores a float; a temp file of a third cell is being written."""
    folder = root / "results"
    _write(folder / "a.parquet", cell_id=["a"], status=["ok"], wall_s=pa.array([3], pa.int64()))
    _write(folder / "b.parquet", cell_id=["b"], status=["failed"], wall_s=[2.5], metric_notes=["no anomaly"])
    _temp_of(folder / "c.parquet")
    return folder


def test_read_folder_concatenates_files_whose_schemas_differ(tmp_path: Path) -> None:
    read = read_folder(_drifted_folder(tmp_path), strict=True)
    assert read.skipped == []  # the temp file is not a file of the run: neither read nor reported
    assert read.table.column_names == ["cell_id", "status", "wall_s", "metric_notes"]
    assert read.table.schema.field("wall_s").type == pa.float64()
    assert read.rows() == [
        {"cell_id": "a", "status": "ok", "wall_s": 3.0, "metric_notes": None},
        {"cell_id": "b", "status": "failed", "wall_s": 2.5, "metric_notes": "no anomaly"},
    ]
    picked = read_folder(tmp_path / "results", strict=True, columns=["metric_notes", "cell_id"])
    assert picked.table.column_names == ["metric_notes", "cell_id"]
    assert picked.table.schema.field("metric_notes").type == pa.string()  # typed by the file that has it
    assert picked.rows() == [{"metric_notes": None, "cell_id": "a"},
                             {"metric_notes": "no anomaly", "cell_id": "b"}]


def test_read_folder_of_nothing(tmp_path: Path) -> None:
    assert read_folder(tmp_path / "missing", strict=True).table.num_columns == 0
    empty = read_folder(tmp_path / "missing", strict=True, columns=["cell_id"])
    assert empty.table.column_names == ["cell_id"] and empty.table.num_rows == 0 and empty.skipped == []


def test_read_folder_strict_stops_at_a_torn_file_tolerant_reports_it(tmp_path: Path) -> None:
    folder = _drifted_folder(tmp_path)
    torn = _torn(folder / "a2.parquet", folder / "a.parquet")
    foreign = _write(folder / "z.parquet", image_id=["x"])
    with pytest.raises(UnreadableFile, match="unreadable") as err:
        read_folder(folder, strict=True)
    assert err.value.path == torn and str(torn) in str(err.value)
    read = read_folder(folder, strict=False, require=["cell_id", "status"])
    assert [r["cell_id"] for r in read.rows()] == ["a", "b"]
    assert [s.path for s in read.skipped] == [torn, foreign]
    assert "unreadable" in read.skipped[0].reason and "no column cell_id, status" in read.skipped[1].reason
    assert isinstance(read.skipped[0], Skipped) and str(read.skipped[0]).startswith(str(torn))


def test_read_folder_a_column_of_another_type_is_a_conflict(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    _write(folder / "a.parquet", cell_id=["a"], seed=[0])
    odd = _write(folder / "b.parquet", cell_id=["b"], seed=["zero"])
    with pytest.raises(UnreadableFile, match="column types differ") as err:
        read_folder(folder, strict=True)
    assert err.value.path == odd
    read = read_folder(folder, strict=False)
    assert read.rows() == [{"cell_id": "a", "seed": 0}] and [s.path for s in read.skipped] == [odd]


def test_readable_rows_skip_torn_and_foreign_files_silently(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    whole = _write(folder / "a.parquet", cell_id=["a"], status=["ok"])
    _torn(folder / "b.parquet", whole)
    _temp_of(folder / "c.parquet")
    (folder / "d.parquet").mkdir()
    _write(folder / "e.parquet", cell_id=["e"])  # foreign: no status column
    assert list(readable_rows(folder, ["cell_id", "status"])) == [{"cell_id": "a", "status": "ok"}]
    assert list(readable_rows(tmp_path / "missing", ["cell_id"])) == []
