"""Contamination (protocol.md): counts, overlap, shortfall policies, determinism, a golden split."""

from __future__ import annotations

from pathlib import Path

import pytest

from funad.data import DatasetError, ImageRecord
from funad.data.contamination import CategoryCounts, Split, SplitRule, contaminate


def make_records(n_train: int = 100, n_good: int = 20, n_anom: int = 30, cat: str = "c") -> list[ImageRecord]:
    """A category without files: contamination only looks at ids, labels and splits."""
    recs = [
        ImageRecord(f"{cat}/train/good/{i:03d}.png", Path(f"/x/{i}"), 0, "train", cat) for i in range(n_train)
    ]
    recs += [
        ImageRecord(f"{cat}/test/good/{i:03d}.png", Path(f"/g/{i}"), 0, "test", cat) for i in range(n_good)
    ]
    recs += [
        ImageRecord(f"{cat}/test/cut/{i:03d}.png", Path(f"/a/{i}"), 1, "test", cat, "cut", Path(f"/m/{i}"))
        for i in range(n_anom)
    ]
    return recs[::-1]  # unsorted input on purpose


def check_consistent(split: Split, records: list[ImageRecord], overlap: bool) -> None:
    """Invariants every split must satisfy, checked from the inputs."""
    train0 = {r.image_id for r in records if r.split == "train"}
    test0 = {r.image_id for r in records if r.split == "test"}
    train_ids = [r.image_id for r in split.train]
    test_ids = [r.image_id for r in split.test]
    assert train_ids == sorted(train_ids) and test_ids == sorted(test_ids)
    assert train0 <= set(train_ids)  # all normal train stay
    assert sorted(set(train_ids) - train0) == split.injected_ids
    originals = {i for i in split.injected_ids if "#aug" not in i}
    assert originals <= test0
    assert all(r.label == 1 for r in split.train if r.image_id in set(split.injected_ids))
    if overlap:
        assert set(test_ids) == test0
    else:
        assert set(test_ids) == test0 - originals
    assert split.n_train_normal == len(train0)
    assert split.n_injected == len(split.injected_ids)
    assert split.n_test_normal == sum(r.label == 0 for r in split.test)
    assert split.n_test_anomalous == sum(r.label == 1 for r in split.test)
    assert split.achieved_ratio == split.n_injected / split.n_train_normal


@pytest.mark.parametrize(
    ("ratio", "n"), [(0.0, 0), (0.01, 1), (0.05, 5), (0.1, 10), (0.15, 15), (0.2, 20), (0.07, 7), (0.29, 29)]
)
def test_ratio_counts(ratio: float, n: int) -> None:
    # 0.07 * 100 and 0.29 * 100 are 7.000000000000001 and 28.999999999999996 in floats: floor must give 7, 29.
    recs = make_records(n_train=100, n_anom=60)
    split = contaminate(recs, ratio=ratio, seed=3, key="k")
    check_consistent(split, recs, overlap=False)
    assert split.n_injected == n and split.shortfall_applied is None
    assert split.n_test_anomalous == 60 - n and split.n_test_normal == 20
    assert split.requested_ratio == ratio and split.requested_count is None
    assert split.achieved_ratio == pytest.approx(n / 100)


def test_ratio_floors() -> None:
    split = contaminate(make_records(n_train=37), ratio=0.1, key="k")
    assert split.n_injected == 3  # floor(3.7)


def test_count_and_overlap() -> None:
    recs = make_records(n_anom=30)
    no = contaminate(recs, count=10, seed=1, key="k")
    check_consistent(no, recs, overlap=False)
    assert no.n_injected == 10 and no.n_test_anomalous == 20 and no.requested_count == 10
    assert no.requested_ratio is None and no.achieved_ratio == 0.1
    yes = contaminate(recs, count=10, seed=1, key="k", overlap=True)
    check_consistent(yes, recs, overlap=True)
    assert yes.n_test_anomalous == 30 and yes.injected_ids == no.injected_ids
    assert set(yes.injected_ids) <= {r.image_id for r in yes.test}
    assert contaminate(recs, count=0, key="k").n_injected == 0


def test_injected_records_are_the_originals() -> None:
    recs = make_records()
    split = contaminate(recs, count=5, key="k")
    by_id = {r.image_id: r for r in recs}
    for r in split.train:
        assert r == by_id[r.image_id]  # unchanged records, split kept as the dataset defines it


