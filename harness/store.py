"""The run directory on disk: one explicit Arrow schema per table, atomic writes, the resume index.

Why one explicit schema: pyarrow infers a dataset's schema from its first file, so a column that is
null there fails to cast later and a column missing there is silently dropped. Every file of a run
is therefore written with the same schema, built from the sweep's methods (their swept settings
become hp_* columns, their diagnostic names diag_* columns).

Why atomic: a trial may be killed at any moment. Each file is written to a hidden temp file in the
same directory and moved into place with os.replace; results/ is written LAST, so a cell whose
results file exists has its scores, history and maps too. Temp names start with "." and contain
".tmp", so pandas/pyarrow dataset readers skip them, and so does ok_cell_ids().
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from harness import versions

# ---------------------------------------------------------------------------------------------
# schemas

#: the contract's result columns, in order (hp_* and diag_* are inserted per run)
RESULT_FIELDS: list[pa.Field] = [
    pa.field("run", pa.string()),
    pa.field("cell_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("category", pa.string()),
    pa.field("method", pa.string()),
    pa.field("backbone", pa.string()),
    pa.field("ratio", pa.float64()),
    pa.field("achieved_ratio", pa.float64()),
    pa.field("overlap", pa.bool_()),
    pa.field("seed", pa.int64()),
    pa.field("params", pa.string()),
    pa.field("n_train_normal", pa.int64()),
    pa.field("n_injected", pa.int64()),
    pa.field("n_test_normal", pa.int64()),
    pa.field("n_test_anomalous", pa.int64()),
    pa.field("injected_ids", pa.list_(pa.string())),
    pa.field("image_auroc", pa.float64()),
    pa.field("pixel_auroc", pa.float64()),
    pa.field("aupro", pa.float64()),
    pa.field("image_ap", pa.float64()),
    pa.field("pixel_ap", pa.float64()),
    pa.field("image_f1max", pa.float64()),
    pa.field("oracle_image_auroc", pa.float64()),
    pa.field("oracle_pixel_auroc", pa.float64()),
    pa.field("oracle_epoch", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("attempt", pa.int64()),
    pa.field("feature_s", pa.float64()),
    pa.field("fit_s", pa.float64()),
    pa.field("eval_s", pa.float64()),
    pa.field("wall_s", pa.float64()),
    pa.field("peak_rss_mb", pa.float64()),
    pa.field("peak_gpu_mb", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("node", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("versions", pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
]

#: beyond the contract: facts the report and debugging want, always present (nullable)
EXTRA_RESULT_FIELDS: list[pa.Field] = [
    pa.field("dataset_root", pa.string()),
    pa.field("dataset_options", pa.string()),  # JSON of the loader options besides kind/root
    pa.field("backbone_config", pa.string()),  # JSON of every backbone field
    pa.field("requested_count", pa.int64()),
    pa.field("shortfall", pa.string()),
    pa.field("shortfall_applied", pa.string()),  # null, "cap" or "augment"
    pa.field("n_train_pool", pa.int64()),
    pa.field("pixel_level", pa.bool_()),
    pa.field("eval_every", pa.int64()),
    pa.field("hp", pa.string()),  # JSON of the swept values of this cell
]

SCORES_SCHEMA = pa.schema(
    [
        pa.field("cell_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        pa.field("defect_type", pa.string()),
    ]
)

MAPS_SCHEMA = pa.schema(
    [
        pa.field("cell_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("pick", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        pa.field("image_png", pa.binary()),
        pa.field("map_png", pa.binary()),
        pa.field("mask_png", pa.binary()),
    ]
)

#: history columns every run has; a method's other numeric keys go to diag_* (if declared) or `extra`
HISTORY_BASE_FIELDS: list[pa.Field] = [
    pa.field("cell_id", pa.string()),
    pa.field("method", pa.string()),
    pa.field("epoch", pa.int64()),
    pa.field("iteration", pa.int64()),
    pa.field("loss", pa.float64()),
    pa.field("loss_bce", pa.float64()),
    pa.field("loss_ms", pa.float64()),
    pa.field("lr", pa.float64()),
    pa.field("time_s", pa.float64()),
]
HISTORY_TAIL_FIELDS: list[pa.Field] = [
    pa.field("eval_image_auroc", pa.float64()),
    pa.field("eval_pixel_auroc", pa.float64()),
    pa.field("extra", pa.string()),  # JSON of any key the schema does not know (nothing is lost)
]
#: what the evaluate() closure returns, as named in history rows
_EVAL_ALIASES = {"image_auroc": "eval_image_auroc", "pixel_auroc": "eval_pixel_auroc"}


def _method_names(methods: Mapping[str, Any] | Iterable[str]) -> list[str]:
    return list(methods.keys()) if isinstance(methods, Mapping) else list(methods)


def diagnostic_names(methods: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """Union of the methods' declared diagnostic names, in first-seen order."""
    from funad.methods import method_class

    names: list[str] = []
    for m in _method_names(methods):
        for d in method_class(m).diagnostic_names:
            if d not in names:
                names.append(d)
    return names


