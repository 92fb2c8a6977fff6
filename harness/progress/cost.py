"""What a cell is expected to cost: each method's own hook (`Method.cost`, `Method.epochs`) before it
runs, and seconds per (unit x pool image) learnt from the cells that finished.

A cell costs `units` (its method's cost hook: epochs for FUN-AD, 1 for one-pass methods) x its training
pool; the model learns seconds per unit and pool image per (method, dataset) from the cells finished so
far (median, so one slow straggler does not swing it), and falls back to the method's, then to every
method's rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CellInfo:
    """What the progress view needs to know of a cell before it runs."""

    cell_id: str
    method: str
    dataset: str
    category: str
    units: float = 1.0  # the method's cost hook (epochs for FUN-AD)
    epochs: int | None = None  # what per-epoch reports count up to; None for one-pass methods
    label: str = ""



class CostModel:
    """Seconds per (unit x pool image), learnt per (method, dataset) from finished cells."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], list[float]] = {}
        self._pools: dict[tuple[str, str], int] = {}

    def observe(self, cell: CellInfo, wall_s: float, pool: int | None) -> None:
        if pool:
            self._pools[(cell.dataset, cell.category)] = int(pool)
        size = self.pool(cell)
        if wall_s > 0 and size:
            self._rates.setdefault((cell.method, cell.dataset), []).append(wall_s / (cell.units * size))

    def pool(self, cell: CellInfo) -> int | None:
        """The category's pool size once a cell of it finished, else the dataset's (then all) mean."""
        if (cell.dataset, cell.category) in self._pools:
            return self._pools[(cell.dataset, cell.category)]
        same = [p for (d, _), p in self._pools.items() if d == cell.dataset] or list(self._pools.values())
        return round(statistics.fmean(same)) if same else None

    def rate(self, cell: CellInfo) -> float | None:
        for pick in (
            lambda k: k == (cell.method, cell.dataset),
            lambda k: k[0] == cell.method,
            lambda k: True,
        ):
            values = [r for key, rates in self._rates.items() if pick(key) for r in rates]
            if values:
                return statistics.median(values)
        return None

    def predict(self, cell: CellInfo) -> float | None:
        rate, size = self.rate(cell), self.pool(cell)
        return None if rate is None or size is None else rate * cell.units * size



def method_units(cell: Any) -> float:
    """A cell's expected cost in its method's units (`Method.cost(settings)`: epochs for FUN-AD)."""
    from funad.methods import method_class

    return float(method_class(cell.config.method).cost(cell.config.settings))


def launch_order(cells: Iterable[Any]) -> list[str]:
    """Cell ids, the expected-longest first (then by id, so the order is reproducible).

    Starting the long cells first keeps the last minutes of a sweep from running one long cell while
    the other slots idle.
    """
    return [c.cell_id for c in sorted(cells, key=lambda c: (-method_units(c), c.cell_id))]


def cell_infos(cells: Iterable[Any], order: Iterable[str]) -> list[CellInfo]:
    """CellInfo of the sweep's cells (harness.cells.Cell), in launch order, from the methods' hooks."""
    from funad.methods import method_class

    by_id = {c.cell_id: c for c in cells}
    out = []
    for cid in order:
        cfg = by_id[cid].config
        cls = method_class(cfg.method)
        hp = " ".join(f"{k}={v}" for k, v in sorted(by_id[cid].hp.items()))
        label = f"{cfg.dataset['kind']}/{cfg.category} {cfg.method} seed={cfg.seed} {hp}".rstrip()
        out.append(CellInfo(cid, cfg.method, cfg.dataset["kind"], cfg.category,
                            units=method_units(by_id[cid]), epochs=cls.epochs(cfg.settings), label=label))
    return out
