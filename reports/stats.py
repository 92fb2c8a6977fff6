"""Statistics for comparing method variants: paired tests, critical-difference ranks, robustness, cell noise.

The unit of evidence is a *cell* (dataset, category, method variant, ratio, seed). Two variants are compared
on the (category, seed) cells that both have, at the same dataset, overlap and ratio: the same seed draws the
same contaminated split for every method, so the differences are paired. All tests are scipy's:

* pairwise and robustness: mean of the paired differences, a bootstrap 95 % CI of that mean over the
  matched cells (:func:`scipy.stats.bootstrap`, BCa) and the Wilcoxon signed-rank p-value
  (:func:`scipy.stats.wilcoxon`, zero differences dropped); pairwise p-values also get a Benjamini-Hochberg
  adjustment over the pairs of one dataset × ratio × metric (:func:`scipy.stats.false_discovery_control`);
* critical-difference ranks (Demšar 2006, JMLR 7): per category the mean over seeds, ranks within each
  category (1 = best, ties averaged), the Friedman test (:func:`scipy.stats.friedmanchisquare`, tie-corrected)
  and the Nemenyi critical difference ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with
  ``q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2)``;
* per-cell uncertainty: a percentile bootstrap CI of a cell's image AUROC that resamples its test images
  within each label, so every resample keeps both classes (two-sample :func:`scipy.stats.bootstrap`).

Every random draw is seeded from the key of what it computes, so a report is reproducible and does not depend
on the order of the rows. Where a number cannot be computed the row's ``note`` says why and the number is NaN.
Everything here returns numbers (frames, :class:`RankResult`); their display text is reports.format's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from reports.load import METRICS
from reports.tables import CELL_KEY, KEYS, cell_key, variant_label, with_protocol
from rundir import PROTOCOL_DEFAULTS

ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 9999  # bootstrap of a mean difference over matched cells
CELL_RESAMPLES = 1000  # bootstrap of one cell's AUROC over its test images (only its half-width is shown)
SEED = 2006  # root of every seeded draw in this module
MIN_CELLS = 2
FEW_CELLS = 5  # below this a bootstrap CI over cells is optimistic: said in the note
FRIEDMAN_MIN_K = 3
CHI2_MIN_N = 10  # the Friedman chi-square approximation is rough below this many categories
CD_METRICS: tuple[str, ...] = ("image_auroc", "pixel_auroc")
CELL_METRIC = "image_auroc"  # the metric whose per-cell CI comes from the per-image scores

VARIANT: list[str] = ["method", "config"]
GROUP: list[str] = [k for k in KEYS if k not in VARIANT]  # what two compared variants share
CELL: list[str] = CELL_KEY

NOTE_FEW_MATCHED = "fewer than 2 matched (category, seed) cells: no CI or test"
NOTE_FEW_CELLS = "fewer than 5 matched cells: the bootstrap CI is optimistic"
NOTE_ALL_EQUAL = "all differences equal: the CI is a single point"
NOTE_ALL_ZERO = "all differences are zero: no Wilcoxon test"
NOTE_NO_BASELINE = "no ratio-0 cells of this variant to compare with"
NOTE_ONE_VARIANT = "only one method variant: nothing to rank"
NOTE_FEW_CATEGORIES = "fewer than 2 categories with every variant: no ranks test"
NOTE_FRIEDMAN_K = "Friedman needs at least 3 variants (have 2): CD bars use the Nemenyi CD alone"
NOTE_ALL_TIES = "every variant ties in every category: no Friedman test"
NOTE_NOT_REJECTED = "Friedman does not reject equal ranks at alpha 0.05: no pair differs (one bar joins all)"
NOTE_CHI2_SMALL = "fewer than 10 categories: the Friedman chi-square p-value is approximate"
NOTE_NO_SCORES = "no per-image scores for this cell"
NOTE_ONE_CLASS = "test scores hold fewer than 2 images of a class: no CI"
NOTE_BAD_LABELS = "labels other than 0/1 in the scores"
NOTE_SCORES_DISAGREE = "AUROC of the scores differs from the row's image_auroc"


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from ``key`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(json.dumps([str(k) for k in key]).encode()).digest()
    return np.random.default_rng([SEED, int.from_bytes(digest[:8], "little")])


def _join(notes: list[str]) -> str:
    return "; ".join(dict.fromkeys(n for n in notes if n))


# ------------------------------------------------------------------------------------------- paired tests


def paired_summary(diffs: np.ndarray, key: tuple[object, ...]) -> dict[str, Any]:
    """n, mean, bootstrap CI and Wilcoxon p of paired differences; NaN plus a note where undefined."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    out: dict[str, Any] = {
        "n": len(d),
        "mean_diff": float(d.mean()) if len(d) else math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_wilcoxon": math.nan,
        "note": "",
    }
    if len(d) < MIN_CELLS:
        out["note"] = NOTE_FEW_MATCHED
        return out
    notes = [NOTE_FEW_CELLS if len(d) < FEW_CELLS else ""]
    if np.ptp(d) == 0:
        out["ci_low"] = out["ci_high"] = float(d[0])
        notes.append(NOTE_ALL_EQUAL)
    else:
        res = sps.bootstrap(
            (d,),
            np.mean,
            n_resamples=N_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="BCa",
            vectorized=True,
            rng=rng_for("paired", *key),
        )
        out["ci_low"], out["ci_high"] = (
            float(res.confidence_interval.low),
            float(res.confidence_interval.high),
        )
    if not np.any(d != 0):
        notes.append(NOTE_ALL_ZERO)
    else:
        out["p_wilcoxon"] = float(sps.wilcoxon(d).pvalue)
    out["note"] = _join(notes)
    return out


