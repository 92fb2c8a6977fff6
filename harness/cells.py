"""The grid: a sweep spec -> cells, each with a stable id.

A cell = (dataset, category, backbone, method, method settings, ratio or count, overlap, seed, and
the split policy). Its id hashes exactly those values with the defaults filled in, so `epochs: 20`
written out and `epochs` left at its default of 20 are the same cell, in every run and on every
machine (resume depends on it).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import ValidationError

from funad.data.contamination import DEFAULTS as SPLIT_DEFAULTS
from funad.data.contamination import SplitRule
from funad.data.splits import list_path, read_split_list
from funad.features import BackboneConfig
from funad.methods import MethodSettings, method_class
from funad.run import CellConfig, open_dataset

if TYPE_CHECKING:
    from harness.spec import DatasetSpec, SweepSpec

#: Defining values that were added after cell ids were first handed out, with their defaults (a
#: dotted path names a field inside a nested value). A value at its default is left out of the
#: hashed payload, so every cell defined before the field existed keeps its id; any other value
#: joins the hash. A new defining field gets its entry here; a method setting added later is named in
#: its Settings' ADDED_LATER instead (its default is the Settings' own: see `defining_values`).
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
    """One trial: its id, its typed config (what run_cell needs), and which settings it sweeps."""

    cell_id: str
    config: CellConfig
    #: the names of the method's swept settings (their values become the hp_* columns)
    swept: tuple[str, ...] = ()

    @property
    def hp(self) -> dict[str, Any]:
        """The swept settings' values, as the validated settings hold them (JSON values)."""
        values = self.config.settings.model_dump(mode="json")
        return {name: values[name] for name in self.swept}


@dataclass(frozen=True)
class MethodPoint:
    """One grid point of a method: its validated settings and the names swept to reach it."""

    settings: MethodSettings
    swept: tuple[str, ...]


class FeatureJob(NamedTuple):
    """One (dataset, category, backbone) whose features every cell of it shares: one task of the
    features stage (harness.features_stage). extract: False when only image methods use it (they read
    the images themselves; the stage still decodes every image and mask)."""

    dataset: dict[str, Any]
    category: str
    backbone: BackboneConfig
    extract: bool = True

    @property
    def label(self) -> str:
        return f"{self.dataset['kind']}/{self.category}/{self.backbone.name}"


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


def backbone_json(backbone: BackboneConfig) -> dict[str, Any]:
    """Every backbone field as plain JSON (defaults filled, so an explicit default equals an omitted
    one), HASH_DEFAULTS fields at their default left out: the id's and the row's form."""
    return drop_hash_defaults(backbone.model_dump(mode="json"), "backbone.")


def hashed_settings(settings: MethodSettings) -> dict[str, Any]:
    """The settings as JSON, without those the method added later (its Settings' ADDED_LATER) that sit at
    their default: a cell defined before such a setting existed keeps its id."""
    out = settings.model_dump(mode="json")
    fields = type(settings).model_fields
    for name in type(settings).ADDED_LATER:
        if _is_default(getattr(settings, name), fields[name].default):
            out.pop(name)
    return out


def defining_values(cfg: CellConfig) -> dict[str, Any]:
    """The values that define a cell, as plain JSON: what its id hashes. eval_every and
    n_map_examples do not change results and are not among them."""
    return {
        "dataset": cfg.dataset,
        "category": cfg.category,
        "backbone": backbone_json(cfg.backbone),
        "method": cfg.method,
        "settings": hashed_settings(cfg.settings),
        "seed": int(cfg.seed),
        **cfg.split.defining_values(),
    }


def compute_cell_id(values: Mapping[str, Any]) -> str:
    """First 16 hex digits of sha256(canonical JSON of a cell's defining values), the HASH_DEFAULTS
    fields at their default left out (so ids handed out before such a field existed stay)."""
    text = canonical_json(drop_hash_defaults(values))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cell_id(cfg: CellConfig) -> str:
    """A cell's id, derived from its typed fields."""
    return compute_cell_id(defining_values(cfg))


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
    """Every grid point of one method as given: (params for that point, swept values {name: value})."""
    axes = method_axes(method, settings)
    fixed = {k: v for k, v in settings.items() if k not in axes}
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        hp = dict(zip(names, combo, strict=True))
        out.append(({**fixed, **hp}, hp))
    return out


