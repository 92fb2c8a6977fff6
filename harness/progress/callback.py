"""The Tune callback: Tune's trial events feed the tracker, the view and live.json (the only part of
harness.progress that knows Ray)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.progress.eta import Tracker
from harness.progress.live import LiveWriter
from harness.progress.views import PlainView, TerminalView


def tune_callback(tracker: Tracker, view: PlainView | TerminalView | None, live: LiveWriter | None,
                  write: Callable[[str], None]) -> Any:
    """The Tune callback that feeds the tracker, redraws the view, keeps live.json current and prints
    one line per finished, failed or retried cell (readable for 1000+ cells, unlike Tune's tables)."""
    from ray import tune

    total = len(tracker.cells)

    def cid_of(trial: Any) -> str:
        return str(trial.config.get("cell_id", trial.trial_id))

    def label(trial: Any) -> str:
        cid = cid_of(trial)
        cell = tracker.cells.get(cid)
        return f"{cid} {cell.label}" if cell is not None else cid

    class Progress(tune.Callback):
        def refresh(self, event: bool = False) -> None:
            """Redraw (the plain view keeps its own interval); live.json on every event."""
            snap = tracker.snapshot()
            if view is not None:
                view.update(snap)
            if live is not None:
                live.write(snap, force=event)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.start(cid_of(trial))
            self.refresh(event=True)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            if isinstance(result.get("epoch"), int | float) and not result.get("done"):
                tracker.epoch(cid_of(trial), int(result["epoch"]))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            wall, pool = result.get("wall_s"), result.get("n_train_pool")
            tracker.finish(cid_of(trial), ok=True, wall_s=wall if isinstance(wall, int | float) else None,
                           pool=int(pool) if isinstance(pool, int | float) else None)
            auroc = result.get("image_auroc")
            score = f" image_auroc={auroc:.3f}" if isinstance(auroc, int | float) else ""
            write(f"[{tracker.snapshot().done}/{total}] ok     {label(trial)}{score}")
            self.refresh(event=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.finish(cid_of(trial), ok=False)
            write(f"[{tracker.snapshot().done}/{total}] FAILED {label(trial)} "
                  f"(error: results/{cid_of(trial)}.parquet)")
            self.refresh(event=True)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            write(f"  retrying {label(trial)}")

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            self.refresh()

    return Progress()
