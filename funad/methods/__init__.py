"""Registry of methods: the harness and users name a method (`funad`, `patchcore`, ...) and get its class.

Built-in methods register themselves with `@register`; methods of other installed packages come in
through the entry-point group `funad_bench.methods` (see `plugins.py` and docs/methods.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from funad.methods.base import FitContext, Method, MethodSettings, Scores

_REGISTRY: dict[str, type[Method]] = {}
#: families: one sweep-file entry standing for several methods (anomalib: {model: [Padim, Stfpm]} is the
#: methods anomalib.padim and anomalib.stfpm); name -> expand(settings) -> [(method name, its settings)]
_FAMILIES: dict[str, Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]]] = {}
#: names of the built-in methods, once loaded (a plugin may not take one)
_BUILTIN: set[str] = set()
_plugins_loaded = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method reachable by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


class FamilyError(ValueError):
    """A family entry that cannot be expanded (an unknown member, a missing extra): `key` names the
    setting at fault (e.g. "model"), the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def register_family(name: str, expand: Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]]) -> None:
    """Make `name` a sweep-file entry that expands into several registered methods."""
    _FAMILIES[name] = expand


def families() -> list[str]:
    _load()
    return sorted(_FAMILIES)


def expand_method(name: str, settings: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A sweep file's method entry -> (method name, settings) for each method it stands for: a family
    expands (FamilyError when it cannot), any other name is itself."""
    _load()
    if name in _FAMILIES:
        return _FAMILIES[name](dict(settings))
    return [(name, dict(settings))]


def _load_builtin() -> None:
    # Imported lazily so that `import funad.methods` stays cheap and cycle-free.
    from funad.methods import funad as _funad  # noqa: F401
    from funad.methods import inreach as _inreach  # noqa: F401
    from funad.methods import patchcore as _patchcore  # noqa: F401
    from funad.methods import softpatch as _softpatch  # noqa: F401

    # anomalib's image models, when the `anomalib` extra is installed (listed without importing anomalib);
    # the family entry `anomalib: {model: [...]}` exists either way (without the extra it says how to get it)
    from funad.methods.anomalib import FAMILY, expand_family, register_installed

    register_installed()
    register_family(FAMILY, expand_family)


def _load() -> None:
    """Built-ins, then the installed plugins (once; a broken plugin raises PluginError every time)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _load_builtin()
    if not _BUILTIN:
        _BUILTIN.update(_REGISTRY)
    from funad.methods.plugins import discover

    _REGISTRY.update(discover(_BUILTIN))
    _plugins_loaded = True


def available() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    _load()
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
    "FamilyError",
    "FitContext",
    "Method",
    "MethodSettings",
    "Scores",
    "available",
    "create_method",
    "default_settings",
    "expand_method",
    "families",
    "method_class",
    "register",
    "register_family",
]