def _cells(ok: pd.DataFrame, metric: str, cell_ci: pd.DataFrame | None) -> pd.DataFrame:
    """One value per cell (mean if a cell appears twice) and, for the CI metric, its scores' half-width;
    empty when the run has no ok rows."""
    if not len(ok):
        return pd.DataFrame()
    cols = GROUP + VARIANT + cell_key(ok)
    df = with_protocol(ok)[cols + ["cell_id", metric]]
    df[metric] = pd.to_numeric(df[metric], errors="coerce").astype("float64")
    df["hw"] = math.nan
    if metric == CELL_METRIC and cell_ci is not None and len(cell_ci):
        df["hw"] = df["cell_id"].map(cell_ci.set_index("cell_id")["half_width"]).astype("float64")
    df = df[df[metric].notna()]
    return df.groupby(cols, dropna=False, sort=True)[[metric, "hw"]].mean().reset_index()


def _noise(hw_a: np.ndarray, hw_b: np.ndarray) -> float:
    """Typical half-width of one cell's difference: mean over cells of sqrt(hw_a^2 + hw_b^2)."""
    both = np.sqrt(np.asarray(hw_a, float) ** 2 + np.asarray(hw_b, float) ** 2)
    both = both[np.isfinite(both)]
    return float(both.mean()) if len(both) else math.nan


def _noise_cols(row: dict[str, Any], noise: float) -> None:
    row["cell_noise"] = noise
    row["within_cell_noise"] = (
        bool(abs(row["mean_diff"]) < noise) if np.isfinite(noise) and np.isfinite(row["mean_diff"]) else None
    )


PAIRWISE_COLUMNS: list[str] = [
    *GROUP,
    "metric",
    "method_a",
    "config_a",
    "method_b",
    "config_b",
    "variant_a",
    "variant_b",
    "n",
    "mean_a",
    "mean_b",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_wilcoxon",
    "p_fdr",
    "cell_noise",
    "within_cell_noise",
    "note",
]


