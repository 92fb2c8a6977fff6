"""Problems as the user reads them: `FILE: key.path: what is wrong (allowed: ...)`, one per line,
and pydantic's validation errors translated into that form."""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence
from types import UnionType
from typing import Any

from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """An invalid sweep file; `problems` holds one line per problem (file, key, what, allowed)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def path_str(loc: Iterable[Any]) -> str:
    """("datasets", 0, "root") -> "datasets[0].root"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _unwrap(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        return [a for a in args if a is not type(None)]
    return [annotation]


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at loc (to list its allowed keys)."""
    cur: Any = model
    for part in loc:
        nxt = None
        for t in _unwrap(cur):
            if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                if part in t.model_fields:
                    nxt = t.model_fields[part].annotation
            elif typing.get_origin(t) in (list, dict):
                nxt = typing.get_args(t)[-1]
            if nxt is not None:
                break
        if nxt is None:
            return None
        cur = nxt
    for t in _unwrap(cur):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _allowed_keys(model: type[BaseModel] | None) -> str:
    return ", ".join(model.model_fields) if model is not None else "see the docs"


def pydantic_problems(
    err: ValidationError, src: str, model: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[str]:
    """One problem line per pydantic error; `prefix` is where `model` sits in the sweep file."""
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("literal"))))
        path = path_str((*prefix, *loc))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        kind = e.get("type", "")
        if kind == "extra_forbidden":
            what = "setting" if prefix and prefix[0] == "methods" else "key"
            allowed = _allowed_keys(_model_at(model, loc[:-1]))
            out.append(f"{src}: {path}: unknown {what} (allowed: {allowed})")
        elif kind == "missing":
            out.append(f"{src}: {path}: required key is missing")
        elif kind == "value_error" and "(allowed:" in msg:
            out.append(f"{src}: {path}: {msg}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            out.append(f"{src}: {path}: {msg}{shown}")
    return out
