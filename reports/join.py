"""One report over several runs: `python -m reports.build RUN_A RUN_B ... --out DIR`.

Users add methods in a second run (other resources, another day) and want them side by side with the
first. The runs' cells are joined into one RunData: every result row keeps the run it came from
(`run_dir`) and gets its `split_id`, the sha256 of the cell's split list (`splits/<cell_id>.csv`: every
image it trained and tested on). The report's cell key then includes `split_id`, so two cells are paired
(the statistics' differences) or averaged as one cell only when they trained and tested on the same images:
cells of the same dataset, category, protocol, ratio and seed whose splits differ (another dataset
version, a changed training list) are never paired. The join table says, per such group, which runs
joined and which did not.

A cell with no split list (a failed row, a run from before split lists were written) gets an id from its
row instead: dataset, category, seed, the split rule's columns and the injected image ids, which define the
split as far as the row knows it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from reports.load import RunData, load_run
from reports.tables import with_protocol
from rundir import split_digest

#: the columns that say which split a cell asked for (its group in the join table)
SPLIT_GROUP: list[str] = ["dataset", "category", "contamination_source", "ratio_of", "ratio",
                          "requested_count", "overlap", "seed"]
#: what a row's fallback split id hashes when its split list is missing
_ROW_SPLIT: list[str] = [*SPLIT_GROUP, "shortfall", "pool_order", "n_train_normal", "n_test_normal",
                         "n_test_anomalous"]
JOIN_COLUMNS: list[str] = [*SPLIT_GROUP, "runs", "splits", "paired", "note"]


def _row_split_id(row: pd.Series) -> str:
    values: dict[str, object] = {c: (None if pd.isna(row.get(c)) else str(row.get(c))) for c in _ROW_SPLIT}
    injected = row.get("injected_ids")
    values["injected_ids"] = None if injected is None or isinstance(injected, float) else sorted(
        map(str, list(injected)))
    text = json.dumps(values, sort_keys=True, default=str)
    return "row:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_ids(run_dir: Path, results: pd.DataFrame) -> pd.Series:
    """Each row's split id: its split list's digest, else the row's own account of its split."""
    ids = []
    for _, row in results.iterrows():
        digest = split_digest(run_dir, str(row["cell_id"])) if pd.notna(row.get("cell_id")) else None
        ids.append(digest if digest is not None else _row_split_id(row))
    return pd.Series(ids, index=results.index, dtype="object")


def _label(run_dir: Path, names: list[str]) -> str:
    """A run's label in the join table: its folder's name, with its path when two runs share a name."""
    name = run_dir.name
    return f"{name} ({run_dir})" if names.count(name) > 1 else name


def join_runs(runs: list[RunData]) -> RunData:
    """The runs as one RunData (see the module docstring); `join` holds the join table."""
    names = [r.run_dir.name for r in runs]
    frames, histories, maps, plans, problems = [], [], [], [], []
    for i, run in enumerate(runs):
        res = run.results.copy()
        label = _label(run.run_dir, names)
        res["run_dir"] = label
        res["split_id"] = split_ids(run.run_dir, res) if len(res) else pd.Series(dtype="object")
        res["_run"] = i
        frames.append(res)
        histories.append(run.history)
        maps.append(run.maps)
        if run.plan is not None:
            plans.append(run.plan)
        problems += [f"{label}: {p}" for p in run.problems]
    results = pd.concat(frames, ignore_index=True, sort=False)
    # the same cell (same id: same definition) in two runs is one cell: an ok row wins, then the latest
    results = results.assign(_ok=(results["status"] == "ok").astype(int))
    results = results.sort_values(["_ok", "finished_at"], kind="stable", na_position="first")
    results = results.drop_duplicates("cell_id", keep="last").drop(columns="_ok")
    results = results.sort_index().reset_index(drop=True)
    cell_runs = {str(c): runs[int(i)].run_dir
                 for c, i in zip(results["cell_id"], results["_run"], strict=True)}
    results = results.drop(columns="_run")
    spec_text = "\n".join(f"# ---- {_label(r.run_dir, names)}: {r.run_dir}\n{r.spec_text}" for r in runs)
    joined = RunData(
        run_dir=runs[0].run_dir,
        results=results,
        history=pd.concat(histories, ignore_index=True, sort=False) if histories else pd.DataFrame(),
        maps=pd.concat(maps, ignore_index=True, sort=False) if maps else pd.DataFrame(),
        spec=dict(runs[0].spec, name=" + ".join(r.name for r in runs)),
        spec_text=spec_text,
        plan=pd.concat(plans, ignore_index=True, sort=False).drop_duplicates("cell_id") if plans else None,
        problems=problems,
        runs=[r.run_dir for r in runs],
        cell_runs=cell_runs,
    )
    joined.join = join_table(results[results["status"] == "ok"] if len(results) else results)
    return joined


def join_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Per group of cells that asked for the same split (dataset, category, protocol, ratio, seed) held by
    more than one run: how many distinct splits the runs drew, and whether their cells are paired."""
    if ok.empty:
        return pd.DataFrame(columns=JOIN_COLUMNS)
    ok = with_protocol(ok)  # rows from before the protocol columns meant the default protocol
    for col in SPLIT_GROUP:
        if col not in ok.columns:
            ok[col] = None
    rows = []
    for key, g in ok.groupby(SPLIT_GROUP, dropna=False, sort=True):
        runs = sorted(g["run_dir"].astype(str).unique())
        if len(runs) < 2:
            continue
        splits = g["split_id"].nunique()
        by_split = g.groupby("split_id")["run_dir"].agg(lambda s: ", ".join(sorted(set(map(str, s)))))
        paired = splits == 1
        note = "" if paired else "splits differ: " + " | ".join(by_split.tolist()) + " (never paired)"
        rows.append({**dict(zip(SPLIT_GROUP, key, strict=True)), "runs": ", ".join(runs), "splits": splits,
                     "paired": paired, "note": note})
    return pd.DataFrame(rows, columns=JOIN_COLUMNS)


def load_runs(run_dirs: list[str | Path]) -> RunData:
    """One run as load_run reads it; several runs joined (see the module docstring)."""
    runs = [load_run(d) for d in run_dirs]
    return runs[0] if len(runs) == 1 else join_runs(runs)
