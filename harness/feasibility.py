"""What each requested contamination amount means for each category, before anything runs (--dry-run).

Small categories cannot spare many test anomalies (VisA keeps 100 per class, MVTec's hazelnut 70), so a
no-overlap ratio near 0.1-0.2 may need more than a category has. For every dataset and category this says
the largest ratio (or count) it can give without a shortfall, and for every requested amount beyond it
what each shortfall policy would do: `cap` (inject what can be spared, record the achieved ratio),
`augment` (fill up with perturbed copies of anomalies) or `error` (the cell fails); the sweep's own
policy is marked with a `*`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from funad.data.contamination import SHORTFALL_POLICIES, CategoryCounts, SplitRule
from funad.data.records import DatasetError, ImageRecord
from funad.run import open_dataset
from harness.cells import Cell


def category_lines(
    category: str, records: list[ImageRecord], rule: SplitRule, amounts: list[SplitRule]
) -> Iterator[str]:
    """One category: the most it can spare, then each requested amount it cannot meet, with what every
    shortfall policy would do (the rule's own marked `*`)."""
    counts = CategoryCounts.of(records)
    spare = rule.capacity(counts)
    by_ratio = rule.ratio is not None
    most = f"ratio {rule.share(spare, counts.train_normal):.3f}" if by_ratio else f"count {spare}"
    lines = []
    for amount in amounts:
        n = amount.requested(counts.train_normal)
        if n <= spare:
            continue
        policies = {}
        for policy in SHORTFALL_POLICIES:
            if not amount.allows(policy):
                policies[policy] = f"not for source {amount.source}"
            elif policy == "error":
                policies[policy] = "the cell fails"
            else:
                try:
                    got = replace(amount, shortfall=policy).amounts(counts)
                except DatasetError:  # augment with nothing to copy
                    policies[policy] = "nothing to augment (no anomaly can be spared)"
                    continue
                policies[policy] = (f"{got.drawn} + {got.copies} perturbed copies" if got.copies
                                    else f"{got.drawn} (achieved ratio {got.achieved_ratio:.3f})")
        order = ("cap", "augment", "error")
        text = " | ".join(f"{'*' if p == rule.shortfall else ''}{p}: {policies[p]}" for p in order)
        what = f"ratio {amount.ratio:g}" if amount.ratio is not None else f"count {amount.count}"
        lines.append(f"    {what}: wants {n}, {spare} can be spared -> {text}")
    fits = "" if lines else ", every requested amount fits"
    yield (f"  {category}: {counts.train_normal} normal training images, "
           f"{counts.test_anomalous} test anomalies -> up to {most}{fits}")
    yield from lines


def feasibility_lines(cells: list[Cell], data_cache: Path | None = None) -> Iterator[str]:
    """Per dataset (and overlap setting) and category, for the amounts the cells ask; cells trained
    from a list are not drawn."""
    groups: dict[tuple[str, bool], dict[str, list[Cell]]] = {}
    for c in cells:
        if c.config.split.split_list is None:
            key = (str(c.config.dataset), c.config.split.overlap)
            groups.setdefault(key, {}).setdefault(c.config.category, []).append(c)
    for by_category in groups.values():
        first = next(iter(by_category.values()))[0].config
        rule = first.split
        drawn = "test anomalies" if rule.source == "anomalies" else "the whole test set"
        yield (f"contamination feasibility, {first.dataset['kind']} (ratio of {rule.ratio_of}, drawn from "
               f"{drawn}, overlap {'yes' if rule.overlap else 'no'}):")
        dataset = open_dataset(first.dataset, data_cache)
        for category, group in sorted(by_category.items()):
            amounts = list(dict.fromkeys(c.config.split for c in group))
            yield from category_lines(category, dataset.records(category), rule, amounts)