def pairwise_table(
    ok: pd.DataFrame, cell_ci: pd.DataFrame | None = None, metrics: tuple[str, ...] = METRICS
) -> pd.DataFrame:
    """Every pair of variants per dataset × overlap × ratio × metric: difference a − b over matched cells."""
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        cells = _cells(ok, metric, cell_ci)
        if cells.empty:
            continue
        for gkey, g in cells.groupby(GROUP, dropna=False, sort=True):
            wide = g.set_index(cell_key(g) + VARIANT)[[metric, "hw"]].unstack(VARIANT)
            variants = sorted(wide[metric].columns.tolist())
            vals = wide[metric][variants].to_numpy(dtype=float)
            hws = wide["hw"][variants].to_numpy(dtype=float)
            family: list[int] = []
            for i, va in enumerate(variants):
                for j in range(i + 1, len(variants)):
                    vb = variants[j]
                    both = np.isfinite(vals[:, i]) & np.isfinite(vals[:, j])
                    a, b = vals[both, i], vals[both, j]
                    key = (*gkey, metric, *va, *vb)
                    row = dict(zip(GROUP, gkey, strict=True))
                    row.update(
                        metric=metric,
                        method_a=va[0],
                        config_a=va[1],
                        method_b=vb[0],
                        config_b=vb[1],
                        variant_a=variant_label(va[0], va[1], bool(gkey[1])),
                        variant_b=variant_label(vb[0], vb[1], bool(gkey[1])),
                        mean_a=float(a.mean()) if len(a) else math.nan,
                        mean_b=float(b.mean()) if len(b) else math.nan,
                    )
                    row.update(paired_summary(a - b, key))
                    noise = _noise(hws[both, i], hws[both, j])
                    _noise_cols(row, noise)
                    family.append(len(rows))
                    rows.append(row)
            _fdr([rows[i] for i in family])
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)


def _fdr(rows: list[dict[str, Any]]) -> None:
    """Benjamini-Hochberg adjusted p over one family of pairs (rows without a p stay NaN)."""
    have = [r for r in rows if np.isfinite(r["p_wilcoxon"])]
    for r in rows:
        r["p_fdr"] = math.nan
    if have:
        adj = sps.false_discovery_control([r["p_wilcoxon"] for r in have], method="bh")
        for r, p in zip(have, adj, strict=True):
            r["p_fdr"] = float(p)


# ------------------------------------------------------------------------------------------- robustness

ROBUSTNESS_COLUMNS: list[str] = [
    "dataset",
    "overlap",
    "contamination_source",
    "ratio_of",
    "pool_order",
    "method",
    "config",
    "variant",
    "ratio",
    "count",
    "metric",
    "n",
    "mean_clean",
    "mean_noisy",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_wilcoxon",
    "cell_noise",
    "within_cell_noise",
    "note",
]


def _is_clean(ratio: Any, count: Any) -> bool:
    """The uncontaminated level: ratio 0, or an absolute count of 0 where the run injects counts."""
    if pd.notna(ratio):
        return float(ratio) == 0.0
    return pd.notna(count) and float(count) == 0.0


def robustness_table(
    ok: pd.DataFrame, cell_ci: pd.DataFrame | None = None, metrics: tuple[str, ...] = METRICS
) -> pd.DataFrame:
    """Each variant's change of each metric from ratio 0 to every other ratio, over matched cells."""
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        cells = _cells(ok, metric, cell_ci)
        if cells.empty:
            continue
        protocol = ["contamination_source", "ratio_of", "pool_order"]
        for vkey, g in cells.groupby(["dataset", "overlap", *protocol, *VARIANT], dropna=False, sort=True):
            dataset, overlap, source, ratio_of, pool_order, method, config = vkey
            clean = g[[_is_clean(r, c) for r, c in zip(g["ratio"], g["count"], strict=True)]]
            base = clean.groupby(CELL, dropna=False)[[metric, "hw"]].mean()
            for (ratio, count), level in g.groupby(["ratio", "count"], dropna=False, sort=True):
                if _is_clean(ratio, count):
                    continue
                lvl = level.groupby(CELL, dropna=False)[[metric, "hw"]].mean()
                row: dict[str, Any] = {
                    "dataset": dataset,
                    "overlap": overlap,
                    "contamination_source": source,
                    "ratio_of": ratio_of,
                    "pool_order": pool_order,
                    "method": method,
                    "config": config,
                    "variant": variant_label(method, config, bool(overlap)),
                    "ratio": ratio,
                    "count": count,
                    "metric": metric,
                }
                joined = lvl.join(base, how="inner", suffixes=("_noisy", "_clean"))
                row["mean_clean"] = float(joined[f"{metric}_clean"].mean()) if len(joined) else math.nan
                row["mean_noisy"] = float(joined[f"{metric}_noisy"].mean()) if len(joined) else math.nan
                diffs = (joined[f"{metric}_noisy"] - joined[f"{metric}_clean"]).to_numpy()
                row.update(paired_summary(diffs, ("robust", *vkey, ratio, count, metric)))
                if base.empty:
                    row["note"] = NOTE_NO_BASELINE
                _noise_cols(row, _noise(joined["hw_noisy"].to_numpy(), joined["hw_clean"].to_numpy()))
                rows.append(row)
    return pd.DataFrame(rows, columns=ROBUSTNESS_COLUMNS)