def _value_type(values: Iterable[Any]) -> pa.DataType:
    """Arrow type of a swept setting from its grid values: bool, int64, float64, else string."""
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, bool) for v in vals):
        return pa.bool_()
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if vals and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def _merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if a == b:
        return a
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def hp_types(methods: Mapping[str, Any] | Iterable[str]) -> dict[str, pa.DataType]:
    """Swept setting name -> Arrow type, over all methods (same name in two methods: types merged)."""
    if not isinstance(methods, Mapping):
        return {}
    from harness.cells import method_axes

    out: dict[str, pa.DataType] = {}
    for name, settings in methods.items():
        for key, values in method_axes(name, dict(settings or {})).items():
            t = _value_type(values)
            out[key] = _merge_types(out[key], t) if key in out else t
    return out


def result_schema(methods: Mapping[str, Any] | Iterable[str]) -> pa.Schema:
    """The one schema of results/*.parquet for a run.

    methods: the sweep's `methods` mapping (name -> settings, lists = grid axes), which gives the
    hp_* columns; a plain list of names gives no hp_* columns. diag_* come from the registry.
    """
    fields = list(RESULT_FIELDS)
    fields += [pa.field(f"hp_{k}", t) for k, t in hp_types(methods).items()]
    fields += [pa.field(f"diag_{d}", pa.float64()) for d in diagnostic_names(methods)]
    fields += EXTRA_RESULT_FIELDS
    return pa.schema(fields)


def history_schema(methods: Mapping[str, Any] | Iterable[str]) -> pa.Schema:
    """The one schema of history/*.parquet: fixed loss/step columns, diag_* of every method,
    eval_* and `extra` (JSON of keys not known here, so a new key never breaks a write)."""
    fields = list(HISTORY_BASE_FIELDS)
    fields += [pa.field(f"diag_{d}", pa.float64()) for d in diagnostic_names(methods)]
    fields += HISTORY_TAIL_FIELDS
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------
# rows


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def error_text(exc: BaseException | str, max_lines: int = 15) -> str:
    """`Type: message` plus the last lines of the traceback (the contract's `error`)."""
    if isinstance(exc, str):
        return exc
    head = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    return head + "\n" + "\n".join(tb[-max_lines:])


def _cell_fields(run: str, cell: Any) -> dict[str, Any]:
    """The columns that come from the cell's definition alone (same for ok and failed rows)."""
    cfg = cell.config
    ds = dict(cfg.dataset)
    kind, root = ds.pop("kind"), ds.pop("root", None)
    row: dict[str, Any] = {
        "run": run,
        "cell_id": cell.cell_id,
        "dataset": kind,
        "category": cfg.category,
        "method": cfg.method,
        "backbone": cfg.backbone.get("name"),
        "ratio": None if cfg.ratio is None else float(cfg.ratio),
        "overlap": bool(cfg.overlap),
        "seed": int(cfg.seed),
        "dataset_root": None if root is None else str(root),
        "dataset_options": _json(ds),
        "backbone_config": _json(cfg.backbone),
        "requested_count": cfg.count,
        "shortfall": cfg.shortfall,
        "eval_every": int(cfg.eval_every),
        "hp": _json(cell.hp),
    }
    for k, v in cell.hp.items():
        row[f"hp_{k}"] = v
    return row


