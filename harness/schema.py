"""The run's Parquet schemas: the fixed columns (rundir) plus the per-run part.

Why one explicit schema: pyarrow infers a dataset's schema from its first file, so a column that is
null there fails to cast later and a column missing there is silently dropped. Every file of a run
is therefore written with the same schema, built from the sweep's methods: their swept settings
become hp_* columns (typed from the grid values), their diagnostic names diag_* columns (from the
method registry).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from harness.cells import method_axes
from rundir import (
    DIAG_PREFIX,
    EXTRA_RESULT_FIELDS,
    HISTORY_BASE_FIELDS,
    HISTORY_TAIL_FIELDS,
    HP_PREFIX,
    PLAN_FIELDS,
    RESULT_FIELDS,
)

#: a sweep's `methods`: method name -> settings (a list value is a grid axis)
Methods = Mapping[str, Mapping[str, Any]]


def diagnostic_names(methods: Methods) -> list[str]:
    """Union of the methods' declared diagnostic names, in first-seen order."""
    from funad.methods import method_class

    names: list[str] = []
    for m in methods:
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


def hp_types(methods: Methods) -> dict[str, pa.DataType]:
    """Swept setting name -> Arrow type, over all methods (same name in two methods: types merged)."""
    out: dict[str, pa.DataType] = {}
    for name, settings in methods.items():
        for key, values in method_axes(name, dict(settings)).items():
            t = _value_type(values)
            out[key] = _merge_types(out[key], t) if key in out else t
    return out


def hp_fields(methods: Methods) -> list[pa.Field]:
    return [pa.field(f"{HP_PREFIX}{k}", t) for k, t in hp_types(methods).items()]


def _diag_fields(methods: Methods) -> list[pa.Field]:
    return [pa.field(f"{DIAG_PREFIX}{d}", pa.float64()) for d in diagnostic_names(methods)]


def result_schema(methods: Methods) -> pa.Schema:
    """The one schema of results/*.parquet for a run: contract columns, hp_*, diag_*, extras."""
    return pa.schema([*RESULT_FIELDS, *hp_fields(methods), *_diag_fields(methods), *EXTRA_RESULT_FIELDS])


def history_schema(methods: Methods) -> pa.Schema:
    """The one schema of history/*.parquet: fixed loss/step columns, diag_* of every method,
    eval_* and `extra` (JSON of keys not known here, so a new key never breaks a write)."""
    return pa.schema([*HISTORY_BASE_FIELDS, *_diag_fields(methods), *HISTORY_TAIL_FIELDS])


def plan_schema(methods: Methods) -> pa.Schema:
    """plan.parquet: the cell's defining values, with the hp_* columns typed as in the results."""
    return pa.schema([*PLAN_FIELDS, *hp_fields(methods)])