# --------------------------------------------------------------------------------- critical difference


@dataclass
class RankResult:
    """Average ranks of the variants of one dataset × overlap × ratio × metric, with Friedman and Nemenyi."""

    dataset: str
    overlap: bool
    ratio: float
    count: float
    metric: str
    labels: list[str]  # variant labels, best average rank first
    ranks: list[float]
    n_categories: int  # N: complete blocks (categories with every variant)
    friedman_stat: float = math.nan
    friedman_p: float = math.nan
    cd: float = math.nan
    cliques: list[tuple[int, int]] = field(default_factory=list)  # index ranges not significantly different
    note: str = ""
    contamination_source: str = PROTOCOL_DEFAULTS["contamination_source"]
    ratio_of: str = PROTOCOL_DEFAULTS["ratio_of"]
    pool_order: str = PROTOCOL_DEFAULTS["pool_order"]

    @property
    def k(self) -> int:
        """Number of variants ranked."""
        return len(self.labels)


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks for k variants over n blocks (Demšar 2006, eq. 2)."""
    q = sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def cliques(ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs [i, j] of the sorted ranks whose spread is below CD (drawn as one bar each)."""
    out: list[tuple[int, int]] = []
    last = -1
    for i, r in enumerate(ranks):
        j = max(jj for jj in range(i, len(ranks)) if ranks[jj] - r < cd)
        if j > i and j > last:
            out.append((i, j))
        last = max(last, j)
    return out


def rank_test(table: pd.DataFrame, key: dict[str, Any] | None = None) -> RankResult:
    """Ranks, Friedman and CD for a category × variant table of per-category values (higher = better)."""
    key = {"dataset": "", "overlap": False, "ratio": math.nan, "count": math.nan, "metric": "", **(key or {})}
    complete = table.dropna(axis=0, how="any")
    labels = [str(c) for c in table.columns]
    res = RankResult(labels=labels, ranks=[math.nan] * len(labels), n_categories=len(complete), **key)
    dropped = len(table) - len(complete)
    if len(labels) < 2:
        res.note = NOTE_ONE_VARIANT
        return res
    if len(complete) < 2:
        res.note = NOTE_FEW_CATEGORIES
        return res
    values = complete.to_numpy(dtype=float)
    avg = sps.rankdata(-values, axis=1).mean(axis=0)
    order = np.argsort(avg, kind="stable")
    res.labels = [labels[i] for i in order]
    res.ranks = [float(avg[i]) for i in order]
    k, n = len(labels), len(complete)
    res.cd = nemenyi_cd(k, n)
    notes = [
        f"{dropped} categor{'y' if dropped == 1 else 'ies'} without every variant left out" if dropped else ""
    ]
    if np.all(np.ptp(values, axis=1) == 0):
        notes.append(NOTE_ALL_TIES)
        res.cliques = [(0, k - 1)]
    elif k < FRIEDMAN_MIN_K:
        notes.append(NOTE_FRIEDMAN_K)
        res.cliques = cliques(res.ranks, res.cd)
    else:
        fr = sps.friedmanchisquare(*values.T)
        res.friedman_stat, res.friedman_p = float(fr.statistic), float(fr.pvalue)
        if n < CHI2_MIN_N:
            notes.append(NOTE_CHI2_SMALL)
        if res.friedman_p >= ALPHA:
            notes.append(NOTE_NOT_REJECTED)
            res.cliques = [(0, k - 1)]
        else:
            res.cliques = cliques(res.ranks, res.cd)
    res.note = _join(notes)
    return res


