"""A method plugin that misbehaves on purpose, for the fault tests only (never installed in the venv).

Which fault a cell gets is a pure function of its category, its seed and the `fault_seed` setting
(`fault_of`), so a test knows beforehand which cells must end `ok` and which `failed`. How often the
cell has started before is read from the event log in `marker_dir` (one JSON line per fit start and
per finished score, appended with one write each), so a fault survives worker kills and driver
restarts: a transient fault fails the first `transient_failures` starts of its cell, a kill fault
SIGKILLs its worker on the first start, a permanent fault raises on every start.

The scoring itself is a plain distance to the pool's mean patch: cheap, deterministic and finite, so
the harness around it (rows, retries, resume, report) is what a test exercises.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from funad.features import FeatureSet
from funad.methods import FitContext, Method, MethodSettings, Scores

NAME = "faulty"
EVENTS = "events.log"
FAULT_KINDS = ("transient", "permanent", "kill")


class FaultySettings(MethodSettings):
    marker_dir: str = Field("", description="event log folder; empty = no faults and no log")
    p_transient: float = Field(0.0, ge=0.0, le=1.0)
    transient_failures: int = Field(1, ge=1, description="starts that fail before a transient cell succeeds")
    p_permanent: float = Field(0.0, ge=0.0, le=1.0)
    p_kill: float = Field(0.0, ge=0.0, le=1.0)
    fault_seed: int = Field(0, ge=0)
    sleep_s: float = Field(0.0, ge=0.0, description="how long each fit takes")


def cell_key(category: str, seed: int) -> str:
    return f"{category}:{seed}"


def fault_of(category: str, seed: int, s: FaultySettings) -> str | None:
    """The fault of cell (category, seed): None, or one of FAULT_KINDS (seeded, order-free)."""
    u = random.Random(f"{s.fault_seed}/{cell_key(category, seed)}").random()
    for kind, p in (("transient", s.p_transient), ("permanent", s.p_permanent), ("kill", s.p_kill)):
        if u < p:
            return kind
        u -= p
    return None


def read_events(marker_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(marker_dir) / EVENTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(marker_dir: str, event: dict[str, Any]) -> None:
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(Path(marker_dir) / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one small O_APPEND write: lines of concurrent trials never interleave
    finally:
        os.close(fd)


def _ray_node() -> str:
    """The Ray node this runs on ("" outside Ray): one host's simulated nodes share a host name."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:
        return ""


@dataclass
class Faulty(Method):
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[MethodSettings]] = FaultySettings
    diagnostic_names: ClassVar[tuple[str, ...]] = ("starts",)

    _mean: np.ndarray | None = None
    _key: str = ""
    _start: int = 0

    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        s: FaultySettings = self.settings  # type: ignore[assignment]
        category = train.image_ids[0].split("/", 1)[0]
        self._key = cell_key(category, ctx.seed)
        if s.marker_dir:
            Path(s.marker_dir).mkdir(parents=True, exist_ok=True)
            events = read_events(s.marker_dir)
            self._start = 1 + sum(e["key"] == self._key and e["event"] == "start" for e in events)
            _append(s.marker_dir, {"event": "start", "key": self._key, "start": self._start, "t": time.time(),
                                   "pid": os.getpid(), "node": _ray_node()})
            kind = fault_of(category, ctx.seed, s)
            if kind == "kill" and self._start == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer: no cleanup, no row
            if kind == "permanent" or (kind == "transient" and self._start <= s.transient_failures):
                raise RuntimeError(f"faulty: injected {kind} fault in {self._key} (start {self._start})")
        if s.sleep_s:
            time.sleep(s.sleep_s)
        patches = np.asarray(train.patches, dtype=np.float32)
        self._mean = patches.reshape(-1, patches.shape[-1]).mean(axis=0)
        self.diagnostics = {"starts": float(self._start)}

    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        s: FaultySettings = self.settings  # type: ignore[assignment]
        assert self._mean is not None, "fit first"
        patches = np.asarray(test.patches, dtype=np.float32)
        dist = np.linalg.norm(patches - self._mean, axis=-1)  # [N, H, W]
        h, w = dist.shape[1:]
        rows = np.arange(ctx.map_size) * h // ctx.map_size
        cols = np.arange(ctx.map_size) * w // ctx.map_size
        maps = dist[:, rows][:, :, cols].astype(np.float32)
        if s.marker_dir:
            _append(s.marker_dir, {"event": "end", "key": self._key, "start": self._start, "t": time.time(),
                                   "pid": os.getpid(), "node": _ray_node()})
        return Scores(dist.reshape(len(dist), -1).max(axis=1).astype(np.float32), maps)
