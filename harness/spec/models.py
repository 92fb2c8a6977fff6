"""The sweep file's typed settings: structure, types and ranges (pydantic, unknown keys refused).

Defaults that belong to a part of `funad` are that part's own: the backbone is funad's
BackboneConfig, the shortfall policy contaminate()'s default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from funad import paths
from funad.data.contamination import DEFAULTS as SPLIT_DEFAULTS
from funad.data.contamination import POOL_ORDERS, RATIO_OF, SHORTFALL_POLICIES, SOURCES
from funad.features import BackboneConfig
from rundir import FEATURES_DIR

#: seeds must fit numpy's and torch's seeding (and Parquet's int64)
MAX_SEED = 2**32 - 1
Shortfall = Literal[SHORTFALL_POLICIES]  # type: ignore[valid-type]
Source = Literal[SOURCES]  # type: ignore[valid-type]
RatioOf = Literal[RATIO_OF]  # type: ignore[valid-type]
PoolOrder = Literal[POOL_ORDERS]  # type: ignore[valid-type]


def no_duplicates(values: list[Any], what: str = "values") -> list[Any]:
    """`values`, or ValueError naming the values given more than once."""
    seen, dups = [], []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key in seen and v not in dups:
            dups.append(v)
        seen.append(key)
    if dups:
        raise ValueError(f"duplicate {what}: {', '.join(map(repr, dups))} (allowed: each value once)")
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaySpec(_Strict):
    """Where trials run: address None starts a local Ray (or joins RAY_ADDRESS)."""

    address: str | None = None
    dashboard: bool = True
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: float | None = Field(None, ge=0)


class ResourcesSpec(_Strict):
    """Per-trial resources; fractions share a device between trials."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class DatasetSpec(BaseModel):
    """One dataset entry; keys besides kind/root/categories are the loader's options."""

    model_config = ConfigDict(extra="allow")

    kind: str
    root: str | None = None
    categories: Literal["all"] | list[str] = "all"

    @field_validator("categories", mode="before")
    @classmethod
    def _categories(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "all":
            return [v]
        if isinstance(v, list):
            if not v:
                raise ValueError("empty list (allowed: 'all' or a non-empty list of category names)")
            no_duplicates(v, "categories")
        return v


Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]
Count = Annotated[int, Field(ge=0)]


