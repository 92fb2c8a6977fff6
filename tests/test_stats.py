"""Report statistics against independent truth: a hand-computed Wilcoxon, Demšar's (2006) Friedman/Nemenyi
example, bootstrap coverage, DeLong's AUROC variance, the "says why" cases and a fixture run's CSV files."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from report_fixtures import make_run_dir
from scipy.stats import wilcoxon
from sklearn.metrics import roc_auc_score

from reports import stats as S
from reports.build import build_report

METRICS = ["image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max"]


def _ok(values: dict[str, list[float]], ratio: float = 0.0, dataset: str = "d") -> pd.DataFrame:
    """Ok rows of one dataset × ratio: ``values[method][i]`` = image_auroc of cell (category i, seed 0)."""
    rows = []
    for method, vals in values.items():
        for i, v in enumerate(vals):
            rows.append(
                {
                    "cell_id": f"{method}-{ratio}-{i}",
                    "dataset": dataset,
                    "overlap": False,
                    "ratio": ratio,
                    "count": math.nan,
                    "method": method,
                    "config": "",
                    "category": f"c{i}",
                    "seed": 0,
                    **{m: (v if m == "image_auroc" else math.nan) for m in METRICS},
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ Wilcoxon


def test_wilcoxon_hand_computed() -> None:
    # d = a - b = 0.005, 0.010, ..., 0.025, -0.030: ranks 1..6, the only negative has rank 6, so W- = 6.
    # Under H0 each of the 2^6 sign patterns is equally likely; subsets of {1..6} with sum <= 6:
    # {}, {1}, {2}, {3}, {1,2}, {4}, {1,3}, {5}, {1,4}, {2,3}, {6}, {1,5}, {2,4}, {1,2,3} = 14,
    # so the exact two-sided p = 2 * 14 / 64 = 0.4375.
    b = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85]
    d = [0.005, 0.010, 0.015, 0.020, 0.025, -0.030]
    ok = _ok({"a": [x + y for x, y in zip(b, d, strict=True)], "b": b})
    table = S.pairwise_table(ok, metrics=("image_auroc",))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n"] == 6 and row["note"] == ""
    assert row["p_wilcoxon"] == pytest.approx(0.4375)
    brute = sum(
        1
        for signs in itertools.product((0, 1), repeat=6)
        if sum(r for r, s in zip(range(1, 7), signs, strict=True) if s) <= 6
    )
    assert 2 * brute / 64 == pytest.approx(row["p_wilcoxon"])
    assert row["mean_diff"] == pytest.approx(np.mean(d))
    assert row["ci_low"] < row["mean_diff"] < row["ci_high"]
    assert row["variant_a"] == "a" and row["variant_b"] == "b"


# ---------------------------------------------------------------------------------- Friedman and Nemenyi

# Demšar (2006), JMLR 7, Table 6: AUC of C4.5 with four settings on 14 data sets. The printed table rounds
# voting's C4.5+cf and C4.5+m+cf both to 0.975 but ranks them 2 and 3 (the unrounded cf was ahead), so
# 0.9751 reproduces the paper's ranks.
DEMSAR = pd.DataFrame(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.654, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.9751, 0.975],
        [0.957, 0.978, 0.946, 0.970],
    ],
    columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"],
)


def test_demsar_friedman_nemenyi() -> None:
    res = S.rank_test(DEMSAR)
    ranks = dict(zip(res.labels, res.ranks, strict=True))
    # the paper's average ranks
    for name, want in {"C4.5": 3.143, "C4.5+m": 2.000, "C4.5+cf": 2.893, "C4.5+m+cf": 1.964}.items():
        assert ranks[name] == pytest.approx(want, abs=5e-4)
    assert res.labels[0] == "C4.5+m+cf" and res.k == 4 and res.n_categories == 14
    # the paper's chi2_F = 9.28 (no tie correction) from the ranks
    n, k = 14, 4
    chi2_f = 12 * n / (k * (k + 1)) * (sum(r * r for r in res.ranks) - k * (k + 1) ** 2 / 4)
    assert chi2_f == pytest.approx(9.28, abs=0.005)
    # scipy corrects for ties: iris, lung cancer, primary tumor (pairs, t^3 - t = 6 each), mushroom (all 4,
    # 60): C = 1 - 78 / (N k (k^2 - 1)) = 1 - 78 / 840
    assert res.friedman_stat == pytest.approx(chi2_f / (1 - 78 / 840), rel=1e-9)
    assert res.friedman_p < 0.05
    # the paper's q_0.05 = 2.569 for k = 4 and CD = 1.25
    assert res.cd == pytest.approx(2.569 * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    assert round(res.cd, 2) == 1.25
    # 3.143 - 1.964 = 1.179 < CD: Nemenyi finds no pair different at 0.05 (the paper's conclusion), one bar
    assert res.cliques == [(0, 3)]
    assert "fewer than 10" not in res.note


def test_cliques_are_maximal_runs_below_cd() -> None:
    ranks = [1.0, 1.5, 2.4, 3.0, 4.1]
    got = S.cliques(ranks, 1.0)
    # brute force: every maximal [i, j] with spread < CD
    runs = [(i, j) for i in range(5) for j in range(i + 1, 5) if ranks[j] - ranks[i] < 1.0]
    maximal = [r for r in runs if not any(o != r and o[0] <= r[0] and r[1] <= o[1] for o in runs)]
    assert got == maximal == [(0, 1), (1, 2), (2, 3)]


# ------------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_covers_true_mean() -> None:
    # Beta(8, 2) (mean 0.8, skewed like AUROCs), 40 cells, 100 seeded repetitions of the 95 % CI
    hits = 0
    for rep in range(100):
        x = np.random.default_rng(rep).beta(8, 2, size=40)
        r = S.paired_summary(x, ("coverage", rep))
        hits += r["ci_low"] <= 0.8 <= r["ci_high"]
    assert hits >= 93


def test_bootstrap_is_reproducible() -> None:
    x = np.random.default_rng(5).normal(size=12)
    assert S.paired_summary(x, ("k",)) == S.paired_summary(x.copy(), ("k",))
    assert S.paired_summary(x, ("k",))["ci_low"] != S.paired_summary(x, ("other",))["ci_low"]


def _delong_se(pos: np.ndarray, neg: np.ndarray) -> float:
    """DeLong's standard error of the AUROC by brute force over all (positive, negative) pairs."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