def test_shortfall_error() -> None:
    recs = make_records(n_train=100, n_anom=30)
    with pytest.raises(DatasetError) as info:
        contaminate(recs, ratio=0.25, shortfall="error", key="mvtec/hazelnut")
    msg = str(info.value)
    # 25 requested, 30 - min(10, 15) = 20 can be spared.
    assert "25" in msg and "20" in msg and "30" in msg and "mvtec/hazelnut" in msg
    assert contaminate(recs, ratio=0.2, shortfall="error", key="k").n_injected == 20


def test_shortfall_cap() -> None:
    recs = make_records(n_train=100, n_anom=30)
    split = contaminate(recs, ratio=0.25, shortfall="cap", key="k")
    check_consistent(split, recs, overlap=False)
    assert split.n_injected == 20 and split.n_test_anomalous == 10
    assert split.shortfall_applied == "cap" and split.achieved_ratio == 0.2 and split.requested_ratio == 0.25
    # Few anomalies: half stay for testing.
    small = make_records(n_train=100, n_anom=7)
    s = contaminate(small, count=50, key="k")
    assert s.n_injected == 4 and s.n_test_anomalous == 3
    # Overlap spares them all.
    o = contaminate(recs, count=50, overlap=True, key="k")
    assert o.n_injected == 30 and o.n_test_anomalous == 30 and o.shortfall_applied == "cap"
    assert contaminate(recs, count=25, key="k", min_test_anomalies=0).n_injected == 25


def test_shortfall_augment() -> None:
    recs = make_records(n_train=100, n_anom=30)
    split = contaminate(recs, ratio=0.25, shortfall="augment", seed=2, key="k")
    check_consistent(split, recs, overlap=False)
    assert split.n_injected == 25 and split.achieved_ratio == 0.25 and split.shortfall_applied == "augment"
    assert split.n_test_anomalous == 10
    originals = [i for i in split.injected_ids if "#aug" not in i]
    copies = [r for r in split.train if "#aug" in r.image_id]
    assert len(originals) == 20 and len(copies) == 5
    for r in copies:
        base = r.image_id.split("#aug")[0]
        assert base in originals and isinstance(r.augment, int)
        assert r.path == Path("/a/" + str(int(base[-7:-4])))  # the copy reads the original's file
    assert len({r.augment for r in copies}) == 5
    assert len({r.image_id for r in split.train}) == len(split.train)
    assert all(r.augment is None for r in split.train if "#aug" not in r.image_id)
    with pytest.raises(DatasetError):
        contaminate(make_records(n_anom=0), count=3, shortfall="augment", key="k")


def test_deterministic_and_seeded() -> None:
    recs = make_records()
    a = contaminate(recs, ratio=0.1, seed=0, key="mvtec/bottle")
    assert a == contaminate(list(reversed(recs)), ratio=0.1, seed=0, key="mvtec/bottle")
    assert a.injected_ids != contaminate(recs, ratio=0.1, seed=1, key="mvtec/bottle").injected_ids
    assert a.injected_ids != contaminate(recs, ratio=0.1, seed=0, key="mvtec/wood").injected_ids
    # One permutation per (seed, key): smaller ratios draw a subset of larger ones.
    small = contaminate(recs, ratio=0.05, seed=0, key="mvtec/bottle")
    assert set(small.injected_ids) < set(a.injected_ids)


GOLDEN_IDS = [f"toy/test/cut/{i:03d}.png" for i in (0, 2, 5, 9, 10)]
GOLDEN_AUG = [
    ("toy/test/cut/000.png#aug1", 77701556),
    ("toy/test/cut/002.png#aug4", 95673731),
    ("toy/test/cut/005.png#aug3", 1217261417),
    ("toy/test/cut/009.png#aug0", 968911573),
    ("toy/test/cut/010.png#aug2", 292222065),
    ("toy/test/cut/011.png#aug5", 852551291),
]


