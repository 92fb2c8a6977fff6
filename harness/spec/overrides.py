"""What changes a sweep file's data before validation: `--set KEY=VALUE` overrides and `${ENV}`."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from harness.spec.errors import path_str

#: `${VAR}` or `${VAR:-default}`
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `--set a.b.c=VALUE` (VALUE parsed as YAML; list items addressed by index)."""
    if "=" not in override:
        raise ValueError("expected KEY=VALUE (e.g. methods.funad.epochs=5)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ValueError("empty key (allowed: a dotted path such as methods.funad.epochs)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"value is not plain YAML ({e})") from None
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ValueError(
                    f"{path_str(parts[:i])} is a list of {len(cur)}: '{part}' is not an index of it"
                )
            if last:
                cur[int(part)] = value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
            else:
                if not isinstance(cur.get(part), dict | list):
                    cur[part] = {}
                cur = cur[part]
        else:
            raise ValueError(f"{path_str(parts[:i])} is not a mapping or list")


def expand_env(value: Any, loc: tuple[Any, ...], problems: list[str], src: str) -> Any:
    """Every `${VAR}` in the strings of `value` replaced; an unset one without default is a problem."""
    if isinstance(value, dict):
        return {k: expand_env(v, (*loc, k), problems, src) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*loc, i), problems, src) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        problems.append(
            f"{src}: {path_str(loc)}: environment variable {var} is not set "
            f"(allowed: export {var}=..., or write ${{{var}:-default}})"
        )
        return m.group(0)

    return ENV_PATTERN.sub(sub, value)


def has_unset_env(value: str) -> bool:
    """Whether a `${VAR}` survived expansion (its problem is already reported)."""
    return ENV_PATTERN.search(value) is not None
