"""Report tests: every number is re-derived here from the Parquet rows with independent pandas code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report_fixtures import EVIL, RunSpec, make_run_dir

from reports import plots as P
from reports import tables as T
from reports.build import build_report, main
from reports.load import load_run
from reports.paper import REFERENCE_COLUMNS, load_reference

METRICS = ["image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    run = make_run_dir(tmp_path_factory.mktemp("runs"))
    report = build_report(run)
    return run, report, report.read_text(encoding="utf-8")


def _rows(run: Path) -> pd.DataFrame:
    """All result rows straight from Parquet, with the params JSON as the variant key."""
    df = pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted((run / "results").glob("*.parquet"))], ignore_index=True
    )
    df["variant"] = df["params"]
    return df


def _config_of(config: object) -> dict[str, float]:
    """'keep_ratio=0.25' -> {'keep_ratio': 0.25} (for matching table rows to params JSON)."""
    if not isinstance(config, str) or not config:
        return {}
    return {k: float(v) for k, v in (part.split("=") for part in config.split(", "))}


def _variant_of(method: str, config: object, rows: pd.DataFrame) -> str:
    """The params JSON whose values agree with a table's config label."""
    want = _config_of(config)
    cands = rows.loc[rows["method"] == method, "params"].unique()
    hits = [p for p in cands if all(json.loads(p).get(k) == v for k, v in want.items())]
    assert len(hits) == 1, (method, config, cands)
    return hits[0]


def test_main_table_matches_parquet(built: tuple[Path, Path, str]) -> None:
    run, report, _ = built
    rows = _rows(run)
    ok = rows[rows["status"] == "ok"]
    table = pd.read_csv(report.parent / "report_tables" / "main.csv", keep_default_na=True)
    table["config"] = table["config"].fillna("")
    assert len(table) == ok.groupby(["dataset", "method", "variant", "ratio"]).ngroups
    for _, t in table.iterrows():
        variant = _variant_of(t["method"], t["config"], ok)
        sub = ok[
            (ok["dataset"] == t["dataset"])
            & (ok["method"] == t["method"])
            & (ok["variant"] == variant)
            & np.isclose(ok["ratio"], t["ratio"])
        ]
        assert t["n"] == sub["seed"].nunique() and t["n_categories"] == sub["category"].nunique()
        for m in METRICS:
            per_cat = sub.groupby("category")[m].mean()  # mean over seeds per category
            per_seed = sub.groupby("seed")[m].mean()  # mean over categories per seed
            assert t[f"{m}_mean"] == pytest.approx(per_cat.mean(), abs=1e-12)
            assert t[f"{m}_std"] == pytest.approx(per_seed.std(ddof=1), abs=1e-12)


def test_category_table_matches_parquet(built: tuple[Path, Path, str]) -> None:
    run, report, _ = built
    ok = _rows(run).query("status == 'ok'")
    table = pd.read_csv(report.parent / "report_tables" / "per_category.csv")
    table["config"] = table["config"].fillna("")
    assert len(table) == ok.groupby(["dataset", "method", "variant", "category", "ratio"]).ngroups
    for _, t in table.iterrows():
        variant = _variant_of(t["method"], t["config"], ok)
        sub = ok[
            (ok["method"] == t["method"])
            & (ok["variant"] == variant)
            & (ok["category"] == t["category"])
            & np.isclose(ok["ratio"], t["ratio"])
        ]
        assert t["n"] == len(sub)
        for m in METRICS:
            assert t[f"{m}_mean"] == pytest.approx(sub[m].mean(), abs=1e-12)
            if len(sub) > 1:
                assert t[f"{m}_std"] == pytest.approx(sub[m].std(ddof=1), abs=1e-12)
            else:
                assert np.isnan(t[f"{m}_std"])


def test_failed_cell_reported_and_excluded(built: tuple[Path, Path, str]) -> None:
    run, report, html = built
    rows = _rows(run)
    failed = rows[rows["status"] != "ok"]
    assert len(failed) == 1
    fails = pd.read_csv(report.parent / "report_tables" / "failures.csv")
    assert list(fails["cell_id"]) == list(failed["cell_id"])
    assert "CUDA out of memory" in fails["error"].iloc[0]
    assert failed["cell_id"].iloc[0] in html and "CUDA out of memory" in html
    assert 'href="#failures"' in html