def _provenance(
    device: str | None, node: str | None, peak_rss_mb: float | None, peak_gpu_mb: float | None
) -> dict[str, Any]:
    return {
        "device": versions.device_name(device) if device else None,
        "node": node or versions.node_name(),
        "git_commit": versions.git_commit(),
        "versions": versions.versions_json(),
        "peak_rss_mb": versions.peak_rss_mb() if peak_rss_mb is None else peak_rss_mb,
        "peak_gpu_mb": versions.peak_gpu_mb(device) if peak_gpu_mb is None else peak_gpu_mb,
    }


def build_ok_row(
    *,
    run: str,
    cell: Any,
    outcome: Any,
    attempt: int = 1,
    started_at: datetime,
    finished_at: datetime,
    wall_s: float | None = None,
    node: str | None = None,
    peak_rss_mb: float | None = None,
    peak_gpu_mb: float | None = None,
) -> dict[str, Any]:
    """A results row for a finished cell (`cell`: harness.cells.Cell; `outcome`: funad.run.CellOutcome)."""
    split = outcome.split
    row = _cell_fields(run, cell)
    row.update(
        {
            "achieved_ratio": _finite(getattr(split, "achieved_ratio", None)),
            "params": _json(outcome.params),
            "n_train_normal": split.n_train_normal,
            "n_injected": split.n_injected,
            "n_test_normal": split.n_test_normal,
            "n_test_anomalous": split.n_test_anomalous,
            "injected_ids": [str(i) for i in split.injected_ids],
            "shortfall_applied": getattr(split, "shortfall_applied", None),
            "n_train_pool": getattr(outcome, "n_train_pool", None),
            "pixel_level": getattr(outcome, "pixel_level", None),
            "status": "ok",
            "error": None,
            "attempt": int(attempt),
            "started_at": started_at,
            "finished_at": finished_at,
            "wall_s": (finished_at - started_at).total_seconds() if wall_s is None else wall_s,
        }
    )
    row.update({k: _finite(v) for k, v in outcome.metrics.items()})
    row.update({k: _finite(v) for k, v in outcome.timings.items()})
    oracle = dict(outcome.oracle or {})
    row["oracle_image_auroc"] = _finite(oracle.get("oracle_image_auroc", oracle.get("image_auroc")))
    row["oracle_pixel_auroc"] = _finite(oracle.get("oracle_pixel_auroc", oracle.get("pixel_auroc")))
    epoch = oracle.get("oracle_epoch", oracle.get("epoch"))
    row["oracle_epoch"] = None if epoch is None else int(epoch)
    for k, v in outcome.diagnostics.items():
        row[f"diag_{k}"] = _finite(v)
    row.update(_provenance(outcome.device, node, peak_rss_mb, peak_gpu_mb))
    return row


