"""The run's Parquet schemas: the fixed columns (rundir) plus the per-run part.

Why one explicit schema: pyarrow infers a dataset's schema from its first file, so a column that is
null there fails to cast later and a column missing there is silently dropped. Every file of a run
is therefore written with the same schema, built from the sweep's methods: their swept settings
become hp_* columns (typed from the settings' annotations), their diagnostic names diag_* columns (from the
method registry).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from types import UnionType
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


_SCALAR_TYPES: dict[type, pa.DataType] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}


def _annotation_type(annotation: Any) -> pa.DataType:
    """Arrow type of a setting from its Settings annotation: bool, int64, float64, else string (a
    list, a dict or any other value is stored as its JSON text)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _annotation_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        types = [_annotation_type(a) for a in args] or [pa.string()]
        merged = types[0]
        for t in types[1:]:
            merged = _merge_types(merged, t)
        return merged
    if origin is typing.Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        return _SCALAR_TYPES.get(kinds.pop(), pa.string()) if len(kinds) == 1 else pa.string()
    return _SCALAR_TYPES.get(annotation, pa.string())


def _merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if a == b:
        return a
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def setting_type(method: str, name: str) -> pa.DataType:
    """The hp_<name> column type of one method's setting, from its Settings model's annotation."""
    from funad.methods import method_class

    return _annotation_type(method_class(method).Settings.model_fields[name].annotation)


def hp_value(value: Any) -> Any:
    """A swept setting's value as its hp_* column holds it: scalars as they are, anything else as JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def hp_types(methods: Methods) -> dict[str, pa.DataType]:
    """Swept setting name -> Arrow type, over all methods (same name in two methods: types merged)."""
    out: dict[str, pa.DataType] = {}
    for name, settings in methods.items():
        for key in method_axes(name, dict(settings)):
            t = setting_type(name, key)
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
