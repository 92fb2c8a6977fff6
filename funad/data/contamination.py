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
from typing import Any

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


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DatasetError(f"contamination: seed must be an integer >= 0, got {seed!r}")


def make_rng(seed: int, key: str) -> np.random.Generator:
    """The split RNG: PCG64 from SeedSequence([seed, crc32(key)]), identical on every platform."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode("utf-8"))]))


def requested_count(ratio: float, n_train_normal: int, ratio_of: str = "normal") -> int:
    """How many images a ratio asks for (see the module docstring's `ratio_of`)."""
    _choice("ratio_of", ratio_of, RATIO_OF)
    share = float(ratio) if ratio_of == "normal" else float(ratio) / (1.0 - float(ratio))
    return math.floor(share * n_train_normal + 1e-9)


def has_own_noisy_split(records: list[ImageRecord]) -> bool:
    """Whether a category's training records already hold anomalous images (a dataset's own noisy
    split, e.g. a Real-IAD FUIAD JSON): such a split is used as it is."""
    return any(r.split == "train" and r.label != 0 for r in records)


@dataclass(frozen=True)
class CategoryCounts:
    """The image counts of one category that decide what a split rule can do with it."""

    train_normal: int
    test_normal: int
    test_anomalous: int

    @classmethod
    def of(cls, records: list[ImageRecord]) -> CategoryCounts:
        test = [r for r in records if r.split == "test"]
        return cls(
            train_normal=sum(1 for r in records if r.split == "train" and r.label == 0),
            test_normal=sum(1 for r in test if r.label == 0),
            test_anomalous=sum(1 for r in test if r.label == 1),
        )


@dataclass(frozen=True)
class Amounts:
    """What a split rule does to one category, before anything is drawn: the sizes of the cell."""

    requested: int  # images the ratio or count asks for
    spare: int  # test images that can be given to the pool without a shortfall
    drawn: int  # real test images that join the pool
    copies: int  # perturbed copies on top (shortfall "augment")
    shortfall_applied: str | None  # None when the request fits
    pool: int  # training pool size
    test: int  # test set size
    achieved_ratio: float


@dataclass(frozen=True)
class SplitRule:
    """How a cell's training pool and test set are made: the one home of the contamination rule.

    Exactly one of `ratio` (of what: `ratio_of`) and `count`. `min_test_anomalies` None means the
    module default (DEFAULTS), kept apart from an explicit value because the cell id hashes it.
    `split_list` / `split_list_sha256`: a training list (funad.data.splits) instead of a draw; the
    sha256 of its bytes defines the cell, not its path (which differs between machines).
    Spec validation, the dry run's feasibility, the trial and the GPU-hours estimate all ask this
    object; the constructor checks every value (DatasetError naming it).
    """

    ratio: float | None = None
    count: int | None = None
    overlap: bool = False
    shortfall: str = DEFAULTS["shortfall"]
    min_test_anomalies: int | None = None
    source: str = DEFAULTS["source"]
    ratio_of: str = DEFAULTS["ratio_of"]
    pool_order: str = DEFAULTS["pool_order"]
    split_list: str | None = None
    split_list_sha256: str | None = None

    def __post_init__(self) -> None:
        ratio, count = self.ratio, self.count
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
        if not isinstance(self.overlap, bool):
            raise DatasetError(f"contamination: overlap must be true or false, got {self.overlap!r}")
        _choice("shortfall policy", self.shortfall, SHORTFALL_POLICIES)
        keep = self.min_test_anomalies
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int | np.integer)
                                 or keep < 0):
            raise DatasetError(f"contamination: min_test_anomalies must be an integer >= 0, got {keep!r}")
        _choice("source", self.source, SOURCES)
        _choice("ratio_of", self.ratio_of, RATIO_OF)
        _choice("pool_order", self.pool_order, POOL_ORDERS)
        if self.source == "all_test" and self.shortfall == "augment":
            raise DatasetError(
                "contamination: shortfall 'augment' makes perturbed copies of anomalies; it does not apply "
                "to source 'all_test' (allowed there: error, cap)"
            )

    # ---- what the rule asks of a category ---------------------------------------------------------
    @property
    def keep(self) -> int:
        """Test anomalies (and, with source all_test, normals) that stay to test on, at most half."""
        given = self.min_test_anomalies
        return DEFAULTS["min_test_anomalies"] if given is None else int(given)

    @property
    def injects(self) -> bool:
        """Whether the rule asks for any injected image."""
        return (self.ratio or 0) != 0 or (self.count or 0) != 0

    def requested(self, n_train_normal: int) -> int:
        """How many images the ratio or count asks for."""
        if self.ratio is None:
            return int(self.count or 0)
        return requested_count(self.ratio, n_train_normal, self.ratio_of)

    def share(self, n_injected: int, n_train_normal: int) -> float:
        """The ratio that `n_injected` injected anomalies make, by the ratio definition."""
        denominator = n_train_normal if self.ratio_of == "normal" else n_train_normal + n_injected
        return n_injected / denominator

    def capacity(self, counts: CategoryCounts) -> int:
        """How many test images a category can give to its pool without a shortfall (for source
        "all_test" an upper bound: where a draw stops depends on its order)."""
        per_label = (counts.test_anomalous,) if self.source == "anomalies" else (
            counts.test_normal, counts.test_anomalous)
        if self.overlap:
            return sum(per_label)
        return sum(n - min(self.keep, n // 2) for n in per_label)

    def allows(self, shortfall: str) -> bool:
        """Whether a shortfall policy applies to this rule's source ("augment" copies anomalies)."""
        return not (shortfall == "augment" and self.source == "all_test")

    def amounts(self, counts: CategoryCounts) -> Amounts:
        """The cell's sizes for one category (source "anomalies": exact; "all_test": the capacity is
        an upper bound). Raises DatasetError where the shortfall policy refuses."""
        n = self.requested(counts.train_normal)
        spare = self.capacity(counts)
        drawn, copies, applied = n, 0, None
        if n > spare:
            self._refuse_shortfall(n, spare, counts.test_anomalous, "contamination", counts.train_normal)
            drawn, applied = spare, self.shortfall
            copies = n - spare if self.shortfall == "augment" else 0
        test = counts.test_normal + counts.test_anomalous - (0 if self.overlap else drawn)
        return Amounts(requested=n, spare=spare, drawn=drawn, copies=copies, shortfall_applied=applied,
                       pool=counts.train_normal + drawn + copies, test=test,
                       achieved_ratio=self.share(drawn + copies, counts.train_normal))

    def _refuse_shortfall(self, n: int, spare: int, n_anomalies: int, where: str,
                          n_train_normal: int | None = None, n_pool: int | None = None) -> None:
        """Raise where the shortfall policy refuses a request of n images with only `spare` to give."""
        if self.shortfall == "error":
            normals = "" if n_train_normal is None else f", {n_train_normal} train normals"
            of = "" if n_pool is None else f" of {n_pool}"
            raise DatasetError(
                f"{where}: {n} images requested (ratio {self.ratio} of {self.ratio_of}, count {self.count}"
                f"{normals}, source {self.source}) but only {spare}{of} test images can be spared "
                f"(overlap={self.overlap}, min_test_anomalies={self.keep}); shortfall policy 'error'"
            )
        if self.shortfall == "augment" and n > 0 and spare == 0:
            raise DatasetError(
                f"{where}: {n} anomalies requested but none of {n_anomalies} test anomalies can be "
                "spared, so there is nothing to augment"
            )

    def own_split_problem(self) -> str | None:
        """Why this rule cannot run on a dataset's own noisy split, or None (a list, or nothing injected)."""
        if self.split_list is None and self.injects:
            return ("this split already holds anomalous training images (the dataset's own noisy training "
                    "set); inject nothing more (allowed: ratio 0 or count 0)")
        return None

    # ---- the split itself ------------------------------------------------------------------------
    def split(self, records: list[ImageRecord], *, seed: int, kind: str, category: str) -> tuple[Split, str]:
        """The cell's training pool and test set, and where they came from: "drawn", "dataset:<kind>"
        (a dataset's own noisy split, used as it is) or the list's "<path> sha256:<hex>".

        A training list wins; a dataset that ships its own noisy training set is used as it is;
        otherwise the split is drawn with the RNG keyed by "<kind>/<category>".
        """
        from funad.data import splits

        if self.split_list is not None:
            listed = splits.read_split_list(self.split_list)
            planned = self.split_list_sha256
            if planned is not None and listed.sha256 != planned:
                raise DatasetError(f"{self.split_list}: the list changed since the sweep was planned "
                                   f"(sha256 {listed.sha256[:12]}..., planned {planned[:12]}...)")
            split = splits.split_from_list(records, listed, category, overlap=self.overlap,
                                           pool_order=self.pool_order, ratio=self.ratio, count=self.count)
            return split, listed.source
        if has_own_noisy_split(records):
            problem = self.own_split_problem()
            if problem is not None:
                raise DatasetError(f"{kind}/{category}: {problem}")
            return splits.split_from_records(records, pool_order=self.pool_order), f"dataset:{kind}"
        return self.draw(records, seed=seed, key=f"{kind}/{category}"), "drawn"

    def draw(self, records: list[ImageRecord], *, seed: int, key: str = "") -> Split:
        """Draw the noisy training set of one category (its train records all normal).

        key identifies dataset and category (e.g. "mvtec/bottle"), so categories draw independently.
        Without overlap, min(keep, n // 2) test anomalies (and with source "all_test" as many normals)
        stay in the test set; a larger request is a shortfall, handled by the policy: "error", "cap"
        (inject what can be spared) or "augment" (what can be spared plus affine-augmented copies).
        """
        _check_seed(seed)
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
        pool = anomalies if self.source == "anomalies" else test

        n = self.requested(n_train_normal)
        rng = make_rng(seed, key)
        order = rng.permutation(len(pool)).tolist()
        spare = _spare(pool, order, self.overlap, self.keep)
        n_draw, applied = n, None
        if n > spare:
            self._refuse_shortfall(n, spare, len(anomalies), where, n_train_normal, len(pool))
            n_draw, applied = spare, self.shortfall

        drawn = [pool[i] for i in order[:n_draw]]
        injected: list[ImageRecord] = list(drawn)
        if applied == "augment":
            n_copies = n - n_draw
            aug_seeds = rng.integers(0, 2**31 - 1, size=n_copies).tolist()
            for k in range(n_copies):
                src = drawn[k % len(drawn)]
                injected.append(replace(src, image_id=f"{src.image_id}#aug{k}", augment=int(aug_seeds[k])))

        injected_ids = sorted(r.image_id for r in injected)
        if not self.overlap:
            gone = {r.image_id for r in drawn}
            test = [r for r in test if r.image_id not in gone]
        new_train = train + injected
        if self.pool_order == "sorted":
            new_train.sort(key=lambda r: r.image_id)
        n_normal_injected = sum(1 for r in injected if r.label == 0)
        n_anomalous_injected = len(injected) - n_normal_injected
        return Split(
            train=new_train,
            test=test,
            injected_ids=injected_ids,
            n_train_normal=n_train_normal,
            n_injected=len(injected),
            n_test_normal=sum(1 for r in test if r.label == 0),
            n_test_anomalous=sum(1 for r in test if r.label == 1),
            requested_ratio=None if self.ratio is None else float(self.ratio),
            requested_count=None if self.count is None else int(self.count),
            achieved_ratio=self.share(n_anomalous_injected, n_train_normal + n_normal_injected),
            shortfall_applied=applied,
            n_injected_normal=n_normal_injected,
            source=self.source,
            ratio_of=self.ratio_of,
        )

    # ---- how the rule is recorded ----------------------------------------------------------------
    def defining_values(self) -> dict[str, Any]:
        """The values that define a cell (its id hashes them): every field but the list's path."""
        return {
            "ratio": None if self.ratio is None else float(self.ratio),
            "count": None if self.count is None else int(self.count),
            "overlap": bool(self.overlap),
            "shortfall": self.shortfall,
            "min_test_anomalies": None if self.min_test_anomalies is None else int(self.min_test_anomalies),
            "source": self.source,
            "ratio_of": self.ratio_of,
            "pool_order": self.pool_order,
            "split_list_sha256": self.split_list_sha256,
        }

    def row_values(self) -> dict[str, Any]:
        """The rule as the run directory's cell columns record it (docs/contract.md)."""
        return {
            "ratio": None if self.ratio is None else float(self.ratio),
            "overlap": bool(self.overlap),
            "requested_count": None if self.count is None else int(self.count),
            "shortfall": self.shortfall,
            "contamination_source": "list" if self.split_list is not None else self.source,
            "ratio_of": self.ratio_of,
            "pool_order": self.pool_order,
            "split_list": self.split_list,
        }


def contaminate(
    records: list[ImageRecord],
    *,
    ratio: float | None = None,
    count: int | None = None,
    seed: int = 0,
    key: str = "",
    **rule: Any,
) -> Split:
    """`SplitRule(ratio=..., count=..., **rule).draw(records, seed=seed, key=key)`: one drawn split."""
    return SplitRule(ratio=ratio, count=count, **rule).draw(records, seed=seed, key=key)


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
