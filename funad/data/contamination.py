"""The noisy training set: inject test images into train (docs/protocol.md, "Contamination").

Papers define "10 % noise" differently, so each part of the definition is a named setting:
- `ratio_of`: "normal" (n = floor(ratio * N_train_normal): anomalies per normal training image,
  SoftPatch's and FUN-AD's rule, the default) or "train" (the injected share of the training set:
  n = floor(ratio * N / (1 - ratio))); or an absolute `count` (InReaCh's 10 / 40 images);
- `source`: "anomalies" (draw from the test anomalies, the default) or "all_test" (draw from the whole
  test set, good images included, as InReaCh does);
- `overlap`: False removes the injected images from the test set, True keeps them there;
- `pool_order`: "sorted" (the pool sorted by image id, the default) or "appended" (the clean training
  images first, then the injected ones in draw order: InReaCh's seeds are the pool's first images).
Candidates are sorted by image_id and drawn with an RNG seeded only by (seed, crc32(key)), so the same
(dataset/category key, settings, seed) gives the same split on any machine. Draws take a prefix of one
permutation, so a smaller ratio's injected set is a subset of a larger one's at the same seed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

from funad.data.records import DatasetError, ImageRecord
from rundir import PROTOCOL_DEFAULTS

SHORTFALL_POLICIES = ("error", "cap", "augment")
#: where injected images come from
SOURCES = ("anomalies", "all_test")
#: what a ratio is a share of
RATIO_OF = ("normal", "train")
#: the order of the training pool
POOL_ORDERS = ("sorted", "appended")
#: the defaults of the split policy (one home; the harness imports them)
DEFAULTS = {"shortfall": "cap", "min_test_anomalies": 10,
            "source": PROTOCOL_DEFAULTS["contamination_source"], "ratio_of": PROTOCOL_DEFAULTS["ratio_of"],
            "pool_order": PROTOCOL_DEFAULTS["pool_order"]}


@dataclass
class Split:
    """A contaminated split plus the facts recorded with every result row."""

    train: list[ImageRecord]
    test: list[ImageRecord]
    #: ids of everything injected into train, augmented copies ("<id>#aug<k>") included; sorted.
    injected_ids: list[str]
    n_train_normal: int
    n_injected: int
    n_test_normal: int
    n_test_anomalous: int
    requested_ratio: float | None
    requested_count: int | None
    achieved_ratio: float
    #: None when the request was met; "cap" or "augment" when the shortfall policy had to act.
    shortfall_applied: str | None
    #: injected images that are normal (source "all_test" only; they count as normal pool images)
    n_injected_normal: int = 0
    source: str = "anomalies"
    ratio_of: str = "normal"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DatasetError(f"contamination: unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _validate(
    ratio: float | None, count: int | None, seed: int, overlap: bool, shortfall: str, min_test: int
) -> None:
    if (ratio is None) == (count is None):
        raise DatasetError(
            f"contamination: give exactly one of ratio or count (got ratio={ratio}, count={count})"
        )
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
            raise DatasetError(f"contamination: ratio must be a number in [0, 1), got {ratio!r}")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise DatasetError(f"contamination: count must be an integer >= 0, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DatasetError(f"contamination: seed must be an integer >= 0, got {seed!r}")
    if not isinstance(overlap, bool):
        raise DatasetError(f"contamination: overlap must be true or false, got {overlap!r}")
    _choice("shortfall policy", shortfall, SHORTFALL_POLICIES)
    if isinstance(min_test, bool) or not isinstance(min_test, int | np.integer) or min_test < 0:
        raise DatasetError(f"contamination: min_test_anomalies must be an integer >= 0, got {min_test!r}")


def make_rng(seed: int, key: str) -> np.random.Generator:
    """The split RNG: PCG64 from SeedSequence([seed, crc32(key)]), identical on every platform."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))]))


def requested_count(ratio: float, n_train_normal: int, ratio_of: str = "normal") -> int:
    """How many images a ratio asks for (see the module docstring's `ratio_of`)."""
    _choice("ratio_of", ratio_of, RATIO_OF)
    share = float(ratio) if ratio_of == "normal" else float(ratio) / (1.0 - float(ratio))
    return math.floor(share * n_train_normal + 1e-9)


