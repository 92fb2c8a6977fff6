"""`python -m harness.splits export RUN_DIR OUT_DIR`: a run's training splits as published-style lists.

Every finished cell wrote `<run>/splits/<cell_id>.csv` (our form: path, category, role, label, injected).
`export` writes one training list per dataset, ratio (or count) and seed in the MeDS form
(`filename,clsname`, one row per training image, every category of the dataset in one file), named
`train_<dataset>_nr<ratio in %>_seed_<seed>.csv` (or `_n<count>_`), with the protocol appended where it is
not the default (`_all_test`, `_of_train`, `_appended`). A sweep reads them back with
`contamination: {lists: OUT_DIR/train_<dataset>_nr{ratio_pct}_seed_{seed}.csv}` and trains on exactly the
same images. Cells of different methods share a split; if two cells that should share one disagree,
that is an error (it would mean the split rule is not what the row says).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from funad.data.splits import MEDS_COLUMNS, rows_to_csv
from rundir import EXIT_OK, EXIT_USAGE, PROTOCOL_DEFAULTS, RESULTS_DIR, atomic_write, read_folder, split_file

_KEY_COLUMNS = ["cell_id", "status", "dataset", "category", "ratio", "requested_count", "seed",
                "contamination_source", "ratio_of", "pool_order"]


def list_name(row: dict[str, Any]) -> str:
    """The exported file name of a cell's (dataset, amount, seed, protocol)."""
    amount = (f"n{int(row['requested_count'])}" if row.get("ratio") is None
              else f"nr{int(round(float(row['ratio']) * 100))}")
    name = f"train_{row['dataset']}_{amount}_seed_{int(row['seed'])}"
    for key, prefix in (("contamination_source", ""), ("ratio_of", "of_"), ("pool_order", "")):
        value = row.get(key) or PROTOCOL_DEFAULTS[key]
        if value != PROTOCOL_DEFAULTS[key]:
            name += f"_{prefix}{value}"
    return f"{name}.csv"


def _ok_rows(run: Path) -> list[dict[str, Any]]:
    """The ok rows of a run's results; a torn or foreign result file fails the export (it names it)."""
    rows = read_folder(run / RESULTS_DIR, strict=True, columns=list(_KEY_COLUMNS)).rows()
    return [r for r in rows if r.get("status") == "ok"]


def export(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the MeDS-form lists of a run; returns the files written."""
    run, out = Path(run_dir), Path(out_dir)
    if not (run / RESULTS_DIR).is_dir():
        raise ValueError(f"{run}: not a run directory (no {RESULTS_DIR}/)")
    lists: dict[str, dict[str, list[str]]] = {}  # file -> category -> training image ids
    owner: dict[tuple[str, str], str] = {}
    for row in _ok_rows(run):
        if row.get("contamination_source") in ("list", "dataset"):
            continue  # not a split of ours: the list (or the dataset's JSON) is the original
        path = split_file(run, row["cell_id"])
        if not path.is_file():
            raise ValueError(f"{path}: missing (the cell finished before splits were written: rerun it)")
        with path.open(newline="") as fh:
            train = [r["path"] for r in csv.DictReader(fh) if r["role"] == "train"]
        name, cat = list_name(row), row["category"]
        have = lists.setdefault(name, {}).get(cat)
        if have is not None and sorted(have) != sorted(train):
            raise ValueError(f"{path}: cell {row['cell_id']} trained on other images than cell "
                             f"{owner[(name, cat)]} of the same dataset, {cat!r}, ratio and seed")
        lists[name][cat] = train
        owner.setdefault((name, cat), row["cell_id"])
    written = []
    for name, by_cat in sorted(lists.items()):
        rows = [{"filename": image, "clsname": cat} for cat in sorted(by_cat) for image in by_cat[cat]]
        written.append(atomic_write(out / name, rows_to_csv(rows, MEDS_COLUMNS)))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.splits", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write MeDS-style training lists of a run")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    args = p.parse_args(argv)
    try:
        files = export(args.run_dir, args.out_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for f in files:
        print(f)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