def build_failed_row(
    *,
    run: str,
    cell: Any,
    error: BaseException | str,
    attempt: int = 1,
    started_at: datetime,
    finished_at: datetime,
    wall_s: float | None = None,
    device: str | None = None,
    node: str | None = None,
    peak_rss_mb: float | None = None,
    peak_gpu_mb: float | None = None,
) -> dict[str, Any]:
    """A results row for a cell that raised: status failed, metrics null, the error's text kept."""
    row = _cell_fields(run, cell)
    row.update(
        {
            "status": "failed",
            "error": error_text(error),
            "attempt": int(attempt),
            "started_at": started_at,
            "finished_at": finished_at,
            "wall_s": (finished_at - started_at).total_seconds() if wall_s is None else wall_s,
        }
    )
    row.update(_provenance(device, node, peak_rss_mb, peak_gpu_mb))
    return row


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# PNG encoding of gallery maps


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def map_rows(cell_id: str, examples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """run_cell's map_examples -> maps/ rows (PNGs; map scaled by the cell's min/max of all maps)."""
    rows = []
    for ex in examples:
        m = np.asarray(ex["map"], dtype=np.float32)
        lo = float(ex.get("map_min", float(m.min())))
        hi = float(ex.get("map_max", float(m.max())))
        scaled = np.zeros_like(m) if hi <= lo else np.clip((m - lo) / (hi - lo), 0.0, 1.0)
        mask = ex.get("mask")
        mask_u8 = None if mask is None else np.asarray(mask, dtype=bool).astype(np.uint8) * 255
        rows.append(
            {
                "cell_id": cell_id,
                "image_id": ex["image_id"],
                "pick": ex["pick"],
                "label": int(ex["label"]),
                "score": float(ex["score"]),
                "image_png": _png(np.asarray(ex["image"], dtype=np.uint8)),
                "map_png": _png((scaled * 255.0 + 0.5).astype(np.uint8)),
                "mask_png": None if mask is None else _png(mask_u8),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# atomic files


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") or ".tmp" in path.name


def _atomic_write(path: Path, write: Any) -> None:
    """write(tmp_path) then os.replace onto path; the temp file lives in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table_atomic(path: Path, rows: list[Mapping[str, Any]], schema: pa.Schema) -> None:
    """Rows -> one Parquet file with exactly `schema`; an unknown key is an error (a schema bug)."""
    names = set(schema.names)
    for r in rows:
        unknown = sorted(set(r) - names)
        if unknown:
            raise KeyError(f"{path.name}: columns not in the run's schema: {', '.join(unknown)}")
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# ---------------------------------------------------------------------------------------------
# the run directory


class RunStore:
    """One run directory: results/, scores/, history/, maps/ (one Parquet file per cell each).

    methods: the sweep's `methods` mapping, which fixes the schemas; when omitted it is read from
    the run's sweep.yaml (so a worker only needs the directory).
    """

    SUBDIRS = ("results", "scores", "history", "maps")

    def __init__(self, run_dir: str | os.PathLike[str], methods: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self._methods = methods
        self._schemas: dict[str, pa.Schema] = {}

    # directories -----------------------------------------------------------------------------
    def ensure_dirs(self) -> None:
        for d in self.SUBDIRS:
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)

    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results"

    def path(self, table: str, cell_id: str) -> Path:
        return self.run_dir / table / f"{cell_id}.parquet"

    # schemas ---------------------------------------------------------------------------------
    @property
    def methods(self) -> Mapping[str, Any]:
        if self._methods is None:
            spec_file = self.run_dir / "sweep.yaml"
            if not spec_file.is_file():
                raise FileNotFoundError(f"{spec_file}: no sweep.yaml; pass methods= to RunStore")
            self._methods = (yaml.safe_load(spec_file.read_text()) or {}).get("methods") or {}
        return self._methods

    @property
    def result_schema(self) -> pa.Schema:
        if "results" not in self._schemas:
            self._schemas["results"] = result_schema(self.methods)
        return self._schemas["results"]

    @property
    def history_schema(self) -> pa.Schema:
        if "history" not in self._schemas:
            self._schemas["history"] = history_schema(self.methods)
        return self._schemas["history"]

    # writes ----------------------------------------------------------------------------------
    def write_spec(self, resolved: Mapping[str, Any]) -> Path:
        """Save the resolved sweep as sweep.yaml (atomically) and adopt its methods for the schemas."""
        path = self.run_dir / "sweep.yaml"
        text = yaml.safe_dump(dict(resolved), sort_keys=False, default_flow_style=False)
        _atomic_write(path, lambda tmp: tmp.write_text(text))
        if self._methods is None:
            self._methods = dict(resolved.get("methods") or {})
        return path

    def history_rows(self, cell_id: str, method: str, history: Iterable[Mapping[str, Any]]) -> list[dict]:
        """Fit method history dicts to the history schema; unknown keys go to the `extra` JSON column."""
        schema = self.history_schema
        known = set(schema.names)
        ints = {f.name for f in schema if pa.types.is_integer(f.type)}
        rows = []
        for h in history:
            row: dict[str, Any] = {"cell_id": cell_id, "method": method}
            extra: dict[str, Any] = {}
            for k, v in h.items():
                col = _EVAL_ALIASES.get(k, k)
                if col not in known and f"diag_{col}" in known:
                    col = f"diag_{col}"
                if col in ("cell_id", "method", "extra") or col not in known:
                    extra[k] = v
                elif col in ints:
                    row[col] = None if v is None else int(v)
                else:
                    row[col] = _finite(v)
            row["extra"] = _json(extra) if extra else None
            rows.append(row)
        return rows

    def write_cell(
        self,
        row: Mapping[str, Any],
        scores: Iterable[Mapping[str, Any]],
        history: Iterable[Mapping[str, Any]] = (),
        maps: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """Write one finished cell: scores, history, maps, then results LAST (the completion mark).

        scores: {image_id, label, score[, defect_type]}; history: the method's per-epoch dicts;
        maps: run_cell's map_examples (arrays) or ready maps/ rows (with image_png).
        """
        cell_id = str(row["cell_id"])
        self.ensure_dirs()
        score_rows = [
            {
                "cell_id": cell_id,
                "image_id": s["image_id"],
                "label": int(s["label"]),
                "score": _finite(s["score"]),
                "defect_type": s.get("defect_type"),
            }
            for s in scores
        ]
        write_table_atomic(self.path("scores", cell_id), score_rows, SCORES_SCHEMA)
        hist = self.history_rows(cell_id, str(row.get("method")), history)
        write_table_atomic(self.path("history", cell_id), hist, self.history_schema)
        maps = list(maps)
        map_rows_ = [dict(m, cell_id=cell_id) for m in maps] if maps and "image_png" in maps[0] else None
        write_table_atomic(self.path("maps", cell_id), map_rows_ or map_rows(cell_id, maps), MAPS_SCHEMA)
        write_table_atomic(self.path("results", cell_id), [row], self.result_schema)

    def write_failed(self, row: Mapping[str, Any]) -> bool:
        """Record a failed attempt; never replaces an `ok` result. Returns whether it wrote."""
        cell_id = str(row["cell_id"])
        if self.status(cell_id) == "ok":
            return False
        self.ensure_dirs()
        write_table_atomic(self.path("results", cell_id), [row], self.result_schema)
        return True

    # reads -----------------------------------------------------------------------------------
    def _result_files(self) -> list[Path]:
        if not self.results_dir.is_dir():
            return []
        return sorted(p for p in self.results_dir.glob("*.parquet") if not _is_temp(p))

    def status(self, cell_id: str) -> str | None:
        """`ok`, `failed`, or None when the cell has no readable result."""
        path = self.path("results", cell_id)
        if not path.is_file():
            return None
        try:
            col = pq.read_table(path, columns=["status"]).column("status").to_pylist()
        except Exception:  # a foreign or damaged file counts as "not done"
            return None
        return col[0] if col else None

    def statuses(self) -> dict[str, str]:
        """cell_id -> status over all readable result files (unreadable ones are skipped)."""
        out: dict[str, str] = {}
        for p in self._result_files():
            try:
                t = pq.read_table(p, columns=["cell_id", "status"])
            except Exception:
                continue
            for cid, st in zip(t.column("cell_id").to_pylist(), t.column("status").to_pylist(), strict=True):
                if cid is not None:
                    out[cid] = st
        return out

    def ok_cell_ids(self) -> set[str]:
        """Ids of cells whose result says ok: the resume index."""
        return {cid for cid, st in self.statuses().items() if st == "ok"}

    def read_results(self) -> Any:
        """All result rows as a pandas DataFrame (empty frame with the schema's columns if none)."""
        import pandas as pd

        files = self._result_files()
        if not files:
            if self._methods is None and not (self.run_dir / "sweep.yaml").is_file():
                return pd.DataFrame()
            return self.result_schema.empty_table().to_pandas()
        return pd.read_parquet(self.results_dir)


# ---------------------------------------------------------------------------------------------
# a grown spec: one schema for the whole run, old files rewritten to it

#: the union of every invocation's `methods` (grid values merged): what the run's schemas are built
#: from, so a rerun that adds or drops a method or a swept setting never loses or mistypes a column
SCHEMA_METHODS_FILE = "schema_methods.yaml"
_MISSING = object()


def merge_methods(*mappings: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Union of methods mappings: a setting given different values (or swept in any) becomes an axis
    of all its values, so its hp_* column and type cover every file of the run."""
    from harness.cells import is_axis, list_valued_settings

    values: dict[str, dict[str, list[Any]]] = {}
    axis: dict[tuple[str, str], bool] = {}
    for mapping in mappings:
        for name, settings in (mapping or {}).items():
            lv = list_valued_settings(name)
            cur = values.setdefault(name, {})
            for key, value in (settings or {}).items():
                swept = is_axis(name, key, value, lv)
                vals = list(value) if swept else [value]
                seen = {_json(v) for v in cur.get(key, [])}
                cur.setdefault(key, []).extend(v for v in vals if _json(v) not in seen)
                axis[(name, key)] = axis.get((name, key), False) or swept
    out: dict[str, dict[str, Any]] = {}
    for name, settings in values.items():
        out[name] = {
            k: (list(vs) if axis[(name, k)] or len(vs) > 1 else vs[0]) for k, vs in settings.items()
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


def unify_run_schema(run_dir: str | os.PathLike[str], methods: Mapping[str, Any], log: Any = None) -> dict:
    """Before a (re)run: merge this invocation's methods into the run's schema methods and rewrite
    every results/ and history/ file whose schema differs (each atomically: temp + rename).

    Returns the merged methods, which every writer of this invocation must use. Safe to interrupt:
    the schema file is updated last, so a killed migration is simply redone on the next start.
    """
    run_dir = Path(run_dir)
    schema_file = run_dir / SCHEMA_METHODS_FILE
    previous: Mapping[str, Any] | None = None
    if schema_file.is_file():
        previous = yaml.safe_load(schema_file.read_text()) or {}
    elif (run_dir / "sweep.yaml").is_file():  # a run from before this file existed
        previous = (yaml.safe_load((run_dir / "sweep.yaml").read_text()) or {}).get("methods") or {}
    merged = merge_methods(previous, methods)
    has_files = any(
        (run_dir / t).is_dir() and any((run_dir / t).glob("*.parquet")) for t in ("results", "history")
    )
    if schema_file.is_file() and previous == merged:
        return merged
    if has_files:
        targets = {"results": result_schema(merged), "history": history_schema(merged)}
        rewritten, dropped = 0, set()
        for table_name, schema in targets.items():
            folder = run_dir / table_name
            if not folder.is_dir():
                continue
            for p in sorted(folder.glob("*.parquet")):
                if _is_temp(p):
                    continue
                try:
                    have = pq.read_schema(p).remove_metadata()
                except Exception:  # unreadable: the resume logic treats it as missing
                    continue
                if have.equals(schema):
                    continue
                table = pq.read_table(p)
                dropped |= set(table.column_names) - set(schema.names)
                new = _conform(table, schema)
                _atomic_write(p, lambda tmp, new=new: pq.write_table(new, tmp))
                rewritten += 1
        if log and rewritten:
            log(f"schema: the run's columns changed; rewrote {rewritten} results/history file(s) "
                "to one schema")
        if log and dropped:
            log("warning: schema: columns no method of this run declares were dropped: "
                + ", ".join(sorted(dropped)))
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(merged, sort_keys=True, default_flow_style=False)
    _atomic_write(schema_file, lambda tmp: tmp.write_text(text))
    return merged