def contaminate(
    records: list[ImageRecord],
    *,
    ratio: float | None = None,
    count: int | None = None,
    seed: int = 0,
    overlap: bool = False,
    shortfall: str = DEFAULTS["shortfall"],
    min_test_anomalies: int = DEFAULTS["min_test_anomalies"],
    key: str = "",
    source: str = DEFAULTS["source"],
    ratio_of: str = DEFAULTS["ratio_of"],
    pool_order: str = DEFAULTS["pool_order"],
) -> Split:
    """Build the noisy training set of one category.

    records: one category's train (all normal) and test records.
    ratio / count: a ratio in [0, 1) (of what: `ratio_of`), or an absolute number; exactly one.
    overlap: False removes injected images from the test set; True keeps them there.
    shortfall: what to do when more are requested than can be spared: "error", "cap" (inject what
        can be spared), "augment" (what can be spared plus affine-augmented copies up to n).
        Without overlap, min(min_test_anomalies, n_test_anomalous // 2) anomalies stay in test (and
        with source "all_test" as many normals, by the same rule).
    key: identifies dataset and category (e.g. "mvtec/bottle"), so categories draw independently.
    source, ratio_of, pool_order: see the module docstring.
    """
    _validate(ratio, count, seed, overlap, shortfall, min_test_anomalies)
    _choice("source", source, SOURCES)
    _choice("ratio_of", ratio_of, RATIO_OF)
    _choice("pool_order", pool_order, POOL_ORDERS)
    if source == "all_test" and shortfall == "augment":
        raise DatasetError(
            "contamination: shortfall 'augment' makes perturbed copies of anomalies; it does not apply to "
            "source 'all_test' (allowed there: error, cap)"
        )
    where = f"contamination[{key or 'no key'}]"
    if not records:
        raise DatasetError(f"{where}: no records to split")
    train = sorted((r for r in records if r.split == "train"), key=lambda r: r.image_id)
    test = sorted((r for r in records if r.split == "test"), key=lambda r: r.image_id)
    bad = [r.image_id for r in records if r.split not in ("train", "test")]
    if bad:
        raise DatasetError(f"{where}: records with a split other than train/test: {', '.join(bad[:5])}")
    labelled = [r.image_id for r in train if r.label != 0]
    if labelled:
        raise DatasetError(
            f"{where}: training records must all be normal; anomalous: {', '.join(labelled[:5])}"
        )
    n_train_normal = len(train)
    if n_train_normal == 0:
        raise DatasetError(f"{where}: no training images to contaminate")
    anomalies = [r for r in test if r.label == 1]
    pool = anomalies if source == "anomalies" else test

    n = requested_count(ratio, n_train_normal, ratio_of) if ratio is not None else int(count)  # type: ignore[arg-type]
    rng = make_rng(seed, key)
    order = rng.permutation(len(pool)).tolist()
    spare = _spare(pool, order, overlap, int(min_test_anomalies))
    n_draw, applied = n, None
    if n > spare:
        if shortfall == "error":
            raise DatasetError(
                f"{where}: {n} images requested (ratio {ratio} of {ratio_of}, count {count}, "
                f"{n_train_normal} train normals, source {source}) but only {spare} of {len(pool)} test "
                f"images can be spared (overlap={overlap}, min_test_anomalies={min_test_anomalies}); "
                "shortfall policy 'error'"
            )
        if shortfall == "augment" and n > 0 and spare == 0:
            raise DatasetError(
                f"{where}: {n} anomalies requested but none of {len(anomalies)} test anomalies can be "
                "spared, so there is nothing to augment"
            )
        n_draw, applied = spare, shortfall

    drawn = [pool[i] for i in order[:n_draw]]
    injected: list[ImageRecord] = list(drawn)
    if applied == "augment":
        n_copies = n - n_draw
        aug_seeds = rng.integers(0, 2**31 - 1, size=n_copies).tolist()
        for k in range(n_copies):
            src = drawn[k % len(drawn)]
            injected.append(replace(src, image_id=f"{src.image_id}#aug{k}", augment=int(aug_seeds[k])))

    injected_ids = sorted(r.image_id for r in injected)
    if not overlap:
        gone = {r.image_id for r in drawn}
        test = [r for r in test if r.image_id not in gone]
    new_train = train + injected
    if pool_order == "sorted":
        new_train.sort(key=lambda r: r.image_id)
    n_normal_injected = sum(1 for r in injected if r.label == 0)
    n_anomalous_injected = len(injected) - n_normal_injected
    normals = n_train_normal + n_normal_injected
    achieved = n_anomalous_injected / (normals if ratio_of == "normal" else normals + n_anomalous_injected)
    return Split(
        train=new_train,
        test=test,
        injected_ids=injected_ids,
        n_train_normal=n_train_normal,
        n_injected=len(injected),
        n_test_normal=sum(1 for r in test if r.label == 0),
        n_test_anomalous=sum(1 for r in test if r.label == 1),
        requested_ratio=None if ratio is None else float(ratio),
        requested_count=None if count is None else int(count),
        achieved_ratio=achieved,
        shortfall_applied=applied,
        n_injected_normal=n_normal_injected,
        source=source,
        ratio_of=ratio_of,
    )


def capacity(records: list[ImageRecord], *, overlap: bool = False, source: str = DEFAULTS["source"],
             min_test_anomalies: int = DEFAULTS["min_test_anomalies"]) -> int:
    """How many test images a category can give to its training pool without a shortfall (for
    source "all_test" an upper bound: where a draw stops depends on its order)."""
    test = [r for r in records if r.split == "test"]
    pool = [r for r in test if r.label == 1] if source == "anomalies" else test
    if overlap:
        return len(pool)
    per_label = (sum(1 for r in pool if r.label == label) for label in (0, 1))
    return sum(n - min(min_test_anomalies, n // 2) for n in per_label)


def _spare(pool: list[ImageRecord], order: list[int], overlap: bool, min_test: int) -> int:
    """The longest prefix of the draw order that leaves enough of the test set to test on.

    Without overlap, min(min_test, n // 2) anomalies (and, when normals are drawn too, as many normals)
    must stay in the test set; with overlap every image can be drawn.
    """
    if overlap:
        return len(pool)
    left = {label: sum(1 for r in pool if r.label == label) for label in (0, 1)}
    keep = {label: min(min_test, n // 2) for label, n in left.items()}
    for taken, i in enumerate(order):
        label = pool[i].label
        if left[label] - 1 < keep[label]:
            return taken
        left[label] -= 1
    return len(order)
