"""The grid: a sweep spec -> cells, each with a stable id.

A cell = (dataset, category, backbone, method, method settings, ratio or count, overlap, seed).
Its id hashes exactly those values with the method's defaults filled in, so `epochs: 20` written
out and `epochs` left at its default of 20 are the same cell, in every run and on every machine
(resume depends on it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from funad.run import CellConfig

#: defaults of the split policy; a cell hashes them only when they differ (so default ids stay put)
DEFAULT_SHORTFALL = "cap"


@dataclass(frozen=True)
class Cell:
    """One trial: its id, what run_cell needs, and the values of the swept settings (hp_* columns)."""

    cell_id: str
    config: CellConfig
    hp: dict[str, Any] = field(default_factory=dict)


class FeatureJob(NamedTuple):
    """One (dataset, category, backbone) whose features every cell of it shares (also a 3-tuple)."""

    dataset: dict[str, Any]
    category: str
    backbone: dict[str, Any]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats by repr: the same bytes on every machine."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


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
    shortfall: str = DEFAULT_SHORTFALL,
    min_test_anomalies: int | None = None,
) -> str:
    """First 16 hex digits of sha256(canonical JSON of the cell's defining values).

    `settings` must have the method's defaults filled (see `filled_settings`). The split policy
    (shortfall, min_test_anomalies) joins the hash only when not at its default, because it can
    change the split; eval_every and n_map_examples do not change results and are left out.
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
    }
    if shortfall != DEFAULT_SHORTFALL:
        payload["shortfall"] = shortfall
    if min_test_anomalies is not None:
        payload["min_test_anomalies"] = int(min_test_anomalies)
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def filled_settings(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The method's full settings (defaults filled, values coerced by its Settings model), as JSON."""
    from funad.methods import method_class

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
    )


def launch_order(cells: Iterable[Cell]) -> list[str]:
    """Cell ids, the expected-longest first (then by id, so the order is reproducible).

    Starting the long cells first keeps the last minutes of a sweep from running one long cell while
    the other slots idle. The estimate is deliberately crude: a method's `epochs` setting (the
    iterative methods), 1 for the one-pass ones.
    """
    def cost(cell: Cell) -> float:
        epochs = filled_settings(cell.config.method, cell.config.params).get("epochs", 1)
        return float(epochs) if isinstance(epochs, int | float) else 1.0

    return [c.cell_id for c in sorted(cells, key=lambda c: (-cost(c), c.cell_id))]


def _is_list_type(annotation: Any) -> bool:
    """Whether a Settings field itself holds a list/tuple (then only a list of lists is an axis)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_list_type(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def list_valued_settings(method: str) -> set[str]:
    """Names of a method's settings whose values are lists (not grid axes when given as a flat list)."""
    try:
        from funad.methods import method_class

        fields = method_class(method).Settings.model_fields
    except (KeyError, ImportError):
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


def _dataset_dict(ds: Any) -> dict[str, Any]:
    """Spec dataset entry -> the cell's dataset dict: kind, root, loader options (no categories)."""
    d = ds.model_dump(mode="json") if hasattr(ds, "model_dump") else dict(ds)
    d.pop("categories", None)
    return {"kind": d.pop("kind"), "root": d.pop("root", None), **d}


def _categories(ds: Any, dataset: dict[str, Any], data_cache: Any = None) -> list[str]:
    wanted = ds.categories if hasattr(ds, "categories") else ds.get("categories", "all")
    from funad.run import open_dataset

    return open_dataset(dataset, data_cache).resolve_categories(wanted)


def backbone_dict(backbone: Any) -> dict[str, Any]:
    """All backbone fields as plain JSON values: the given ones, with BackboneConfig's defaults
    filled when funad.features is importable (so an explicit default hashes like an omitted one)."""
    given = backbone.model_dump(mode="json") if hasattr(backbone, "model_dump") else dict(backbone)
    given = {k: v for k, v in given.items() if v is not None}
    try:
        config_cls = backbone_config_class()
    except ImportError:
        return given
    full = config_cls(**given).model_dump(mode="json")
    # settings added later hash only when set, so the ids of existing cells stay put
    return {k: v for k, v in full.items() if not (k in _HASH_WHEN_SET and v == _HASH_WHEN_SET[k])}


#: backbone settings that enter the cell id only when they differ from this value
_HASH_WHEN_SET: dict[str, Any] = {"border_context": False}


def backbone_config_class() -> type:
    """funad's BackboneConfig (re-exported by funad.features; defined in funad.backbones)."""
    try:
        from funad.features import BackboneConfig
    except ImportError:
        from funad.backbones import BackboneConfig
    return BackboneConfig


def expand_cells(spec: Any, *, data_cache: Any = None) -> list[Cell]:
    """datasets x categories x methods x method grid x ratios (or counts) x overlap x seeds.

    `categories: all` opens the dataset to list them (built-in sets are generated on first use).
    """
    c = spec.contamination
    amounts: list[tuple[float | None, int | None]] = (
        [(None, int(n)) for n in c.counts] if c.counts is not None else [(float(r), None) for r in c.ratios]
    )
    overlaps = c.overlap if isinstance(c.overlap, list) else [c.overlap]
    backbone = backbone_dict(spec.backbone)
    cells: list[Cell] = []
    seen: set[str] = set()
    for ds in spec.datasets:
        dataset = _dataset_dict(ds)
        for category in _categories(ds, dataset, data_cache):
            for method, settings in spec.methods.items():
                for params, hp in method_grid(method, dict(settings or {})):
                    full = filled_settings(method, params)
                    for (ratio, count), overlap, seed in itertools.product(amounts, overlaps, spec.seeds):
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