def method_points(method: str, settings: dict[str, Any]) -> tuple[list[MethodPoint], list[ValidationError]]:
    """Every grid point of one method, validated by its Settings model (the one place a sweep's
    method settings are checked): the points, and the validation errors of the points that failed."""
    cls = method_class(method).Settings
    points: list[MethodPoint] = []
    errors: list[ValidationError] = []
    for params, hp in method_grid(method, settings):
        try:
            points.append(MethodPoint(cls(**params), tuple(hp)))
        except ValidationError as e:
            errors.append(e)
    return points, errors


def _dataset_dict(ds: DatasetSpec) -> dict[str, Any]:
    """Spec dataset entry -> the cell's dataset dict: kind, root, loader options (no categories)."""
    d = ds.model_dump(mode="json")
    d.pop("categories")
    return {"kind": d.pop("kind"), "root": d.pop("root"), **d}


def split_rules(spec: SweepSpec, dataset_kind: str) -> list[tuple[SplitRule, int]]:
    """The contamination section as (rule, seed) pairs for one dataset: ratios (or counts) x overlaps x
    seeds, each rule with its training list when the section names a list template (one per seed)."""
    c = spec.contamination
    amounts: list[tuple[float | None, int | None]] = (
        [(None, int(n)) for n in c.counts] if c.counts is not None else [(float(r), None) for r in c.ratios]
    )
    out = []
    for (ratio, count), overlap, seed in itertools.product(amounts, c.overlaps, spec.seeds):
        listed = None
        if c.lists is not None:
            path = list_path(c.lists, dataset=dataset_kind, ratio=ratio, count=count, seed=seed)
            listed = str(path.resolve())
        rule = SplitRule(
            ratio=ratio, count=count, overlap=bool(overlap), shortfall=c.shortfall,
            min_test_anomalies=c.min_test_anomalies, source=c.source, ratio_of=c.ratio_of,
            pool_order=c.pool_order, split_list=listed,
            split_list_sha256=None if listed is None else _list_sha256(listed),
        )
        out.append((rule, int(seed)))
    return out


@functools.lru_cache(maxsize=256)
def _list_sha256(path: str) -> str:
    return read_split_list(path).sha256


def expand_cells(spec: SweepSpec, *, data_cache: Path | None = None) -> list[Cell]:
    """datasets x categories x methods x method grid x ratios (or counts) x overlap x seeds.

    The method points come from the spec's validation (`SweepSpec.method_points`); `categories: all`
    opens the dataset to list them (built-in sets are generated on first use, under data_cache).
    """
    cells: list[Cell] = []
    seen: set[str] = set()
    points = spec.method_points()
    for ds in spec.datasets:
        dataset = _dataset_dict(ds)
        rules = split_rules(spec, ds.kind)
        for category in open_dataset(dataset, data_cache).resolve_categories(ds.categories):
            for method, method_grid_points in points.items():
                for point in method_grid_points:
                    for rule, seed in rules:
                        cfg = CellConfig(
                            dataset=dataset, category=category, backbone=spec.backbone, method=method,
                            settings=point.settings, split=rule, seed=seed,
                            eval_every=int(spec.eval_every), n_map_examples=int(spec.n_map_examples),
                        )
                        cid = cell_id(cfg)
                        if cid in seen:  # e.g. two grid points equal once defaults are filled
                            continue
                        seen.add(cid)
                        cells.append(Cell(cid, cfg, point.swept))
    return cells


def feature_jobs(cells: Iterable[Cell]) -> list[FeatureJob]:
    """Unique (dataset, category, backbone) of the cells, in first-seen order; a job extracts features
    when a feature method's cell needs them."""
    jobs: dict[str, FeatureJob] = {}
    for cell in cells:
        cfg = cell.config
        key = canonical_json([cfg.dataset, cfg.category, backbone_json(cfg.backbone)])
        features = method_class(cfg.method).input_kind == "features"
        job = jobs.setdefault(key, FeatureJob(dict(cfg.dataset), cfg.category, cfg.backbone, features))
        if features and not job.extract:
            jobs[key] = job._replace(extract=True)
    return list(jobs.values())
