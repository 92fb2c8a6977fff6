"""Registry of methods: the harness and users say `funad`, `patchcore`, `softpatch`."""

from __future__ import annotations

from typing import Any

from funad.methods.base import FitContext, Method, MethodSettings, Scores

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method reachable by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # Imported lazily so that `import funad.methods` stays cheap and cycle-free.
    from funad.methods import funad as _funad  # noqa: F401
    from funad.methods import patchcore as _patchcore  # noqa: F401
    from funad.methods import softpatch as _softpatch  # noqa: F401


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_method(name: str, settings: dict[str, Any] | None = None) -> Method:
    """Build a method from plain settings; unknown or ill-typed settings raise pydantic's error."""
    cls = method_class(name)
    return cls(settings=cls.Settings(**(settings or {})))


def default_settings(name: str) -> dict[str, Any]:
    return method_class(name).Settings().model_dump()


__all__ = [
    "FitContext",
    "Method",
    "MethodSettings",
    "Scores",
    "available",
    "create_method",
    "default_settings",
    "method_class",
    "register",
]