class ContaminationSpec(_Strict):
    """How each cell's noisy training set is made: ratios (or absolute counts), what a ratio is a share
    of, where injected images come from, overlap, the shortfall policy, the pool order, or training
    lists instead of draws (docs/protocol.md, funad.data.contamination and funad.data.splits)."""

    ratios: list[Ratio] | None = Field(None, min_length=1)
    counts: list[Count] | None = Field(None, min_length=1)
    overlap: bool | list[bool] = False
    shortfall: Shortfall = SPLIT_DEFAULTS["shortfall"]
    #: None = the contamination module's default
    min_test_anomalies: int | None = Field(None, ge=0)
    ratio_of: RatioOf = SPLIT_DEFAULTS["ratio_of"]
    source: Source = SPLIT_DEFAULTS["source"]
    pool_order: PoolOrder = SPLIT_DEFAULTS["pool_order"]
    #: a path template of training lists, one per (ratio or count, seed), e.g.
    #: lists/train_mvtec_nr{ratio_pct}_seed_{seed}.csv (fields: dataset, ratio, ratio_pct, count, seed)
    lists: str | None = None

    @field_validator("ratios", "counts")
    @classmethod
    def _unique(cls, v: list[Any] | None) -> list[Any] | None:
        return None if v is None else no_duplicates(v)

    @field_validator("overlap", mode="before")
    @classmethod
    def _overlap(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("empty list (allowed: true, false or a list of them)")
            if not all(isinstance(x, bool) for x in v):
                raise ValueError(f"{v!r} is not a list of booleans (allowed: true, false or a list of them)")
            no_duplicates(v)
        elif not isinstance(v, bool):
            raise ValueError(f"{v!r} is not a boolean (allowed: true, false or a list of them)")
        return v

    @model_validator(mode="after")
    def _ratios_or_counts(self) -> ContaminationSpec:
        if self.ratios is not None and self.counts is not None:
            raise ValueError("both ratios and counts given (allowed: one of them)")
        if self.ratios is None and self.counts is None:
            self.ratios = [0.0]
        return self

    @property
    def overlaps(self) -> list[bool]:
        return self.overlap if isinstance(self.overlap, list) else [self.overlap]


class SweepSpec(_Strict):
    """A whole sweep file (docs/contract.md, "Sweep file")."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    #: a filesystem path: local, or a mount every node sees (then `storage_shared: true`)
    storage: str = "runs"
    #: the storage path is one filesystem seen by every node (NFS/EFS...), so a cluster may use it
    storage_shared: bool = False
    ray: RaySpec = Field(default_factory=RaySpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)
    datasets: list[DatasetSpec] = Field(min_length=1)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    contamination: ContaminationSpec = Field(default_factory=ContaminationSpec)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    eval_every: int = Field(0, ge=0)
    n_map_examples: int = Field(2, ge=0)
    report: bool = True
    #: None = <storage>/<name>/features
    feature_cache: str | None = None
    #: a cache root like $FUNAD_CACHE: built-in datasets are generated under <data_cache>/data
    data_cache: str | None = None

    #: (the methods these points were built from, each method's validated grid points)
    _points: tuple[str, dict[str, list[Any]]] | None = PrivateAttr(default=None)

    @field_validator("storage", "feature_cache", "data_cache")
    @classmethod
    def _a_path(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError(
                f"{v!r} is a URI, but a run is written as files (atomic renames, memory-mapped features) "
                "(allowed: a filesystem path; for a bucket, mount it on every node (mountpoint-s3, gcsfuse, "
                "EFS/NFS) and use the mount's path with `storage_shared: true`)"
            )
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return no_duplicates(v, "seeds")

    @field_validator("methods", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({} if s is None else s) for k, s in v.items()}
        return v

    def concrete_methods(self) -> dict[str, dict[str, Any]]:
        """`methods` with every family entry expanded: method name -> its settings as given (a list is
        a grid axis). What the grid, the run's schema and the report see."""
        from funad.methods import expand_method

        return {m: raw for name, settings in self.methods.items() for m, raw in expand_method(name, settings)}

    def method_points(self) -> dict[str, list[Any]]:
        """Each method's grid points (harness.cells.MethodPoint: validated Settings + swept names).

        Built once: by `load_spec`'s validation (which reports every bad point as a problem), or here
        on first use for a spec made in code; rebuilt only if `methods` changed since."""
        key = json.dumps(self.methods, sort_keys=True, default=str)
        if self._points is None or self._points[0] != key:
            from harness.cells import method_points

            built: dict[str, list[Any]] = {}
            for name, raw in self.concrete_methods().items():
                points, errors = method_points(name, raw)
                if errors:
                    raise errors[0]
                built[name] = points
            self._points = (key, built)
        return self._points[1]

    def set_method_points(self, points: dict[str, list[Any]]) -> None:
        """Keep the points validation built (load_spec), so nothing validates them again."""
        self._points = (json.dumps(self.methods, sort_keys=True, default=str), dict(points))

    def resolved(self) -> dict[str, Any]:
        """Plain dict with every default filled in: what the run directory's sweep.yaml records."""
        return self.model_dump(mode="json")

    @property
    def run_dir(self) -> Path:
        """<storage>/<name>."""
        return Path(self.storage).expanduser() / self.name

    def storage_root(self) -> Path:
        """The storage folder as an absolute path (trials and Tune run in other directories)."""
        return Path(self.storage).expanduser().resolve()

    def feature_cache_dir(self, run_dir: Path) -> Path:
        """`feature_cache`, else <run_dir>/features. Entries are keyed by image content + backbone,
        so several sweeps pointed at one directory reuse each other's features."""
        if not self.feature_cache:
            return run_dir / FEATURES_DIR
        return Path(self.feature_cache).expanduser().resolve()

    def data_dir(self) -> Path | None:
        """Where built-in datasets are generated (absolute), or None for funad's default."""
        if not self.data_cache:
            return None
        return paths.data_cache(Path(self.data_cache).expanduser().resolve())
