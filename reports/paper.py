"""Published reference numbers (reports/paper_reference.csv) and the "ours vs paper" join.

The CSV holds one value per row (in %, as the papers print them) with its source and protocol. ``count`` is
set instead of ``ratio`` for the InReaCh table, which injects an absolute number of images per category,
drawn from the whole test set (``contamination_source`` all_test), with overlap. A reference row meets
only our cells of the same protocol: dataset, method, ratio or count, overlap, contamination source and
ratio definition (``ratio_of``). All rows are second-hand transcriptions: the note column says so and the
report repeats it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from rundir import PROTOCOL_DEFAULTS

REFERENCE_CSV = Path(__file__).with_name("paper_reference.csv")
REFERENCE_COLUMNS = [
    "dataset",
    "method",
    "ratio",
    "count",
    "overlap",
    "contamination_source",
    "ratio_of",
    "metric",
    "value",
    "source",
    "protocol",
    "note",
]
#: the protocol of a result row (or reference row) that does not name it: today's default split rule
DEFAULT_PROTOCOL = {k: PROTOCOL_DEFAULTS[k] for k in ("contamination_source", "ratio_of")}
_ALIASES = {"mvtecad": "mvtec", "mvtec": "mvtec", "visa": "visa", "fun-ad": "funad", "funad": "funad"}


def normalise(name: object) -> str:
    """Loose key for names: 'MVTec AD' == 'mvtec' == 'mvtec_ad'; 'FUN-AD' == 'funad'."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return _ALIASES.get(key, key)


def load_reference(path: Path | None = None) -> pd.DataFrame:
    """The reference table with typed columns (ratio/count NaN where not used)."""
    df = pd.read_csv(path or REFERENCE_CSV)
    for c in REFERENCE_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df["ratio"] = pd.to_numeric(df["ratio"], errors="coerce")
    df["count"] = pd.to_numeric(df["count"], errors="coerce")
    df["overlap"] = df["overlap"].astype(str).str.lower().isin(["true", "1", "yes"])
    df["contamination_source"] = df["contamination_source"].fillna(DEFAULT_PROTOCOL["contamination_source"])
    df["ratio_of"] = df["ratio_of"].fillna(DEFAULT_PROTOCOL["ratio_of"])
    return df[REFERENCE_COLUMNS]


def _matches(ref: pd.Series, ours: pd.DataFrame) -> pd.Series:
    """Which of our main-table groups answer the reference row's protocol.

    With nothing injected (ratio 0 or count 0) overlap makes no difference, so it is not required to match.
    """
    same = (ours["_ds"] == normalise(ref["dataset"])) & (ours["_m"] == normalise(ref["method"]))
    clean = (pd.notna(ref["ratio"]) and ref["ratio"] == 0) or (pd.notna(ref["count"]) and ref["count"] == 0)
    if pd.notna(ref["ratio"]):
        amount = ours["count"].isna() & np.isclose(ours["ratio"].astype(float).fillna(-1), ref["ratio"])
    else:
        amount = np.isclose(ours["count"].astype(float).fillna(-1), ref["count"])
    if clean:
        amount = amount | (
            np.isclose(ours["ratio"].astype(float).fillna(-1), 0.0)
            | np.isclose(ours["count"].astype(float).fillna(-1), 0.0)
        )
        return same & amount
    protocol = ours["overlap"].astype(bool) == bool(ref["overlap"])
    for key, default in DEFAULT_PROTOCOL.items():
        if key == "ratio_of" and pd.isna(ref["ratio"]):
            continue  # a count means the same whatever a ratio would be a share of
        have = ours[key].fillna(default) if key in ours.columns else pd.Series(default, index=ours.index)
        protocol &= have.astype(str) == str(ref[key])
    return same & amount & protocol


def paper_table(
    main: pd.DataFrame, reference: pd.DataFrame | None = None,
    settings: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """(c) every reference row, joined to each of our matching cell groups; diff = ours − paper in %-points.

    ``main`` is :func:`reports.tables.main_table` (metrics in [0, 1]); rows without a match say
    "no matching cells". ``settings``: (method, config) -> whether those cells ran the paper's settings or
    the authors' released code's (reports.tables.settings_of), shown per row.
    """
    settings = settings or {}
    ref = load_reference() if reference is None else reference
    ours = main.copy()
    ours["_ds"] = ours["dataset"].map(normalise) if len(ours) else pd.Series(dtype=str)
    ours["_m"] = ours["method"].map(normalise) if len(ours) else pd.Series(dtype=str)
    rows = []
    for _, r in ref.iterrows():
        base = {c: r[c] for c in REFERENCE_COLUMNS}
        base["paper"] = base.pop("value")
        hit = ours[_matches(r, ours)] if len(ours) else ours
        metric = str(r["metric"])
        if hit.empty or f"{metric}_mean" not in hit.columns:
            rows.append(
                {
                    **base,
                    "config": "",
                    "settings": "",
                    "ours": np.nan,
                    "ours_std": np.nan,
                    "n": np.nan,
                    "n_categories": np.nan,
                    "diff_pp": np.nan,
                    "status": "no matching cells",
                }
            )
            continue
        for _, h in hit.iterrows():
            mean = h[f"{metric}_mean"]
            ours_pct = 100 * float(mean) if pd.notna(mean) else np.nan
            rows.append(
                {
                    **base,
                    "config": h["config"],
                    "settings": settings.get((str(h["method"]), str(h["config"])), "paper"),
                    "ours": ours_pct,
                    "ours_std": 100 * float(h[f"{metric}_std"]) if pd.notna(h[f"{metric}_std"]) else np.nan,
                    "n": h["n"],
                    "n_categories": h["n_categories"],
                    "diff_pp": ours_pct - float(r["value"]) if pd.notna(ours_pct) else np.nan,
                    "status": "matched" if pd.notna(ours_pct) else "metric missing in our cells",
                }
            )
    cols = [
        "dataset",
        "method",
        "ratio",
        "count",
        "overlap",
        "contamination_source",
        "ratio_of",
        "metric",
        "paper",
        "ours",
        "ours_std",
        "diff_pp",
        "n",
        "n_categories",
        "config",
        "settings",
        "status",
        "source",
        "protocol",
        "note",
    ]
    return pd.DataFrame(rows, columns=cols)