def test_cell_auroc_ci_against_sklearn_and_delong() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 150), rng.normal(0.0, 1.0, 150)
    labels = np.r_[np.ones(150, int), np.zeros(150, int)]
    scores = np.r_[pos, neg]
    out = S.auroc_ci(labels, scores, "cell")
    assert out["auroc_scores"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["ci_low"] < out["auroc_scores"] < out["ci_high"]
    assert out["half_width"] == pytest.approx(1.96 * _delong_se(pos, neg), rel=0.15)
    assert (out["n_pos"], out["n_neg"], out["note"]) == (150, 150, "")
    # ties count one half, as in sklearn
    tied = np.round(scores, 0)
    assert S.auroc_ci(labels, tied, "t")["auroc_scores"] == pytest.approx(roc_auc_score(labels, tied))


def test_cell_ci_resamples_within_labels() -> None:
    # 2 positives, 30 negatives: unstratified resamples would often hold no positive at all (p = (30/32)^32
    # = 0.13) and break; stratified ones always hold 2, so every resample has an AUROC and the CI exists
    labels = np.r_[np.ones(2, int), np.zeros(30, int)]
    scores = np.r_[[0.9, 0.2], np.linspace(0.0, 0.8, 30)]
    out = S.auroc_ci(labels, scores, "rare")
    assert np.isfinite(out["ci_low"]) and out["note"] == ""
    # the only values a resample can take: both positives drawn from {0.9, 0.2} against resampled negatives
    assert 0.0 <= out["ci_low"] <= out["auroc_scores"] <= out["ci_high"] <= 1.0


# ------------------------------------------------------------------------------------------ says why


def test_notes_instead_of_numbers() -> None:
    one = S.paired_summary(np.array([0.1]), ("x",))
    assert one["note"] == S.NOTE_FEW_MATCHED and math.isnan(one["ci_low"]) and math.isnan(one["p_wilcoxon"])
    zero = S.paired_summary(np.zeros(6), ("x",))
    assert math.isnan(zero["p_wilcoxon"]) and zero["ci_low"] == zero["ci_high"] == 0.0
    assert S.NOTE_ALL_ZERO in zero["note"] and S.NOTE_ALL_EQUAL in zero["note"]
    few = S.paired_summary(np.array([0.1, 0.2, 0.3]), ("x",))
    assert S.NOTE_FEW_CELLS in few["note"] and np.isfinite(few["ci_low"])

    two = S.rank_test(DEMSAR[["C4.5", "C4.5+m"]])
    assert two.note.startswith(S.NOTE_FRIEDMAN_K) and math.isnan(two.friedman_p)
    # by hand: C4.5 wins 2 data sets (breast cancer, iris), ties 2 (lung cancer, mushroom), loses 10
    assert dict(zip(two.labels, two.ranks, strict=True)) == pytest.approx(
        {"C4.5": (2 * 1 + 2 * 1.5 + 10 * 2) / 14, "C4.5+m": (10 * 1 + 2 * 1.5 + 2 * 2) / 14}
    )
    assert np.isfinite(two.cd)
    assert S.rank_test(DEMSAR.iloc[:1]).note == S.NOTE_FEW_CATEGORIES
    assert S.rank_test(DEMSAR[["C4.5"]]).note == S.NOTE_ONE_VARIANT
    ties = S.rank_test(pd.DataFrame({"a": [0.5, 0.7], "b": [0.5, 0.7], "c": [0.5, 0.7]}))
    assert S.NOTE_ALL_TIES in ties.note and math.isnan(ties.friedman_stat)
    flat = S.rank_test(pd.DataFrame({"a": [0.9, 0.1, 0.5], "b": [0.1, 0.9, 0.6], "c": [0.5, 0.5, 0.1]}))
    assert S.NOTE_NOT_REJECTED in flat.note and flat.cliques == [(0, 2)]
    holes = DEMSAR.copy()
    holes.iloc[0, 1] = np.nan
    assert (
        holes.pipe(S.rank_test).n_categories == 13
        and "1 category without every variant" in S.rank_test(holes).note
    )

    single = _ok({"a": [0.9], "b": [0.8]})
    row = S.pairwise_table(single, metrics=("image_auroc",)).iloc[0]
    assert row["note"] == S.NOTE_FEW_MATCHED and math.isnan(row["p_wilcoxon"])
    noisy_only = _ok({"a": [0.9, 0.8, 0.7]}, ratio=0.1)
    rob = S.robustness_table(noisy_only, metrics=("image_auroc",))
    assert list(rob["note"]) == [S.NOTE_NO_BASELINE] and rob["mean_diff"].isna().all()

    assert S.auroc_ci(np.array([1, 1, 0]), np.array([0.3, 0.2, 0.1]), "c")["note"] == S.NOTE_ONE_CLASS
    assert S.auroc_ci(np.array([2, 1, 0]), np.array([0.3, 0.2, 0.1]), "c")["note"] == S.NOTE_BAD_LABELS


def test_within_cell_noise_flag() -> None:
    base = [0.80, 0.82, 0.84, 0.86]
    small = _ok({"a": [x + 0.01 for x in base], "b": base})
    big = _ok({"a": [x + 0.2 for x in base], "b": base})
    for ok, within in ((small, True), (big, False)):
        ci = pd.DataFrame({"cell_id": ok["cell_id"], "half_width": 0.05})
        row = S.pairwise_table(ok, ci, metrics=("image_auroc",)).iloc[0]
        assert row["cell_noise"] == pytest.approx(math.sqrt(0.05**2 + 0.05**2))
        assert row["within_cell_noise"] == within and pd.notna(row["within_cell_noise"])
    row = S.pairwise_table(small, None, metrics=("image_auroc",)).iloc[0]
    assert row["within_cell_noise"] is None and math.isnan(row["cell_noise"])


# ------------------------------------------------------------------------------------ CSVs of a fixture run


@pytest.fixture(scope="module")
def run_tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = make_run_dir(tmp_path_factory.mktemp("stats"))
    report = build_report(run)
    return run, report.parent / "report_tables"


def _parquet_rows(run: Path) -> pd.DataFrame:
    """Ok result rows straight from the Parquet files; the variant is its params JSON."""
    df = pd.concat([pq.read_table(p).to_pandas() for p in sorted((run / "results").glob("*.parquet"))])
    return df[df["status"] == "ok"].reset_index(drop=True)


def _variant(df: pd.DataFrame) -> pd.Series:
    """'funad [keep_ratio=0.25]' style labels from method + params JSON (the report's variant labels)."""
    swept = {"funad": "keep_ratio"}
    return pd.Series(
        [
            f"{m} [{swept[m]}={json.loads(p)[swept[m]]:g}]" if m in swept else m
            for m, p in zip(df["method"], df["params"], strict=True)
        ],
        index=df.index,
    )


def test_pairwise_and_robustness_csv_match_parquet(run_tables: tuple[Path, Path]) -> None:
    run, tables = run_tables
    rows = _parquet_rows(run).assign(variant=lambda d: _variant(d))
    pw = pd.read_csv(tables / "pairwise.csv", keep_default_na=True)
    n_var = rows["variant"].nunique()
    assert len(pw) == len(METRICS) * rows["ratio"].nunique() * n_var * (n_var - 1) // 2
    for _, t in pw.iterrows():
        at = rows[np.isclose(rows["ratio"], t["ratio"])]
        a = at[at["variant"] == t["variant_a"]].set_index(["category", "seed"])[t["metric"]]
        b = at[at["variant"] == t["variant_b"]].set_index(["category", "seed"])[t["metric"]]
        diff = (a - b).dropna()
        assert t["n"] == len(diff)
        assert t["mean_diff"] == pytest.approx(diff.mean(), abs=1e-12)
        assert t["ci_low"] <= t["mean_diff"] <= t["ci_high"]
        assert t["p_wilcoxon"] == pytest.approx(wilcoxon(diff.to_numpy()).pvalue, abs=1e-12)
        assert (t["metric"] == "image_auroc") == pd.notna(t["within_cell_noise"])
    rob = pd.read_csv(tables / "robustness.csv")
    assert len(rob) == len(METRICS) * n_var  # one contaminated ratio
    for _, t in rob.iterrows():
        mine = rows[rows["variant"] == t["variant"]]
        clean = mine[mine["ratio"] == 0].set_index(["category", "seed"])[t["metric"]]
        noisy = mine[np.isclose(mine["ratio"], t["ratio"])].set_index(["category", "seed"])[t["metric"]]
        diff = (noisy - clean).dropna()
        assert t["n"] == len(diff) and t["mean_diff"] == pytest.approx(diff.mean(), abs=1e-12)
        assert t["ci_low"] <= t["mean_diff"] <= t["ci_high"] and t["mean_diff"] < 0  # noise costs here
    md = (tables / "robustness.md").read_text()
    assert md.count("\n") == 2 + len(rob) // len(METRICS)


def test_rank_csv_matches_brute_force(run_tables: tuple[Path, Path]) -> None:
    run, tables = run_tables
    rows = _parquet_rows(run).assign(variant=lambda d: _variant(d))
    cd = pd.read_csv(tables / "critical_difference.csv")
    assert set(cd["metric"]) == set(S.CD_METRICS)
    for (metric, ratio), t in cd.groupby(["metric", "ratio"]):
        at = rows[np.isclose(rows["ratio"], ratio)]
        per_cat = at.groupby(["category", "variant"])[metric].mean().unstack().dropna()
        ranks = {v: 0.0 for v in per_cat.columns}
        for _, vals in per_cat.iterrows():  # rank 1 = best; ties share the mean of their positions
            for v, x in vals.items():
                better, same = (vals > x).sum(), (vals == x).sum()
                ranks[v] += better + (same + 1) / 2
        for _, r in t.iterrows():
            assert r["avg_rank"] == pytest.approx(ranks[r["variant"]] / len(per_cat), abs=1e-12)
        k, n = len(ranks), len(per_cat)
        assert (t["k"] == k).all() and (t["n_categories"] == n).all()
        assert t["cd"].iloc[0] == pytest.approx(S.nemenyi_cd(k, n))
        assert t["avg_rank"].is_monotonic_increasing


def test_cell_uncertainty_csv(run_tables: tuple[Path, Path]) -> None:
    run, tables = run_tables
    cells = pd.read_csv(tables / "cell_uncertainty.csv")
    rows = _parquet_rows(run).assign(variant=lambda d: _variant(d))
    assert set(cells["cell_id"]) == set(rows["cell_id"])
    for _, c in cells.iterrows():
        sc = pq.read_table(run / "scores" / f"{c['cell_id']}.parquet").to_pandas()
        if sc["label"].nunique() < 2:
            assert math.isnan(c["auroc_scores"])
            continue
        assert c["auroc_scores"] == pytest.approx(roc_auc_score(sc["label"], sc["score"]), abs=1e-12)
        if pd.notna(c["half_width"]):
            assert c["half_width"] == pytest.approx((c["ci_high"] - c["ci_low"]) / 2)
        # the fixture's scores are random, unrelated to the stored image_auroc: the table must say so
        assert S.NOTE_SCORES_DISAGREE in str(c["note"])
    cat = pd.read_csv(tables / "per_category.csv")
    hw = cells.set_index("cell_id")["half_width"]
    cat["variant"] = [
        m + (f" [{c}]" if isinstance(c, str) else "")
        for m, c in zip(cat["method"], cat["config"], strict=True)
    ]
    assert cat["image_auroc_cell_hw"].notna().all()
    for _, t in cat.iterrows():
        sub = rows[
            (rows["variant"] == t["variant"])
            & (rows["category"] == t["category"])
            & np.isclose(rows["ratio"], t["ratio"])
        ]
        assert t["image_auroc_cell_hw"] == pytest.approx(hw.reindex(sub["cell_id"]).mean(), abs=1e-12)
    assert "image_auroc cell 95% CI ± (%)" in (tables / "per_category.md").read_text()
