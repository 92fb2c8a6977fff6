"""The grid: a sweep spec -> cells, each with a stable id.

A cell = (dataset, category, backbone, method, method settings, ratio or count, overlap, seed, and
the split policy). Its id hashes exactly those values with the defaults filled in, so `epochs: 20`
written out and `epochs` left at its default of 20 are the same cell, in every run and on every
machine (resume depends on it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, NamedTuple

from funad.data.contamination import DEFAULTS as SPLIT_DEFAULTS
from funad.data.splits import list_path, read_split_list
from funad.features import BackboneConfig
from funad.methods import method_class
from funad.run import CellConfig, open_dataset

if TYPE_CHECKING:
    from harness.spec import DatasetSpec, SweepSpec

#: Defining values that were added after cell ids were first handed out, with their defaults (a
#: dotted path names a field inside a nested value). A value at its default is left out of the
#: hashed payload, so every cell defined before the field existed keeps its id; any other value
#: joins the hash. A new defining field gets its entry here.
HASH_DEFAULTS: dict[str, Any] = {
    "shortfall": SPLIT_DEFAULTS["shortfall"],
    "min_test_anomalies": None,
    "backbone.border_context": False,
    "source": SPLIT_DEFAULTS["source"],
    "ratio_of": SPLIT_DEFAULTS["ratio_of"],
    "pool_order": SPLIT_DEFAULTS["pool_order"],
    "split_list_sha256": None,
}


@dataclass(frozen=True)
class Cell:
    """One trial: its id, what run_cell needs, and the values of the swept settings (hp_* columns)."""

    cell_id: str
    config: CellConfig
    hp: dict[str, Any] = field(default_factory=dict)


class FeatureJob(NamedTuple):
    """One (dataset, category, backbone) whose features every cell of it shares: one task of the
    features stage (harness.features_stage)."""

    dataset: dict[str, Any]
    category: str
    backbone: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.dataset['kind']}/{self.category}/{self.backbone['name']}"


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats by repr: the same bytes on every machine."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _is_default(value: Any, default: Any) -> bool:
    """Same value and same type (so 0 is not the default False, nor 0.0 the default 0)."""
    return value is default or (type(value) is type(default) and value == default)


def drop_hash_defaults(values: Mapping[str, Any], scope: str = "") -> dict[str, Any]:
    """`values` without the HASH_DEFAULTS fields that sit at their default (nested ones included)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{scope}{key}"
        if path in HASH_DEFAULTS and _is_default(value, HASH_DEFAULTS[path]):
            continue
        nested = isinstance(value, Mapping) and any(p.startswith(f"{path}.") for p in HASH_DEFAULTS)
        out[key] = drop_hash_defaults(value, f"{path}.") if nested else value
    return out


