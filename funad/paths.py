"""Default on-disk locations (overridable by environment) for generated data and feature caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$FUNAD_CACHE, else ~/.cache/funad-bench. Holds the built-in datasets and a default feature cache."""
    env = os.environ.get("FUNAD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "funad-bench"


def data_cache() -> Path:
    return cache_root() / "data"


def feature_cache() -> Path:
    return cache_root() / "features"