def rank_results(ok: pd.DataFrame, metrics: tuple[str, ...] = CD_METRICS) -> list[RankResult]:
    """One :class:`RankResult` per dataset × overlap × ratio × metric (mean over seeds per category first)."""
    out: list[RankResult] = []
    for metric in metrics:
        cells = _cells(ok, metric, None)
        if cells.empty:
            continue
        for gkey, g in cells.groupby(GROUP, dropna=False, sort=True):
            per_cat = g.groupby(["category", *VARIANT], dropna=False)[metric].mean().unstack(VARIANT)
            per_cat = per_cat[sorted(per_cat.columns.tolist())]
            per_cat.columns = [variant_label(m, c, bool(gkey[1])) for m, c in per_cat.columns]
            out.append(rank_test(per_cat, dict(zip(GROUP, gkey, strict=True)) | {"metric": metric}))
    return out


RANK_COLUMNS: list[str] = [
    *GROUP,
    "metric",
    "variant",
    "avg_rank",
    "k",
    "n_categories",
    "friedman_stat",
    "friedman_p",
    "cd",
    "groups",
    "note",
]


def rank_table(results: list[RankResult]) -> pd.DataFrame:
    """Long table of the rank results: one row per variant; ``groups`` lists the bars it belongs to."""
    rows = []
    for r in results:
        for i, (label, rank) in enumerate(zip(r.labels, r.ranks, strict=True)):
            bars = [str(b + 1) for b, (lo, hi) in enumerate(r.cliques) if lo <= i <= hi]
            rows.append(
                {
                    "dataset": r.dataset,
                    "overlap": r.overlap,
                    "contamination_source": r.contamination_source,
                    "ratio_of": r.ratio_of,
                    "pool_order": r.pool_order,
                    "ratio": r.ratio,
                    "count": r.count,
                    "metric": r.metric,
                    "variant": label,
                    "avg_rank": rank,
                    "k": r.k,
                    "n_categories": r.n_categories,
                    "friedman_stat": r.friedman_stat,
                    "friedman_p": r.friedman_p,
                    "cd": r.cd,
                    "groups": ",".join(bars),
                    "note": r.note,
                }
            )
    return pd.DataFrame(rows, columns=RANK_COLUMNS)


# ----------------------------------------------------------------------------------- per-cell uncertainty


