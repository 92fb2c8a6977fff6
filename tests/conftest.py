"""Test-session environment: offline, no Ray telemetry, an isolated cache for generated data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache per test session: built-in datasets are generated once and shared by every test
# (and by the subprocesses the CLI tests start, which inherit the environment).
if "FUNAD_CACHE" not in os.environ:
    os.environ["FUNAD_CACHE"] = tempfile.mkdtemp(prefix="funad-test-cache-")

import pytest  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save things a person should look at (screenshots)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core box: OpenMP spin-waits make 2 threads much slower than 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
