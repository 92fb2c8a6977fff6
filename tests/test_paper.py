"""Ours vs paper (reports/paper.py): a reference row meets only our cell groups of the same protocol, on
reference tables and main tables built here (the shipped CSV's numbers are not what is tested)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from reports.format import display_paper
from reports.paper import REFERENCE_COLUMNS, load_reference, paper_table

NAN = float("nan")


def _ref(**row: object) -> dict[str, object]:
    """A reference row (typed as load_reference types it): by default a ratio row of the default protocol."""
    base = {"dataset": "mvtec", "method": "funad", "ratio": 0.1, "count": NAN, "overlap": False,
            "contamination_source": "anomalies", "ratio_of": "normal", "metric": "image_auroc", "value": 90.0,
            "source": "a paper", "protocol": "as described", "note": "transcribed"}
    return {**base, **row}


def _ours(**row: object) -> dict[str, object]:
    """A main-table group (metrics in [0, 1]) of the protocol of `_ref()`."""
    base = {"dataset": "mvtec", "method": "funad", "config": "", "overlap": False,
            "contamination_source": "anomalies", "ratio_of": "normal", "ratio": 0.1, "count": NAN,
            "n": 3, "n_categories": 15, "image_auroc_mean": 0.95, "image_auroc_std": 0.01}
    return {**base, **row}


def _join(refs: list[dict[str, object]], ours: list[dict[str, object]]) -> pd.DataFrame:
    return paper_table(pd.DataFrame(ours), pd.DataFrame(refs, columns=REFERENCE_COLUMNS))


def _statuses(ref: dict[str, object], *ours: dict[str, object]) -> list[str]:
    return list(_join([ref], list(ours))["status"])


def test_a_matching_group_gives_ours_and_the_difference_in_points() -> None:
    table = _join([_ref()], [_ours()])
    assert len(table) == 1
    row = table.iloc[0]
    assert row["status"] == "matched" and row["paper"] == 90.0
    assert row["ours"] == pytest.approx(95.0) and row["ours_std"] == pytest.approx(1.0)
    assert row["diff_pp"] == pytest.approx(5.0)
    assert (row["n"], row["n_categories"], row["source"], row["note"]) == (3, 15, "a paper", "transcribed")


def test_names_are_matched_loosely() -> None:
    assert _statuses(_ref(dataset="MVTec AD", method="FUN-AD"), _ours(dataset="mvtec_ad")) == ["matched"]
    assert _statuses(_ref(dataset="visa"), _ours()) == ["no matching cells"]
    assert _statuses(_ref(method="patchcore"), _ours()) == ["no matching cells"]


def test_one_row_per_matching_configuration() -> None:
    table = _join([_ref()], [_ours(config="keep_ratio=0.5", image_auroc_mean=0.8),
                             _ours(config="keep_ratio=0.9", image_auroc_mean=0.92),
                             _ours(ratio=0.2)])  # another ratio: no row
    assert list(table["config"]) == ["keep_ratio=0.5", "keep_ratio=0.9"]
    assert list(table["diff_pp"]) == pytest.approx([-10.0, 2.0])


def test_a_row_without_a_match_says_so_and_shows_dashes() -> None:
    table = _join([_ref(ratio=0.05)], [_ours()])
    row = table.iloc[0]
    assert row["status"] == "no matching cells" and row["config"] == ""
    assert all(math.isnan(row[c]) for c in ("ours", "ours_std", "diff_pp", "n", "n_categories"))
    shown = display_paper(table).iloc[0]
    shown_values = (shown["paper (%)"], shown["ours (%)"], shown["ours − paper (pp)"], shown["n"])
    assert shown_values == ("90.00", "–", "–", "–")
    # an empty run: every reference row is listed, none matched
    assert list(paper_table(pd.DataFrame(), pd.DataFrame([_ref()], columns=REFERENCE_COLUMNS))["status"]) == [
        "no matching cells"]


def test_a_metric_our_cells_did_not_compute() -> None:
    assert _statuses(_ref(), _ours(image_auroc_mean=NAN)) == ["metric missing in our cells"]
    # a metric the run has no column for at all: nothing to match it with
    assert _statuses(_ref(metric="aupro"), _ours()) == ["no matching cells"]


def test_a_ratio_row_needs_the_same_overlap_source_and_ratio_definition() -> None:
    for other in ({"overlap": True}, {"contamination_source": "all_test"}, {"ratio_of": "train"},
                  {"count": 10.0}):  # an absolute count is not a ratio, whatever the ratio column says
        assert _statuses(_ref(), _ours(**other)) == ["no matching cells"], other
    # a run from before the protocol columns existed used the default protocol
    old = {k: v for k, v in _ours().items() if k not in ("contamination_source", "ratio_of")}
    assert _statuses(_ref(), old) == ["matched"]
    assert _statuses(_ref(), _ours(contamination_source=None, ratio_of=None)) == ["matched"]


def test_a_count_row_needs_the_count_and_source_but_not_the_ratio_definition() -> None:
    ref = _ref(ratio=NAN, count=10.0, overlap=True, contamination_source="all_test")
    ours = _ours(ratio=NAN, count=10.0, overlap=True, contamination_source="all_test")
    assert _statuses(ref, ours) == ["matched"]
    assert _statuses(ref, {**ours, "ratio_of": "train"}) == ["matched"]
    for other in ({"count": 40.0}, {"overlap": False}, {"contamination_source": "anomalies"}):
        assert _statuses(ref, {**ours, **other}) == ["no matching cells"], other
    # a run from before the setting existed drew from the anomalies: not the whole-test-set protocol
    old = {k: v for k, v in ours.items() if k != "contamination_source"}
    assert _statuses(ref, old) == ["no matching cells"]
    shown = display_paper(_join([ref], [ours])).iloc[0]
    shown_values = (shown["ratio / count"], shown["drawn from"], shown["overlap"])
    assert shown_values == ("10 images", "whole test set", "yes")


def test_nothing_injected_matches_whatever_the_overlap_and_source() -> None:
    # with nothing injected, overlap and the contamination source make no difference
    clean_ratio = _ref(ratio=0.0)
    ours = _ours(ratio=0.0, overlap=True, contamination_source="all_test")
    assert _statuses(clean_ratio, ours) == ["matched"]
    clean_count = _ref(ratio=NAN, count=0.0, overlap=True, contamination_source="all_test")
    assert _statuses(clean_count, _ours(ratio=0.0)) == ["matched"]
    assert _statuses(clean_count, _ours(ratio=NAN, count=0.0)) == ["matched"]
    assert _statuses(clean_count, _ours(ratio=0.1)) == ["no matching cells"]


def test_load_reference_types_the_columns_and_fills_the_default_protocol(tmp_path: Path) -> None:
    csv = tmp_path / "ref.csv"
    csv.write_text("dataset,method,ratio,count,overlap,metric,value,source,protocol,note\n"
                   "mvtec,funad,0.1,,false,image_auroc,98.5,p,r,n\n"
                   "mvtec,inreach,,10,TRUE,pixel_auroc,96.8,p,r,n\n")
    ref = load_reference(csv)
    assert list(ref.columns) == REFERENCE_COLUMNS
    assert ref["overlap"].tolist() == [False, True]
    assert ref["ratio"].iloc[0] == 0.1 and math.isnan(ref["ratio"].iloc[1])
    assert math.isnan(ref["count"].iloc[0]) and ref["count"].iloc[1] == 10
    assert ref["contamination_source"].tolist() == ["anomalies"] * 2
    assert ref["ratio_of"].tolist() == ["normal"] * 2
    table = paper_table(pd.DataFrame([_ours(image_auroc_mean=0.985)]), ref)
    assert list(table["status"]) == ["matched", "no matching cells"]
    assert table["diff_pp"].iloc[0] == pytest.approx(0)