def pair_wins(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """1 where a positive outscores a negative, 0.5 on a tie, else 0 (n_pos x n_neg): AUROC is its mean."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return (pos > neg) + 0.5 * (pos == neg)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC of positive vs negative scores (the Mann-Whitney U over n_pos * n_neg; ties count one half)."""
    return float(pair_wins(pos, neg).mean())


def _resampled_auroc(wins: np.ndarray) -> Callable[..., np.ndarray]:
    """Batched AUROC of resampled image *indices*: with multiplicities c_pos, c_neg of each image in a draw,
    AUROC = c_pos @ wins @ c_neg / (n_pos n_neg), one matrix product for all draws instead of a sort each."""
    n_pos, n_neg = wins.shape

    def counts(idx: np.ndarray, n: int) -> np.ndarray:
        flat = idx.reshape(-1, n).astype(np.intp)
        offset = n * np.arange(len(flat))[:, None]
        return np.bincount((flat + offset).ravel(), minlength=flat.size).reshape(-1, n).astype(float)

    def stat(ip: np.ndarray, ineg: np.ndarray, axis: int = -1) -> np.ndarray:  # scipy resamples the last axis
        shape = np.shape(ip)[:-1]
        c_pos, c_neg = counts(np.asarray(ip), n_pos), counts(np.asarray(ineg), n_neg)
        return (np.einsum("bj,bj->b", c_pos @ wins, c_neg) / (n_pos * n_neg)).reshape(shape)

    return stat


CELL_CI_COLUMNS: list[str] = [
    "cell_id",
    "n_pos",
    "n_neg",
    "auroc_scores",
    "ci_low",
    "ci_high",
    "half_width",
    "note",
]


def auroc_ci(labels: np.ndarray, scores: np.ndarray, key: str) -> dict[str, Any]:
    """Percentile bootstrap CI of one cell's AUROC, resampling images within each label."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    keep = np.isfinite(scores) & pd.notna(labels)
    labels, scores = labels[keep], scores[keep]
    out: dict[str, Any] = {"cell_id": key, "n_pos": 0, "n_neg": 0, "auroc_scores": math.nan}
    out.update(ci_low=math.nan, ci_high=math.nan, half_width=math.nan, note="")
    if not np.isin(labels, (0, 1)).all():
        out["note"] = NOTE_BAD_LABELS
        return out
    pos, neg = scores[labels == 1], scores[labels == 0]
    out["n_pos"], out["n_neg"] = len(pos), len(neg)
    if len(pos) and len(neg):
        out["auroc_scores"] = auroc(pos, neg)
    if len(pos) < 2 or len(neg) < 2:
        out["note"] = NOTE_ONE_CLASS
        return out
    wins = pair_wins(pos, neg)
    res = sps.bootstrap(
        (np.arange(len(pos)), np.arange(len(neg))),
        _resampled_auroc(wins),
        n_resamples=CELL_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        rng=rng_for("cell", key),
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    out.update(ci_low=lo, ci_high=hi, half_width=(hi - lo) / 2.0)
    return out


def ok_cell_ids(ok: pd.DataFrame) -> list[str]:
    """The cells whose per-image scores :func:`cell_uncertainty` needs (``scores/<cell_id>.parquet``)."""
    return [str(c) for c in ok["cell_id"].dropna().unique()] if len(ok) else []


def cell_uncertainty(ok: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per-cell AUROC CIs of the ok cells from their per-image scores (label and score only)."""
    ids = ok_cell_ids(ok)
    if not ids:
        return pd.DataFrame(columns=CELL_CI_COLUMNS)
    grouped = (
        dict(tuple(scores.groupby("cell_id", sort=False)))
        if {"cell_id", "label", "score"} <= set(scores.columns)
        else {}
    )
    stored = ok.drop_duplicates("cell_id").set_index("cell_id")[CELL_METRIC]
    rows = []
    for cid in ids:
        sc = grouped.get(cid)
        if sc is None or sc.empty:
            rows.append({"cell_id": cid, "n_pos": 0, "n_neg": 0, "note": NOTE_NO_SCORES})
            continue
        row = auroc_ci(sc["label"].to_numpy(), pd.to_numeric(sc["score"], errors="coerce").to_numpy(), cid)
        want = stored.get(cid)
        if pd.notna(want) and np.isfinite(row["auroc_scores"]) and abs(row["auroc_scores"] - want) > 1e-6:
            row["note"] = _join([row["note"], NOTE_SCORES_DISAGREE])
        rows.append(row)
    return pd.DataFrame(rows, columns=CELL_CI_COLUMNS)


def category_cell_ci(cat: pd.DataFrame, ok: pd.DataFrame, cell_ci: pd.DataFrame) -> pd.Series:
    """Per row of the per-category table: the mean over its seeds of the cells' AUROC CI half-width."""
    keys = KEYS[:2] + ["category"] + KEYS[2:]  # the per-category table's keys
    if cat.empty or ok.empty or cell_ci.empty:
        return pd.Series(math.nan, index=cat.index, dtype="float64")
    hw = ok[keys + ["cell_id"]].copy()
    hw["hw"] = hw["cell_id"].map(cell_ci.set_index("cell_id")["half_width"]).astype("float64")
    per_row = hw.groupby(keys, dropna=False)["hw"].mean().rename("_hw").reset_index()
    merged = cat[keys].merge(per_row, on=keys, how="left")
    return pd.Series(merged["_hw"].to_numpy(), index=cat.index, dtype="float64")


__all__ = [
    "ALPHA",
    "CD_METRICS",
    "CELL_METRIC",
    "RankResult",
    "auroc",
    "auroc_ci",
    "category_cell_ci",
    "cell_uncertainty",
    "cliques",
    "nemenyi_cd",
    "ok_cell_ids",
    "pair_wins",
    "paired_summary",
    "pairwise_table",
    "rank_results",
    "rank_table",
    "rank_test",
    "robustness_table",
]