def test_golden_split() -> None:
    # Hard-coded once: fails if numpy's SeedSequence / PCG64 / permutation stream or crc32 keying changes.
    recs = make_records(n_train=50, n_good=5, n_anom=12, cat="toy")
    split = contaminate(recs, ratio=0.1, seed=7, key="synthetic/toy")
    assert split.injected_ids == GOLDEN_IDS
    aug = contaminate(recs, count=12, seed=7, key="synthetic/toy", shortfall="augment")
    assert [(r.image_id, r.augment) for r in aug.train if r.augment is not None] == GOLDEN_AUG


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"ratio": 0.1, "count": 3},
        {"ratio": 1.0},
        {"ratio": -0.1},
        {"ratio": "0.1"},
        {"count": -1},
        {"count": 2.5},
        {"count": True},
        {"ratio": 0.1, "shortfall": "pad"},
        {"ratio": 0.1, "seed": -1},
        {"ratio": 0.1, "min_test_anomalies": -1},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DatasetError):
        contaminate(make_records(), **kwargs)


def test_bad_records() -> None:
    with pytest.raises(DatasetError):
        contaminate([], ratio=0.1)
    only_test = [r for r in make_records() if r.split == "test"]
    with pytest.raises(DatasetError):
        contaminate(only_test, ratio=0.1)
    bad_train = [*make_records(), ImageRecord("c/train/bad/0.png", Path("/b"), 1, "train", "c", "cut")]
    with pytest.raises(DatasetError, match="c/train/bad/0.png"):
        contaminate(bad_train, ratio=0.1)


# ---- the other published definitions: ratio of the training set, draws from the whole test set -------
@pytest.mark.parametrize(("ratio", "n"), [(0.1, 11), (0.2, 25), (0.05, 5), (0.0, 0)])
def test_ratio_of_train_is_the_injected_share_of_the_pool(ratio: float, n: int) -> None:
    # 100 normals: n / (100 + n) <= ratio, the largest such n: 0.1 -> 11 (11/111 = 0.099), 0.2 -> 25 (0.2)
    split = contaminate(make_records(n_anom=60), ratio=ratio, ratio_of="train", key="k", min_test_anomalies=0)
    assert split.n_injected == n
    assert split.achieved_ratio == pytest.approx(n / (100 + n))
    assert split.achieved_ratio <= ratio + 1e-12 and split.ratio_of == "train"


def test_all_test_source_draws_good_images_too_and_counts_them_as_normals() -> None:
    recs = make_records(n_good=20, n_anom=30)
    split = contaminate(recs, count=40, source="all_test", overlap=True, seed=3, key="mvtec/bottle")
    injected = [r for r in split.train if r.image_id in set(split.injected_ids)]
    n_good = sum(r.label == 0 for r in injected)
    assert split.n_injected == 40 and 0 < n_good < 20 and split.n_injected_normal == n_good
    assert split.achieved_ratio == pytest.approx((40 - n_good) / (100 + n_good))
    assert {r.image_id for r in split.test} == {r.image_id for r in recs if r.split == "test"}  # overlap
    # the same prefix property: a smaller count's draw is a subset of a larger one's
    small = contaminate(recs, count=10, source="all_test", overlap=True, seed=3, key="mvtec/bottle")
    assert set(small.injected_ids) <= set(split.injected_ids)
    # the default source never draws a good image
    assert contaminate(recs, count=40, overlap=True, seed=3, key="mvtec/bottle").n_injected_normal == 0


def test_all_test_without_overlap_keeps_normals_and_anomalies_to_test() -> None:
    recs = make_records(n_good=8, n_anom=12)
    split = contaminate(recs, count=20, source="all_test", seed=1, key="k", min_test_anomalies=3)
    assert split.shortfall_applied == "cap"
    assert split.n_test_normal >= 3 and split.n_test_anomalous >= 3
    with pytest.raises(DatasetError, match="shortfall policy 'error'"):
        contaminate(recs, count=20, source="all_test", seed=1, key="k", shortfall="error")
    with pytest.raises(DatasetError, match="does not apply to source 'all_test'"):
        contaminate(recs, count=5, source="all_test", key="k", shortfall="augment")


def test_appended_pool_order_puts_the_clean_images_first_in_draw_order() -> None:
    recs = make_records()
    appended = contaminate(recs, count=7, seed=4, key="k", pool_order="appended")
    sorted_ = contaminate(recs, count=7, seed=4, key="k")
    assert [r.image_id for r in appended.train[:100]] == [f"c/train/good/{i:03d}.png" for i in range(100)]
    assert sorted(r.image_id for r in appended.train[100:]) == appended.injected_ids
    assert sorted(r.image_id for r in appended.train) == [r.image_id for r in sorted_.train]
    # sorted by id, "c/test/..." sorts before "c/train/...": the injected images would come first
    assert sorted_.train[0].label == 1


