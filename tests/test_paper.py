"""Ours vs paper: a reference row meets only our cells of the same protocol."""

from __future__ import annotations

import pandas as pd

from reports.paper import load_reference, paper_table


def _main(**protocol: object) -> pd.DataFrame:
    row = {"dataset": "mvtec", "method": "inreach", "config": "", "overlap": True, "ratio": float("nan"),
           "count": 10.0, "n": 3, "n_categories": 15, "image_auroc_mean": 0.9, "image_auroc_std": 0.01,
           "pixel_auroc_mean": 0.95, "pixel_auroc_std": 0.01, **protocol}
    return pd.DataFrame([row])


def _status(main: pd.DataFrame) -> str:
    table = paper_table(main)
    hit = table[(table["method"] == "inreach") & (table["count"] == 10) & (table["metric"] == "image_auroc")]
    assert len(hit) == 1
    return str(hit["status"].iloc[0])


def test_inreach_table_needs_draws_from_the_whole_test_set() -> None:
    assert _status(_main(contamination_source="all_test", ratio_of="normal")) == "matched"
    assert _status(_main(contamination_source="anomalies", ratio_of="normal")) == "no matching cells"
    # a run from before the setting existed drew from the anomalies: it does not meet InReaCh's protocol
    assert _status(_main()) == "no matching cells"
    assert _status(_main(contamination_source="all_test", overlap=False)) == "no matching cells"


def test_ratio_rows_need_the_same_ratio_definition() -> None:
    main = _main(ratio=0.05, count=float("nan"), overlap=False, contamination_source="anomalies")
    for ratio_of, want in (("normal", "matched"), ("train", "no matching cells")):
        table = paper_table(main.assign(ratio_of=ratio_of))
        hit = table[(table["method"] == "inreach") & (table["ratio"] == 0.05)
                    & (table["metric"] == "image_auroc") & (table["dataset"] == "mvtec")]
        assert list(hit["status"]) == [want]


def test_reference_rows_name_their_protocol() -> None:
    ref = load_reference()
    inreach_table = ref[ref["source"] == "InReaCh paper (table)"]
    assert set(inreach_table["contamination_source"]) == {"all_test"} and inreach_table["overlap"].all()
    assert set(ref.loc[ref["ratio"].notna(), "contamination_source"]) == {"anomalies"}
    assert set(ref["ratio_of"]) == {"normal"}
