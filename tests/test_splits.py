"""Split lists in and out: our form and the MeDS form, the template, every bad-list case, the round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_data import build_mvtec

from funad.data import DatasetError
from funad.data.contamination import contaminate
from funad.data.mvtec import MVTecDataset
from funad.data.splits import (
    check_list,
    list_path,
    read_split_list,
    rows_to_csv,
    split_from_list,
    split_rows,
)


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[MVTecDataset, dict]:
    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 3, "scratch": 2}, "wood": {"hole": 2}},
                       n_train=4, n_good=2)
    ds = MVTecDataset(root)
    return ds, {c: ds.records(c) for c in ds.categories()}


def test_meds_list_trains_on_exactly_its_images(tree: tuple, tmp_path: Path) -> None:
    ds, recs = tree
    lst = tmp_path / "train_mvtec_nr10_seed_0.csv"
    lst.write_text("filename,clsname\n"
                   "bottle/train/good/000.png,bottle\n"
                   "bottle/train/good/002.png,bottle\n"
                   "test/broken/001.png,bottle\n"  # relative to the category folder
                   "wood/train/good/001.png,wood\n")
    parsed = read_split_list(lst)
    assert check_list(parsed, ds.categories(), recs) == []
    split = split_from_list(recs["bottle"], parsed, "bottle")
    assert [r.image_id for r in split.train] == ["bottle/test/broken/001.png", "bottle/train/good/000.png",
                                                 "bottle/train/good/002.png"]
    assert all(r.split == "train" for r in split.train)
    assert split.injected_ids == ["bottle/test/broken/001.png"] and split.n_train_normal == 2
    assert split.achieved_ratio == pytest.approx(0.5)
    test_ids = {r.image_id for r in split.test}
    assert "bottle/test/broken/001.png" not in test_ids and len(test_ids) == 2 + 5 - 1
    # unlisted training images are simply not used; with overlap the test set is whole
    assert len(split_from_list(recs["bottle"], parsed, "bottle", overlap=True).test) == 7
    assert parsed.source.endswith(f"sha256:{parsed.sha256}") and len(parsed.sha256) == 64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("filename,clsname\nbottle/train/good/009.png,bottle\n",
         "line 2: 'bottle/train/good/009.png' is not an image of category 'bottle'"),
        ("filename,clsname\nbottle/train/good/000.png,bottle\nx/train/good/000.png,carpet\n",
         "line 3: category 'carpet' is not in the dataset"),
        ("filename,clsname\nbottle/train/good/000.png,bottle\nbottle/train/good/000.png,bottle\n",
         "line 3: 'bottle/train/good/000.png' listed twice (first on line 2)"),
        ("image,class\nbottle/train/good/000.png,bottle\n", "line 1: unknown header"),
        ("filename,clsname\nbottle/train/good/000.png\n", "line 2: expected 2 columns"),
        ("path,category,role,label,injected\nbottle/test/broken/000.png#aug1,bottle,train,1,1\n",
         "line 2: 'bottle/test/broken/000.png#aug1' is an augmented copy"),
        ("path,category,role,label,injected\nbottle/train/good/000.png,bottle,val,0,0\n",
         "line 2: role 'val'"),
        ("", "split list is empty"),
    ],
    ids=["missing-image", "unknown-category", "twice", "header", "columns", "augmented", "role", "empty"],
)
def test_bad_lists_name_the_list_the_line_and_the_problem(tree: tuple, tmp_path: Path, body: str,
                                                          message: str) -> None:
    ds, recs = tree
    lst = tmp_path / "bad.csv"
    lst.write_text(body)
    try:
        problems = check_list(read_split_list(lst), ds.categories(), recs)
    except DatasetError as exc:
        problems = [str(exc)]
    assert any(message in p and str(lst) in p for p in problems), problems


def test_missing_list_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split list does not exist"):
        read_split_list(tmp_path / "nope.csv")


def test_template_fields() -> None:
    t = "lists/train_{dataset}_nr{ratio_pct}_seed_{seed}.csv"
    want = Path("lists/train_mvtec_nr10_seed_2.csv")
    assert list_path(t, dataset="mvtec", ratio=0.1, count=None, seed=2) == want
    assert list_path("l/{count}.csv", dataset="m", ratio=None, count=40, seed=0) == Path("l/40.csv")
    with pytest.raises(DatasetError, match="unknown field"):
        list_path("l/{category}.csv", dataset="m", ratio=0.1, count=None, seed=0)


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("pool_order", ["sorted", "appended"])
def test_round_trip_our_form_reproduces_a_drawn_split(tree: tuple, tmp_path: Path, overlap: bool,
                                                      pool_order: str) -> None:
    _, recs = tree
    drawn = contaminate(recs["bottle"], count=3, seed=5, key="mvtec/bottle", overlap=overlap,
                        pool_order=pool_order, min_test_anomalies=0)
    lst = tmp_path / "ours.csv"
    lst.write_text(rows_to_csv(split_rows(drawn)))
    again = split_from_list(recs["bottle"], read_split_list(lst), "bottle", overlap=overlap,
                            pool_order=pool_order)
    assert [r.image_id for r in again.train] == [r.image_id for r in drawn.train]
    assert [r.label for r in again.train] == [r.label for r in drawn.train]
    assert [r.image_id for r in again.test] == [r.image_id for r in drawn.test]
    assert again.injected_ids == drawn.injected_ids
    assert (again.n_train_normal, again.n_injected) == (drawn.n_train_normal, drawn.n_injected)
    assert again.achieved_ratio == pytest.approx(drawn.achieved_ratio)
