"""The report's training-dynamics section shows one-pass methods' end-of-fit diagnostics per cell."""

from __future__ import annotations

import pandas as pd

from reports.plots import diagnostic_plots


def test_one_pass_diagnostics_against_the_injected_share() -> None:
    ok = pd.DataFrame({
        "method": ["inreach"] * 4 + ["funad"] * 2,
        "category": ["brick", "brick", "grass", "grass", "brick", "grass"],
        "n_injected": [0, 10, 0, 12, 0, 10], "n_train_pool": [50, 60, 50, 62, 50, 60],
        "diag_memory_injected_frac": [0.0, 0.01, 0.0, 0.02, None, None],
        "diag_memory_size": [1000.0, 1100.0, 900.0, 950.0, None, None],
        "diag_pl_precision": [None, None, None, None, 0.5, 0.6],
    })
    history = pd.DataFrame({"method": ["funad", "funad", "inreach"], "epoch": [1, 2, 0]})
    plots = diagnostic_plots(ok, history)
    assert len(plots) == 1  # FUN-AD is drawn per epoch elsewhere
    fig = plots[0].figure
    assert "inreach" in plots[0].title
    titles = {a.text for a in fig.layout.annotations}
    assert {"memory_injected_frac", "memory_size"} <= titles and "pl_precision" not in titles
    points = [t for t in fig.data if t.mode == "markers"]
    xs = sorted(x for t in points for x in t.x if x == x)
    assert xs[-1] == 12 / 62 and xs[0] == 0.0
    assert any(t.name == "by chance" for t in fig.data)  # the diagonal next to the injected share