def compute_cell_id(
    *,
    dataset: dict[str, Any],
    category: str,
    backbone: dict[str, Any],
    method: str,
    settings: dict[str, Any],
    ratio: float | None,
    count: int | None,
    overlap: bool,
    seed: int,
    shortfall: str = SPLIT_DEFAULTS["shortfall"],
    min_test_anomalies: int | None = None,
    source: str = SPLIT_DEFAULTS["source"],
    ratio_of: str = SPLIT_DEFAULTS["ratio_of"],
    pool_order: str = SPLIT_DEFAULTS["pool_order"],
    split_list_sha256: str | None = None,
) -> str:
    """First 16 hex digits of sha256(canonical JSON of the cell's defining values, HASH_DEFAULTS
    fields at their default left out).

    `settings` must have the method's defaults filled (see `filled_settings`). eval_every and
    n_map_examples do not change results and are not defining values.
    """
    payload: dict[str, Any] = {
        "dataset": dataset,
        "category": category,
        "backbone": backbone,
        "method": method,
        "settings": settings,
        "ratio": None if ratio is None else float(ratio),
        "count": None if count is None else int(count),
        "overlap": bool(overlap),
        "seed": int(seed),
        "shortfall": shortfall,
        "min_test_anomalies": None if min_test_anomalies is None else int(min_test_anomalies),
        "source": source,
        "ratio_of": ratio_of,
        "pool_order": pool_order,
        # a training list defines the cell by its content, not by its path
        "split_list_sha256": split_list_sha256,
    }
    text = canonical_json(drop_hash_defaults(payload))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def filled_settings(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The method's full settings (defaults filled, values coerced by its Settings model), as JSON."""
    return method_class(method).Settings(**params).model_dump(mode="json")


def config_cell_id(cfg: CellConfig, settings: dict[str, Any]) -> str:
    """`compute_cell_id` of a cell's config, with the method's filled `settings`."""
    return compute_cell_id(
        dataset=cfg.dataset,
        category=cfg.category,
        backbone=cfg.backbone,
        method=cfg.method,
        settings=settings,
        ratio=cfg.ratio,
        count=cfg.count,
        overlap=cfg.overlap,
        seed=cfg.seed,
        shortfall=cfg.shortfall,
        min_test_anomalies=cfg.min_test_anomalies,
        source=cfg.source,
        ratio_of=cfg.ratio_of,
        pool_order=cfg.pool_order,
        split_list_sha256=cfg.split_list_sha256,
    )


def launch_order(cells: Iterable[Cell]) -> list[str]:
    """Cell ids, the expected-longest first (then by id, so the order is reproducible).

    Starting the long cells first keeps the last minutes of a sweep from running one long cell while
    the other slots idle. The estimate is each method's own cost hook (`Method.cost(settings)`).
    """

    def cost(cell: Cell) -> float:
        cls = method_class(cell.config.method)
        return float(cls.cost(cls.Settings(**cell.config.params)))

    return [c.cell_id for c in sorted(cells, key=lambda c: (-cost(c), c.cell_id))]


def _is_list_type(annotation: Any) -> bool:
    """Whether a Settings field itself holds a list/tuple (then only a list of lists is an axis)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        return True
    if origin in (typing.Union, UnionType):
        return any(_is_list_type(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def list_valued_settings(method: str) -> set[str]:
    """Names of a method's settings whose values are lists (not grid axes when given as a flat list);
    empty for a method that is not registered (validation reports that)."""
    try:
        fields = method_class(method).Settings.model_fields
    except KeyError:
        return set()
    return {name for name, f in fields.items() if _is_list_type(f.annotation)}


def is_axis(method: str, key: str, value: Any, list_valued: set[str] | None = None) -> bool:
    """A list is a grid axis, except a flat list for a list-valued setting (that is one value)."""
    if not isinstance(value, list):
        return False
    if key in (list_valued if list_valued is not None else list_valued_settings(method)):
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


def method_axes(method: str, settings: dict[str, Any]) -> dict[str, list[Any]]:
    """The swept settings of one method: name -> list of values (in the order given)."""
    lv = list_valued_settings(method)
    return {k: list(v) for k, v in settings.items() if is_axis(method, k, v, lv)}


def method_grid(method: str, settings: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every grid point of one method: (params as given for that point, swept values {name: value})."""
    axes = method_axes(method, settings)
    fixed = {k: v for k, v in settings.items() if k not in axes}
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        hp = dict(zip(names, combo, strict=True))
        out.append(({**fixed, **hp}, hp))
    return out


def _dataset_dict(ds: DatasetSpec) -> dict[str, Any]:
    """Spec dataset entry -> the cell's dataset dict: kind, root, loader options (no categories)."""
    d = ds.model_dump(mode="json")
    d.pop("categories")
    return {"kind": d.pop("kind"), "root": d.pop("root"), **d}


def backbone_dict(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """All backbone fields as plain JSON values, BackboneConfig's defaults filled (so an explicit
    default hashes like an omitted one); HASH_DEFAULTS fields at their default are left out."""
    given = {k: v for k, v in backbone.items() if v is not None}
    return drop_hash_defaults(BackboneConfig(**given).model_dump(mode="json"), "backbone.")


def expand_cells(spec: SweepSpec, *, data_cache: Path | None = None) -> list[Cell]:
    """datasets x categories x methods x method grid x ratios (or counts) x overlap x seeds.

    `categories: all` opens the dataset to list them (built-in sets are generated on first use,
    under data_cache).
    """
    c = spec.contamination
    amounts: list[tuple[float | None, int | None]] = (
        [(None, int(n)) for n in c.counts] if c.counts is not None else [(float(r), None) for r in c.ratios]
    )
    backbone = backbone_dict(spec.backbone.model_dump(mode="json"))
    cells: list[Cell] = []
    seen: set[str] = set()
    sha_of: dict[Path, str] = {}
    for ds in spec.datasets:
        dataset = _dataset_dict(ds)
        for category in open_dataset(dataset, data_cache).resolve_categories(ds.categories):
            for method, settings in spec.methods.items():
                for params, hp in method_grid(method, dict(settings)):
                    full = filled_settings(method, params)
                    for (ratio, count), overlap, seed in itertools.product(amounts, c.overlaps, spec.seeds):
                        listed, sha = None, None
                        if c.lists is not None:
                            path = list_path(c.lists, dataset=ds.kind, ratio=ratio, count=count, seed=seed)
                            listed = str(path.resolve())
                            if path not in sha_of:
                                sha_of[path] = read_split_list(path).sha256
                            sha = sha_of[path]
                        cfg = CellConfig(
                            dataset=dataset,
                            category=category,
                            backbone=backbone,
                            method=method,
                            params=params,
                            ratio=ratio,
                            count=count,
                            overlap=bool(overlap),
                            shortfall=c.shortfall,
                            seed=int(seed),
                            eval_every=int(spec.eval_every),
                            n_map_examples=int(spec.n_map_examples),
                            min_test_anomalies=c.min_test_anomalies,
                            source=c.source,
                            ratio_of=c.ratio_of,
                            pool_order=c.pool_order,
                            split_list=listed,
                            split_list_sha256=sha,
                        )
                        cid = config_cell_id(cfg, full)
                        if cid in seen:  # e.g. two grid points equal once defaults are filled
                            continue
                        seen.add(cid)
                        cells.append(Cell(cid, cfg, hp))
    return cells


def feature_jobs(cells: Iterable[Cell]) -> list[FeatureJob]:
    """Unique (dataset, category, backbone) of the cells, in first-seen order."""
    jobs: dict[str, FeatureJob] = {}
    for cell in cells:
        cfg = cell.config
        key = canonical_json([cfg.dataset, cfg.category, cfg.backbone])
        jobs.setdefault(key, FeatureJob(dict(cfg.dataset), cfg.category, dict(cfg.backbone)))
    return list(jobs.values())
