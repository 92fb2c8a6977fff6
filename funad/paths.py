"""Default on-disk locations (overridable by environment) for generated data and compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$FUNAD_CACHE, else ~/.cache/funad-bench: holds the built-in datasets and the native kernels."""
    env = os.environ.get("FUNAD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "funad-bench"


def data_cache(cache: str | os.PathLike[str] | None = None) -> Path:
    """Where built-in datasets are generated: `<cache>/data`, with `cache` = `cache_root()` unless given."""
    return (cache_root() if cache is None else Path(cache).expanduser()) / "data"