def test_escaping_and_single_plotly(built: tuple[Path, Path, str]) -> None:
    import plotly.offline

    _, _, html = built
    assert EVIL not in html
    assert "<script>alert(2)" not in html  # from sweep.yaml
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    js = plotly.offline.get_plotlyjs()
    probe = js[len(js) // 2 : len(js) // 2 + 300]
    assert html.count(probe) == 1
    assert '<script src="http' not in html and "cdn.plot.ly" not in html.split("<body>", 1)[1]


def test_table_files_written(built: tuple[Path, Path, str]) -> None:
    _, report, _ = built
    folder = report.parent / "report_tables"
    for name in ("main", "per_category", "oracle", "paper", "sensitivity", "cost", "failures", "missing"):
        assert (folder / f"{name}.csv").is_file() and (folder / f"{name}.md").is_file()
    tex = (folder / "main.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"\bottomrule" in tex
    md = (folder / "main.md").read_text()
    assert md.startswith("| dataset | method |") and "image_auroc (%)" in md
    assert "&lt;script&gt;" in (folder / "per_category.md").read_text()


def test_oracle_only_in_labelled_table(built: tuple[Path, Path, str]) -> None:
    run, report, html = built
    folder = report.parent / "report_tables"
    assert "oracle" not in (folder / "main.md").read_text().lower()
    assert "oracle" not in (folder / "main.csv").read_text().lower()
    header = (folder / "oracle.md").read_text().splitlines()[0]
    assert "oracle (best-on-test epoch) image_auroc (%)" in header
    ok = _rows(run).query("status == 'ok' and method == 'funad'")
    orc = pd.read_csv(folder / "oracle.csv")
    for _, t in orc.iterrows():
        variant = _variant_of("funad", t["config"], ok)
        sub = ok[(ok["variant"] == variant) & np.isclose(ok["ratio"], t["ratio"])]
        assert t["oracle_image_auroc_mean"] == pytest.approx(
            sub.groupby("category")["oracle_image_auroc"].mean().mean(), abs=1e-12
        )
    main_section = html.split('id="main"', 1)[1].split("<section", 1)[0]
    assert "oracle" not in main_section.lower()


def test_sensitivity_and_cost_match_parquet(built: tuple[Path, Path, str]) -> None:
    run, report, _ = built
    rows = _rows(run)
    ok = rows[rows["status"] == "ok"]
    folder = report.parent / "report_tables"
    sens = pd.read_csv(folder / "sensitivity.csv")
    assert set(sens["setting"]) == {"keep_ratio"}  # coreset_ratio has a single value: not swept
    for _, t in sens.iterrows():
        sub = ok[
            (ok["method"] == "funad")
            & np.isclose(ok["hp_keep_ratio"], t["value"])
            & np.isclose(ok["ratio"], t["ratio"])
        ]
        assert t["image_auroc_mean"] == pytest.approx(sub.groupby("category")["image_auroc"].mean().mean())
    cost = pd.read_csv(folder / "cost.csv").set_index("method")
    for method, sub in rows.groupby("method"):
        assert cost.loc[method, "wall_s_total"] == pytest.approx(sub["wall_s"].sum())
        assert cost.loc[method, "wall_s_mean"] == pytest.approx(sub["wall_s"].mean())
        assert cost.loc[method, "failed"] == (sub["status"] != "ok").sum()
        assert cost.loc[method, "gpu_hours"] == 0.0


def test_gpu_hours(tmp_path: Path) -> None:
    run = make_run_dir(
        tmp_path,
        RunSpec(device="NVIDIA H200", maps=False, history=False, methods={"patchcore": [{}]}, failed=None),
    )
    build_report(run)
    rows = _rows(run)
    cost = pd.read_csv(run / "report_tables" / "cost.csv")
    assert cost["gpu_hours"].iloc[0] == pytest.approx(rows["wall_s"].sum() * 0.5 / 3600)
    assert cost["peak_gpu_mb_max"].iloc[0] == pytest.approx(rows["peak_gpu_mb"].max())


def test_missing_cells_from_grid(built: tuple[Path, Path, str]) -> None:
    run, report, _ = built
    rows = _rows(run)
    missing = pd.read_csv(report.parent / "report_tables" / "missing.csv")
    n_variants = rows[["method", "params"]].drop_duplicates().shape[0]
    assert set(missing["ratio"]) == {0.2}
    assert len(missing) == n_variants * rows["category"].nunique() * rows["seed"].nunique()


def test_ratio_plot_one_trace_per_variant(built: tuple[Path, Path, str]) -> None:
    run, _, _ = built
    ok = _rows(run).query("status == 'ok'")
    data = load_run(run)
    prepared = T.prepare(data.results)
    plots = P.ratio_plots(T.main_table(prepared[prepared["status"] == "ok"]))
    assert len(plots) == len(METRICS)
    n_variants = ok[["method", "params"]].drop_duplicates().shape[0]
    for plot in plots:
        means = [t for t in plot.figure.data if t.meta == "mean"]
        bands = [t for t in plot.figure.data if t.meta == "band"]
        assert len(means) == n_variants
        assert all(t.showlegend is False for t in bands)
        assert {t.legendgroup for t in bands} <= {t.name for t in means}


def test_gallery_pngs(built: tuple[Path, Path, str]) -> None:
    run, _, html = built
    data = load_run(run)
    prepared = T.prepare(data.results)
    rows = P.gallery(data.maps, prepared[prepared["status"] == "ok"])
    ok = _rows(run).query("status == 'ok'")
    assert len(rows) == ok.groupby(["dataset", "category", "method"]).ngroups
    import base64

    img = Image.open(io.BytesIO(base64.b64decode(rows[0].data_uri.split(",", 1)[1])))
    assert img.size[0] > 3 * 2 * 100 and img.mode == "RGB"
    section = html.split('<section id="gallery">', 1)[1].split("<section", 1)[0]
    assert section.count('<img alt="') == section.count('src="data:image/png;base64,') == len(rows)


def test_loader_skips_tmp_and_broken(tmp_path: Path) -> None:
    run = make_run_dir(
        tmp_path, RunSpec(maps=False, history=False, methods={"patchcore": [{}]}, failed=None), junk=True
    )
    with pytest.warns(UserWarning, match="broken.parquet"):
        data = load_run(run)
    assert len(data.results) == len(list((run / "results").glob("*.parquet"))) - 1
    assert not any(".tmp" in p for p in data.problems)
    with pytest.warns(UserWarning):
        html = build_report(run).read_text()
    assert "broken.parquet" in html


def test_zero_ok_rows(tmp_path: Path) -> None:
    run = make_run_dir(
        tmp_path,
        RunSpec(
            methods={"funad": [{}]},
            categories=["a"],
            ratios=[0.1],
            seeds=[0],
            failed=("funad", "a", 0.1, 0, {}),
        ),
    )
    html = build_report(run).read_text()
    assert "No successful cells" in html and "CUDA out of memory" in html


def test_empty_and_minimal_run_dirs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No successful cells" in build_report(empty).read_text()
    # a results file with only the core columns (no hp_*, oracle, diag, timing, versions)
    minimal = tmp_path / "minimal" / "results"
    minimal.mkdir(parents=True)
    pd.DataFrame(
        {
            "cell_id": ["c1", "c2"],
            "dataset": ["d", "d"],
            "category": ["x", "y"],
            "method": ["m", "m"],
            "ratio": [0.0, 0.0],
            "seed": [0, 0],
            "status": ["ok", "ok"],
            "image_auroc": [0.9, 0.8],
        }
    ).to_parquet(minimal / "a.parquet")
    html = build_report(minimal.parent).read_text()
    main_md = (minimal.parent / "report_tables" / "main.md").read_text()
    assert "85.00" in main_md and "No successful cells" not in html


def test_paper_join(tmp_path: Path) -> None:
    spec = RunSpec(
        name="mv",
        dataset="mvtec",
        categories=["bottle", "cable"],
        ratios=[0.05, 0.1],
        methods={"softpatch": [{}], "funad": [{}]},
        failed=None,
        maps=False,
        history=False,
    )
    run = make_run_dir(tmp_path, spec)
    build_report(run)
    paper = pd.read_csv(run / "report_tables" / "paper.csv")
    ok = _rows(run)
    hit = paper[
        (paper["method"] == "softpatch") & (paper["ratio"] == 0.1) & (paper["metric"] == "image_auroc")
    ]
    assert len(hit) == 1 and hit["status"].iloc[0] == "matched"
    sub = ok[(ok["method"] == "softpatch") & np.isclose(ok["ratio"], 0.1)]
    ours = 100 * sub.groupby("category")["image_auroc"].mean().mean()
    assert hit["ours"].iloc[0] == pytest.approx(ours)
    assert hit["diff_pp"].iloc[0] == pytest.approx(ours - 98.65)
    funad = paper[(paper["dataset"] == "mvtec") & (paper["method"] == "funad")]
    assert set(funad["status"]) == {"matched"}
    assert set(paper.loc[paper["dataset"] == "visa", "status"]) == {"no matching cells"}
    assert set(paper.loc[paper["method"] == "inreach", "status"]) == {"no matching cells"}


def test_reference_csv() -> None:
    ref = load_reference()
    assert list(ref.columns) == REFERENCE_COLUMNS
    assert ref["note"].str.contains("verify against the paper").all()
    assert ref["value"].between(50, 100).all()
    key = ref.set_index(["dataset", "method", "metric"])
    at05 = ref[ref["ratio"] == 0.05]
    assert len(at05) == 12 and not at05["overlap"].any()
    assert key.loc[("visa", "funad", "image_auroc"), "value"] == 93.65
    counts = ref[ref["count"].notna()]
    assert set(counts["count"]) == {0, 10, 40} and counts["overlap"].all()


def test_cli_and_wall(tmp_path: Path, built: tuple[Path, Path, str], capsys: pytest.CaptureFixture) -> None:
    run, _, _ = built
    out = tmp_path / "elsewhere" / "r.html"
    assert main([str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and (out.parent / "r_tables" / "main.csv").is_file()
    assert main([str(tmp_path / "nope")]) == 2
    code = (
        "import sys, reports.build, reports.load, reports.tables, reports.plots, reports.paper, reports.html;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('funad','harness')]; print(bad); "
        "sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_missing_cells_are_plan_minus_results(built: tuple[Path, Path, str]) -> None:
    """Exactly the planned ids without a result file (a failed cell has one, so it is not missing)."""
    run, report, html = built
    plan = pq.read_table(run / "plan.parquet").to_pandas()
    done = {p.stem for p in (run / "results").glob("*.parquet")}
    missing = pd.read_csv(report.parent / "report_tables" / "missing.csv")
    assert set(missing["cell_id"]) == set(plan["cell_id"]) - done
    assert len(missing) == len(set(plan["cell_id"]) - done) > 0
    by_id = plan.set_index("cell_id")
    for _, m in missing.iterrows():  # each row describes its planned cell
        want = by_id.loc[m["cell_id"]]
        for col in ("dataset", "category", "method", "ratio", "seed"):
            assert m[col] == want[col], col
    funad = missing[missing["method"] == "funad"]
    assert set(funad["config"]) == {"keep_ratio=0.25", "keep_ratio=0.5"}  # swept: labelled
    assert set(missing.loc[missing["method"] == "patchcore", "config"].fillna("")) == {""}  # not swept
    section = html.split('<section id="failures">', 1)[1].split("<section", 1)[0]
    assert all(cid in section for cid in missing["cell_id"])


def test_run_without_plan_cannot_list_missing_cells(tmp_path: Path) -> None:
    run = make_run_dir(
        tmp_path, RunSpec(plan=False, maps=False, history=False, methods={"patchcore": [{}]}, failed=None)
    )
    html = build_report(run).read_text()
    section = html.split('<section id="failures">', 1)[1].split("<section", 1)[0]
    assert "cannot be listed" in section and "plan.parquet" in section
    assert T.missing_cells(None, load_run(run).results) is None
    assert len(pd.read_csv(run / "report_tables" / "missing.csv")) == 0