@pytest.mark.parametrize(("name", "value"), [("source", "everything"), ("ratio_of", "test"),
                                             ("pool_order", "random")])
def test_unknown_definitions_are_named(name: str, value: str) -> None:
    with pytest.raises(DatasetError, match=f"unknown {name} '{value}'"):
        contaminate(make_records(), ratio=0.1, key="k", **{name: value})


# ---- the split rule: one object for validation, the dry run, the trial and the estimate ------------
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("shortfall", ["cap", "augment"])
@pytest.mark.parametrize(("ratio_of", "amount"), [("normal", {"ratio": 0.05}), ("normal", {"ratio": 0.25}),
                                                  ("train", {"ratio": 0.3}), ("normal", {"count": 40}),
                                                  ("normal", {"count": 0})])
def test_amounts_are_what_the_draw_makes(overlap: bool, shortfall: str, ratio_of: str, amount: dict) -> None:
    """SplitRule.amounts (counts only, no draw: the dry run and the GPU-hours estimate) against the split
    the same rule draws from records with those counts."""
    recs = make_records(n_train=100, n_good=20, n_anom=30)
    rule = SplitRule(overlap=overlap, shortfall=shortfall, ratio_of=ratio_of, **amount)
    got = rule.amounts(CategoryCounts.of(recs))
    split = rule.draw(recs, seed=5, key="k")
    assert (got.pool, got.test) == (len(split.train), len(split.test))
    assert got.drawn + got.copies == split.n_injected
    assert got.copies == sum("#aug" in i for i in split.injected_ids)
    assert got.shortfall_applied == split.shortfall_applied
    assert got.achieved_ratio == pytest.approx(split.achieved_ratio)
    assert got.spare == rule.capacity(CategoryCounts.of(recs))


def test_amounts_refuse_like_the_draw() -> None:
    recs = make_records(n_train=100, n_anom=30)
    rule = SplitRule(ratio=0.25, shortfall="error")  # 25 wanted, 30 - 10 = 20 can be spared
    with pytest.raises(DatasetError, match="shortfall policy 'error'"):
        rule.amounts(CategoryCounts.of(recs))
    with pytest.raises(DatasetError, match="shortfall policy 'error'"):
        rule.draw(recs, seed=0, key="k")


def test_a_dataset_with_its_own_noisy_split_takes_no_injection() -> None:
    """Anomalous training records (a Real-IAD FUIAD JSON): used as they are at ratio 0, refused otherwise."""
    recs = make_records(n_train=10)
    noisy = [*recs, ImageRecord("c/train/ng/000.png", Path("/n/0"), 1, "train", "c", "ng")]
    split, source = SplitRule(ratio=0.0).split(noisy, seed=0, kind="realiad", category="c")
    assert source == "dataset:realiad" and split.injected_ids == ["c/train/ng/000.png"]
    assert split.n_train_normal == 10 and split.source == "dataset"
    with pytest.raises(DatasetError, match="realiad/c: this split already holds anomalous training images"):
        SplitRule(count=2).split(noisy, seed=0, kind="realiad", category="c")
    assert SplitRule(count=2).own_split_problem() is not None
    assert SplitRule(count=0).own_split_problem() is None
    # a clean category is drawn, with the RNG keyed by kind/category
    split, source = SplitRule(count=2).split(recs, seed=3, kind="mvtec", category="c")
    assert source == "drawn"
    assert split.injected_ids == contaminate(recs, count=2, seed=3, key="mvtec/c").injected_ids


def test_the_rule_records_itself_once() -> None:
    """What the cell id hashes and what the row records come from the rule's own fields."""
    rule = SplitRule(ratio=0, overlap=True, min_test_anomalies=3, split_list="/l.csv", split_list_sha256="ab")
    assert rule.defining_values() == {"ratio": 0.0, "count": None, "overlap": True, "shortfall": "cap",
                                      "min_test_anomalies": 3, "source": "anomalies", "ratio_of": "normal",
                                      "pool_order": "sorted", "split_list_sha256": "ab"}
    row = rule.row_values()
    assert row["contamination_source"] == "list" and row["split_list"] == "/l.csv" and row["ratio"] == 0.0
