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
from pathlib import Path

from funad.data.contamination import capacity, requested_count
from funad.data.records import ImageRecord
from funad.run import CellConfig, open_dataset
from harness.cells import Cell

Amount = tuple[float | None, int | None]


def _share(spare: int, n_normal: int, ratio_of: str) -> float:
    """The ratio that `spare` injected images make, by the ratio definition."""
    return spare / n_normal if ratio_of == "normal" else spare / (n_normal + spare)


def category_lines(records: list[ImageRecord], cfg: CellConfig, amounts: list[Amount]) -> Iterator[str]:
    n_normal = sum(1 for r in records if r.split == "train" and r.label == 0)
    n_anom = sum(1 for r in records if r.split == "test" and r.label == 1)
    keep = {} if cfg.min_test_anomalies is None else {"min_test_anomalies": cfg.min_test_anomalies}
    spare = capacity(records, overlap=cfg.overlap, source=cfg.source, **keep)
    ratios = bool(amounts) and amounts[0][0] is not None
    most = f"ratio {_share(spare, n_normal, cfg.ratio_of):.3f}" if ratios else f"count {spare}"
    lines = []
    for ratio, count in amounts:
        n = requested_count(ratio, n_normal, cfg.ratio_of) if ratio is not None else int(count or 0)
        if n <= spare:
            continue
        policies = {
            "cap": f"{spare} (achieved ratio {_share(spare, n_normal, cfg.ratio_of):.3f})",
            "augment": f"{spare} + {n - spare} perturbed copies" if cfg.source == "anomalies"
            else "not for source all_test",
            "error": "the cell fails",
        }
        text = " | ".join(f"{'*' if p == cfg.shortfall else ''}{p}: {v}" for p, v in policies.items())
        what = f"ratio {ratio:g}" if ratio is not None else f"count {count}"
        lines.append(f"    {what}: wants {n}, {spare} can be spared -> {text}")
    fits = "" if lines else ", every requested amount fits"
    yield (f"  {cfg.category}: {n_normal} normal training images, {n_anom} test anomalies -> up to "
           f"{most}{fits}")
    yield from lines


def feasibility_lines(
    cells: list[Cell], amounts: list[Amount], data_cache: Path | None = None
) -> Iterator[str]:
    """Per dataset (and overlap setting) and category; cells trained from a list are not drawn."""
    groups: dict[tuple[str, bool], dict[str, CellConfig]] = {}
    for c in cells:
        if c.config.split_list is None:
            key = (str(c.config.dataset), c.config.overlap)
            groups.setdefault(key, {}).setdefault(c.config.category, c.config)
    for by_category in groups.values():
        first = next(iter(by_category.values()))
        drawn = "test anomalies" if first.source == "anomalies" else "the whole test set"
        yield (f"contamination feasibility, {first.dataset['kind']} (ratio of {first.ratio_of}, drawn from "
               f"{drawn}, overlap {'yes' if first.overlap else 'no'}):")
        dataset = open_dataset(first.dataset, data_cache)
        for category, cfg in sorted(by_category.items()):
            yield from category_lines(dataset.records(category), cfg, amounts)
