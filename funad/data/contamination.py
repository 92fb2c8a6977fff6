"""The noisy training set: inject test anomalies into train (protocol.md, "Contamination").

n = floor(ratio * N_train_normal) (or an absolute `count`) anomalies are drawn uniformly from
the test anomalies, sorted by image_id, with an RNG seeded only by (seed, crc32(key)); so the same
(dataset/category key, ratio, seed) gives the same split on any machine. Draws use one
permutation, so a smaller ratio's injected set is a subset of a larger one's at the same seed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

from funad.data.records import DatasetError, ImageRecord

SHORTFALL_POLICIES = ("error", "cap", "augment")


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
    if shortfall not in SHORTFALL_POLICIES:
        raise DatasetError(
            f"contamination: unknown shortfall policy {shortfall!r}; allowed: {', '.join(SHORTFALL_POLICIES)}"
        )
    if isinstance(min_test, bool) or not isinstance(min_test, int | np.integer) or min_test < 0:
        raise DatasetError(f"contamination: min_test_anomalies must be an integer >= 0, got {min_test!r}")


def make_rng(seed: int, key: str) -> np.random.Generator:
    """The split RNG: PCG64 from SeedSequence([seed, crc32(key)]), identical on every platform."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))]))


def contaminate(
    records: list[ImageRecord],
    *,
    ratio: float | None = None,
    count: int | None = None,
    seed: int = 0,
    overlap: bool = False,
    shortfall: str = "cap",
    min_test_anomalies: int = 10,
    key: str = "",
) -> Split:
    """Build the noisy training set of one category.

    records: one category's train (all normal) and test records.
    ratio / count: anomaly-to-normal ratio in [0, 1), or an absolute number; exactly one.
    overlap: False removes injected images from the test set; True keeps them there.
    shortfall: what to do when more are requested than can be spared: "error", "cap" (inject what
        can be spared), "augment" (what can be spared plus affine-augmented copies up to n).
        Without overlap, min(min_test_anomalies, n_test_anomalous // 2) anomalies stay in test.
    key: identifies dataset and category (e.g. "mvtec/bottle"), so categories draw independently.
    """
    _validate(ratio, count, seed, overlap, shortfall, min_test_anomalies)
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

    n = math.floor(float(ratio) * n_train_normal + 1e-9) if ratio is not None else int(count)  # type: ignore[arg-type]
    keep = 0 if overlap else min(int(min_test_anomalies), len(anomalies) // 2)
    spare = len(anomalies) - keep
    n_draw, applied = n, None
    if n > spare:
        if shortfall == "error":
            raise DatasetError(
                f"{where}: {n} anomalies requested (ratio {ratio}, count {count}, {n_train_normal} train "
                f"normals) but only {spare} of {len(anomalies)} test anomalies can be spared "
                f"({keep} stay for testing, overlap={overlap}); shortfall policy 'error'"
            )
        if shortfall == "augment" and n > 0 and spare == 0:
            raise DatasetError(
                f"{where}: {n} anomalies requested but none of {len(anomalies)} test anomalies can be "
                "spared, so there is nothing to augment"
            )
        n_draw, applied = spare, shortfall

    rng = make_rng(seed, key)
    order = rng.permutation(len(anomalies))[:n_draw]
    drawn = [anomalies[i] for i in order.tolist()]
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
    new_train = sorted(train + injected, key=lambda r: r.image_id)
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
        achieved_ratio=len(injected) / n_train_normal,
        shortfall_applied=applied,
    )
