"""Methods from other packages: entry points of the group `funad_bench.methods`.

A distribution declares, in its pyproject.toml,

    [project.entry-points."funad_bench.methods"]
    patchknn = "patchknn:PatchKNN"

and the method is usable in a sweep file by that name (see docs/methods.md). Entry points are read from
the installed distributions' metadata, so a Ray worker (a new process in the same environment) finds
them just as the driver does. Every way a plugin can be broken is one `PluginError` naming the plugin,
its entry point and its distribution; the sweep turns it into a spec problem (exit 2) before Ray starts.
"""

from __future__ import annotations

import inspect
from importlib import metadata

from funad.methods.base import Method, MethodSettings

GROUP = "funad_bench.methods"


class PluginError(RuntimeError):
    """A method plugin that cannot be used; the message names it and its distribution."""


def _where(ep: metadata.EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    return f"method plugin {ep.name!r} ({ep.value}, from distribution {dist!r}, entry-point group {GROUP!r})"


def _check(ep: metadata.EntryPoint, obj: object) -> type[Method]:
    where = _where(ep)
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise PluginError(f"{where}: {ep.value} is not a subclass of funad.methods.Method")
    if not obj.name:
        raise PluginError(f"{where}: the class has no `name` (set name = {ep.name!r})")
    if obj.name != ep.name:
        raise PluginError(f"{where}: the class's name is {obj.name!r}, but the entry point calls it "
                          f"{ep.name!r} (they must be equal)")
    settings = getattr(obj, "Settings", None)
    typed = isinstance(settings, type) and issubclass(settings, MethodSettings)
    if not typed or settings is MethodSettings:
        # no Settings of its own: the base model would accept no setting at all
        raise PluginError(f"{where}: the class has no `Settings` of its own (a subclass of "
                          "funad.methods.MethodSettings listing its settings with their defaults)")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        raise PluginError(f"{where}: the class does not implement {missing}")
    return obj


def discover(builtin: set[str]) -> dict[str, type[Method]]:
    """Every installed method plugin by name; raises PluginError for the first broken one."""
    found: dict[str, type[Method]] = {}
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in builtin:
            raise PluginError(f"{_where(ep)}: the name clashes with the built-in method {ep.name!r} "
                              "(allowed: a name no built-in method has)")
        if ep.name in found:
            raise PluginError(f"{_where(ep)}: another installed distribution already provides {ep.name!r}")
        try:
            obj = ep.load()
        except Exception as exc:  # any import-time failure of someone else's package
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PluginError(f"{_where(ep)}: cannot be imported: {type(exc).__name__}: {first}") from exc
        found[ep.name] = _check(ep, obj)
    return found
