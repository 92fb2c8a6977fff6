"""Rows of the run directory's tables: a cell's defining values, ok and failed results, history, plan.

A result row (docs/contract.md, "Result row") records one attempt: what the cell is (from its
definition alone, the same for ok and failed rows), what it measured, and where and with what it ran
(provenance).
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from funad.metrics import format_notes
from funad.run import CellOutcome
from harness import versions
from harness.cells import Cell, backbone_json
from harness.schema import hp_value
from rundir import DIAG_PREFIX, HP_PREFIX


def finite(x: Any) -> float | None:
    """A float, or None for a missing or non-finite value (Parquet null, never NaN in our columns)."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def to_json(obj: Any) -> str:
    """Compact, key-sorted JSON: the text columns (params, hp, options) compare as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def error_text(exc: BaseException | str, max_lines: int = 15) -> str:
    """`Type: message` plus the last lines of the traceback (the `error` column)."""
    if isinstance(exc, str):
        return exc
    head = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    return head + "\n" + "\n".join(tb[-max_lines:])


def cell_fields(cell: Cell) -> dict[str, Any]:
    """The columns that come from the cell's definition alone (shared by result and plan rows), derived
    from its typed fields: the dataset, the backbone, the split rule's record form, the swept values."""
    cfg = cell.config
    ds = dict(cfg.dataset)
    kind, root = ds.pop("kind"), ds.pop("root", None)
    hp = cell.hp
    row: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "dataset": kind,
        "category": cfg.category,
        "method": cfg.method,
        "backbone": cfg.backbone.name,
        "seed": int(cfg.seed),
        "dataset_root": None if root is None else str(root),
        "dataset_options": to_json(ds),
        "backbone_config": to_json(backbone_json(cfg.backbone)),
        **cfg.split.row_values(),
        "hp": to_json(hp),
    }
    for k, v in hp.items():
        row[f"{HP_PREFIX}{k}"] = hp_value(v)
    return row


def _result_fields(run: str, cell: Cell) -> dict[str, Any]:
    return {"run": run, **cell_fields(cell), "eval_every": int(cell.config.eval_every)}


def plan_row(cell: Cell) -> dict[str, Any]:
    """One row of plan.parquet: everything that defines the cell, method defaults filled."""
    return {
        **cell_fields(cell),
        "params": to_json(cell.config.settings.model_dump(mode="json")),
        "min_test_anomalies": cell.config.split.min_test_anomalies,
    }


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
    cell: Cell,
    outcome: CellOutcome,
    attempt: int = 1,
    started_at: datetime,
    finished_at: datetime,
    wall_s: float | None = None,
    node: str | None = None,
    peak_rss_mb: float | None = None,
    peak_gpu_mb: float | None = None,
) -> dict[str, Any]:
    """A results row for a finished cell."""
    split = outcome.split
    row = _result_fields(run, cell)
    row.update(
        {
            "achieved_ratio": finite(split.achieved_ratio),
            "params": to_json(outcome.params),
            "n_train_normal": split.n_train_normal,
            "n_injected": split.n_injected,
            "n_test_normal": split.n_test_normal,
            "n_test_anomalous": split.n_test_anomalous,
            "injected_ids": [str(i) for i in split.injected_ids],
            "shortfall_applied": split.shortfall_applied,
            "contamination_source": split.source,  # "dataset" for a dataset's own noisy split
            "split_source": outcome.split_source,
            "n_injected_normal": split.n_injected_normal,
            "n_train_pool": outcome.n_train_pool,
            "pixel_level": outcome.pixel_level,
            "status": "ok",
            "error": None,
            "attempt": int(attempt),
            "started_at": started_at,
            "finished_at": finished_at,
            "wall_s": (finished_at - started_at).total_seconds() if wall_s is None else wall_s,
        }
    )
    row.update({k: finite(v) for k, v in outcome.metrics.items()})
    row["metric_notes"] = format_notes(outcome.metric_notes)
    row.update({k: finite(v) for k, v in outcome.timings.items()})
    oracle = outcome.oracle
    row["oracle_image_auroc"] = finite(oracle.get("oracle_image_auroc"))
    row["oracle_pixel_auroc"] = finite(oracle.get("oracle_pixel_auroc"))
    epoch = oracle.get("oracle_epoch")
    row["oracle_epoch"] = None if epoch is None else int(epoch)
    for k, v in outcome.diagnostics.items():
        row[f"{DIAG_PREFIX}{k}"] = finite(v)
    row.update(_provenance(outcome.device, node, peak_rss_mb, peak_gpu_mb))
    return row


def build_failed_row(
    *,
    run: str,
    cell: Cell,
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
    row = _result_fields(run, cell)
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


def history_rows(
    cell_id: str, method: str, history: Iterable[Mapping[str, Any]], schema: pa.Schema
) -> list[dict[str, Any]]:
    """A method's history dicts fitted to the run's history schema: a key the schema has as
    diag_<key> goes there; a key it does not know goes to the `extra` JSON column (nothing is lost)."""
    known = set(schema.names)
    ints = {f.name for f in schema if pa.types.is_integer(f.type)}
    rows = []
    for h in history:
        row: dict[str, Any] = {"cell_id": cell_id, "method": method}
        extra: dict[str, Any] = {}
        for k, v in h.items():
            col = k if k in known else f"{DIAG_PREFIX}{k}"
            if col in ("cell_id", "method", "extra") or col not in known:
                extra[k] = v
            elif col in ints:
                row[col] = None if v is None else int(v)
            else:
                row[col] = finite(v)
        row["extra"] = to_json(extra) if extra else None
        rows.append(row)
    return rows
