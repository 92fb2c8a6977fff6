"""The sweep file: YAML -> typed, validated settings (`SweepSpec`), or ALL its problems at once.

Every problem reads `FILE: key.path: what is wrong (allowed: ...)`, so a user fixes a spec in one
pass instead of one traceback at a time. Beyond types and ranges, the checks that need the world
are done here too, before Ray starts: dataset roots and categories exist, the backbone is a timm
model, weights files exist, methods are registered and every grid point of a method's settings
passes that method's own Settings model.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_DATASET_KINDS = ("synthetic", "mvtec", "visa", "folder", "oneclass")
#: kinds that are built in and need no root
ROOTLESS_KINDS = {"synthetic", "oneclass"}
#: backbone weights that are not a file path
WEIGHT_KINDS = ("bundled", "hub", "random")
#: at most this many grid points of one method are validated one by one
MAX_VALIDATED_POINTS = 4096
#: a sweep file expands (aliases included) to at most this many YAML nodes: stops "billion laughs"
MAX_YAML_NODES = 100_000
#: seeds must fit numpy's and torch's seeding (and Parquet's int64)
MAX_SEED = 2**32 - 1
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}


class SpecError(ValueError):
    """An invalid sweep file; `problems` holds one line per problem (file, key, what, allowed)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _no_duplicates(values: list[Any], what: str = "values") -> list[Any]:
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
            _no_duplicates(v, "categories")
        return v


class BackboneSpec(BaseModel):
    """The frozen feature extractor and its preprocessing (None = the backbone's default).

    Extra keys are accepted here and checked against funad.features.BackboneConfig, which owns
    the full field list.
    """

    model_config = ConfigDict(extra="allow")

    name: str = "tf_efficientnet_lite0"
    weights: str = "bundled"
    resize: int = Field(256, gt=0)
    crop: int = Field(224, gt=0)
    layers: Any = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _crop_fits(self) -> BackboneSpec:
        if self.crop > self.resize:
            raise ValueError(
                f"crop {self.crop} is larger than resize {self.resize} (allowed: crop <= resize)"
            )
        return self


Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]
Count = Annotated[int, Field(ge=0)]


class ContaminationSpec(_Strict):
    """Anomaly-to-normal ratios (or absolute counts), overlap and the shortfall policy."""

    ratios: list[Ratio] | None = Field(None, min_length=1)
    counts: list[Count] | None = Field(None, min_length=1)
    overlap: bool | list[bool] = False
    shortfall: Literal["error", "cap", "augment"] = "cap"
    min_test_anomalies: int | None = Field(None, ge=0)

    @field_validator("ratios", "counts")
    @classmethod
    def _unique(cls, v: list[Any] | None) -> list[Any] | None:
        return None if v is None else _no_duplicates(v)

    @field_validator("overlap", mode="before")
    @classmethod
    def _overlap(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("empty list (allowed: true, false or a list of them)")
            if not all(isinstance(x, bool) for x in v):
                raise ValueError(f"{v!r} is not a list of booleans (allowed: true, false or a list of them)")
            _no_duplicates(v)
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
    """A whole sweep file (see docs: the contract's "Sweep file")."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = "runs"
    #: the storage path is one filesystem seen by every node (NFS/EFS...), so a cluster may use it
    storage_shared: bool = False
    ray: RaySpec = Field(default_factory=RaySpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)
    datasets: list[DatasetSpec] = Field(min_length=1)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    contamination: ContaminationSpec = Field(default_factory=ContaminationSpec)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    eval_every: int = Field(0, ge=0)
    n_map_examples: int = Field(2, ge=0)
    report: bool = True
    feature_cache: str | None = None
    data_cache: str | None = None

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return _no_duplicates(v, "seeds")

    @field_validator("methods", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({} if s is None else s) for k, s in v.items()}
        return v

    def resolved(self) -> dict[str, Any]:
        """Plain dict with every default filled in: what the run directory's sweep.yaml records."""
        return self.model_dump(mode="json")

    @property
    def run_dir(self) -> Path:
        """<storage>/<name> (a local or shared-filesystem path)."""
        return Path(self.storage).expanduser() / self.name

    def feature_cache_dir(self) -> Path:
        """`feature_cache`, else <storage>/<name>/features (what the sweep uses for a path storage;
        entries are keyed by image content + backbone, so pointing several sweeps at one shared
        directory reuses features across runs)."""
        if self.feature_cache:
            return Path(self.feature_cache).expanduser()
        return self.run_dir / "features"

    def data_cache_dir(self) -> Path | None:
        return Path(self.data_cache).expanduser() if self.data_cache else None


# -------------------------------------------------------------------------------------------------
# loading: YAML, tags, overrides, ${ENV}


def _path_str(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _bad_tags(node: yaml.Node, loc: tuple[Any, ...] = ()) -> list[tuple[str, str, int]]:
    """(key path, tag, line) of every node whose tag would build something other than plain data."""
    out = []
    if node.tag not in _PLAIN_TAGS:
        out.append((_path_str(loc), node.tag, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            out += _bad_tags(v, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _bad_tags(v, (*loc, i))
    return out


def _count_nodes(node: yaml.Node, limit: int) -> int:
    """Nodes of the document as it would be built, aliases expanded, counting stops past `limit`.

    Aliases make the composed graph a DAG; walking it as a tree (with a cap) measures what
    validation and error messages would have to touch, so a "billion laughs" file is refused
    instead of hanging the CLI.
    """
    count, stack = 0, [node]
    while stack and count <= limit:
        n = stack.pop()
        count += 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack += [k, v]
        elif isinstance(n, yaml.SequenceNode):
            stack += n.value
    return count


def _duplicate_keys(node: yaml.Node, loc: tuple[Any, ...] = (), seen: set[int] | None = None) -> list[str]:
    """(key path, line) of every key given twice in one mapping (YAML would silently keep the last)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return []
    seen.add(id(node))
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            if isinstance(k, yaml.ScalarNode) and key in keys:
                out.append(f"{_path_str((*loc, key))}: key given twice (line {k.start_mark.line + 1})")
            keys.add(key)
            out += _duplicate_keys(v, (*loc, key), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, (*loc, i), seen)
    return out


def _yaml_error(src: str, e: yaml.YAMLError) -> str:
    """One line: where (line, column) and what, instead of PyYAML's multi-line dump."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{src}: not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


def _read_yaml(path: Path) -> Any:
    src = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SpecError([f"{src}: file does not exist"]) from None
    except IsADirectoryError:
        raise SpecError([f"{src}: is a directory (allowed: a YAML sweep file)"]) from None
    except UnicodeDecodeError as e:
        raise SpecError(
            [f"{src}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}; allowed: a UTF-8 "
             "YAML file)"]
        ) from None
    except OSError as e:
        raise SpecError([f"{src}: cannot read ({e.strerror or e})"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([_yaml_error(src, e)]) from None
    except RecursionError:
        raise SpecError([f"{src}: nested too deeply (allowed: a sweep file of ordinary depth)"]) from None
    if node is not None:
        if _count_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise SpecError(
                [f"{src}: expands to more than {MAX_YAML_NODES} YAML values (aliases included) "
                 "(allowed: a sweep file of ordinary size; avoid nested *aliases)"]
            )
        bad = _bad_tags(node)
        if bad:
            raise SpecError(
                [
                    f"{src}: {key}: YAML tag {tag.replace('tag:yaml.org,2002:', '!!')} at line {line} is not "
                    "allowed (allowed: plain YAML: mappings, lists, strings, numbers, booleans, null)"
                    for key, tag, line in bad
                ]
            )
        dups = _duplicate_keys(node)
        if dups:
            raise SpecError([f"{src}: {d} (allowed: each key once)" for d in dups])
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # pragma: no cover - compose already parsed it
        raise SpecError([_yaml_error(src, e)]) from None
    except RecursionError:
        raise SpecError([f"{src}: nested too deeply (allowed: a sweep file of ordinary depth)"]) from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `--set a.b.c=VALUE` (VALUE parsed as YAML; list items addressed by index)."""
    if "=" not in override:
        raise ValueError("expected KEY=VALUE (e.g. methods.funad.epochs=5)")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ValueError("empty key (allowed: a dotted path such as methods.funad.epochs)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"value is not plain YAML ({e})") from None
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ValueError(
                    f"{_path_str(parts[:i])} is a list of {len(cur)}: '{part}' is not an index of it"
                )
            if last:
                cur[int(part)] = value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
            else:
                if not isinstance(cur.get(part), dict | list):
                    cur[part] = {}
                cur = cur[part]
        else:
            raise ValueError(f"{_path_str(parts[:i])} is not a mapping or list")


def _expand_env(value: Any, loc: tuple[Any, ...], problems: list[str], src: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), problems, src) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), problems, src) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        problems.append(
            f"{src}: {_path_str(loc)}: environment variable {var} is not set "
            f"(allowed: export {var}=..., or write ${{{var}:-default}})"
        )
        return m.group(0)

    return _ENV.sub(sub, value)


# -------------------------------------------------------------------------------------------------
# pydantic errors -> messages


def _unwrap(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [a for a in args if a is not type(None)]
    return [annotation]


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at loc (to list its allowed keys)."""
    cur: Any = model
    for part in loc:
        nxt = None
        for t in _unwrap(cur):
            if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                if part in t.model_fields:
                    nxt = t.model_fields[part].annotation
            elif typing.get_origin(t) in (list, dict):
                nxt = typing.get_args(t)[-1]
            if nxt is not None:
                break
        if nxt is None:
            return None
        cur = nxt
    for t in _unwrap(cur):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _allowed_keys(model: type[BaseModel] | None) -> str:
    return ", ".join(model.model_fields) if model is not None else "see the docs"


def _pydantic_problems(
    err: ValidationError, src: str, model: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[str]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("literal"))))
        path = _path_str((*prefix, *loc))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        kind = e.get("type", "")
        if kind == "extra_forbidden":
            what = "setting" if prefix and prefix[0] == "methods" else "key"
            allowed = _allowed_keys(_model_at(model, loc[:-1]))
            out.append(f"{src}: {path}: unknown {what} (allowed: {allowed})")
        elif kind == "missing":
            out.append(f"{src}: {path}: required key is missing")
        elif kind == "value_error" and "(allowed:" in msg:
            out.append(f"{src}: {path}: {msg}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            out.append(f"{src}: {path}: {msg}{shown}")
    return out


# -------------------------------------------------------------------------------------------------
# checks that need the world: datasets, backbone, methods


def _dataset_kinds() -> tuple[str, ...]:
    try:
        from funad.data import DATASET_KINDS

        return tuple(DATASET_KINDS)
    except ImportError:
        return DEFAULT_DATASET_KINDS


def _check_dataset(ds: DatasetSpec, i: int, src: str, check_data: bool) -> list[str]:
    where = f"{src}: datasets[{i}]"
    kinds = _dataset_kinds()
    if ds.kind not in kinds:
        return [f"{where}.kind: unknown dataset kind {ds.kind!r} (allowed: {', '.join(kinds)})"]
    if ds.root is not None and _ENV.search(ds.root):
        return []  # an unset ${VAR}: already reported
    if ds.root is None and ds.kind not in ROOTLESS_KINDS:
        return [f"{where}.root: required for kind {ds.kind} (allowed: the dataset's directory)"]
    if ds.root is not None and not Path(ds.root).expanduser().is_dir():
        return [f"{where}.root: directory does not exist: {ds.root} (allowed: an existing directory)"]
    if not check_data:
        return []
    try:
        from funad.data import create_dataset
    except ImportError:
        return []
    options = dict(ds.model_extra or {})
    try:
        dataset = create_dataset(ds.kind, root=ds.root, **options)
        have = dataset.categories()
    except TypeError as e:
        return [
            f"{where}: invalid option for kind {ds.kind}: {e} (allowed: kind, root, categories and the "
            "loader's options)"
        ]
    except Exception as e:  # DatasetError and friends: the message names the path
        return [f"{where}: cannot open the dataset: {e}"]
    if ds.categories == "all":
        if not have:
            return [f"{where}.categories: the dataset has no categories"]
        wanted = list(have)
    else:
        unknown = []
        for c in ds.categories:
            if c in have:
                continue
            folder = Path(ds.root).expanduser() / c if ds.root is not None else None
            hint = (
                f"; the folder {folder} exists but is not laid out as a {ds.kind} category"
                if folder is not None and folder.is_dir()
                else ""
            )
            unknown.append(
                f"{where}.categories: unknown category {c!r}{hint} (allowed: {', '.join(have) or '(none)'})"
            )
        if unknown:
            return unknown
        wanted = list(ds.categories)
    if ds.root is None:
        return []  # built-in data: listing it would generate it; it is the project's own, not a user's
    # The user's tree: list every category now (folders, splits, masks and their sizes are checked
    # from headers only), so a broken tree costs no cluster time. Undecodable image bodies can only
    # be found by decoding; those end as failed rows.
    out = []
    for c in wanted:
        try:
            dataset.records(c)
        except Exception as e:  # DatasetError names the path
            out.append(f"{where}: category {c!r}: {e}")
    return out


def _check_backbone(bb: BackboneSpec, src: str) -> list[str]:
    where = f"{src}: backbone"
    out = []
    try:
        import timm

        if not timm.is_model(bb.name):
            close = difflib.get_close_matches(bb.name, timm.list_models(), n=3)
            hint = f"e.g. {', '.join(close)}" if close else "a timm model name"
            out.append(f"{where}.name: unknown backbone {bb.name!r} (allowed: {hint})")
    except ImportError:
        pass
    if (
        bb.weights not in WEIGHT_KINDS
        and not _ENV.search(bb.weights)
        and not Path(bb.weights).expanduser().is_file()
    ):
        out.append(
            f"{where}.weights: weights file does not exist: {bb.weights} "
            f"(allowed: {', '.join(WEIGHT_KINDS)} or a weights file path)"
        )
    try:
        from harness.cells import backbone_config_class

        BackboneConfig = backbone_config_class()  # noqa: N806 - a class
    except ImportError:
        extra = sorted(bb.model_extra or {})
        allowed = ", ".join(BackboneSpec.model_fields)
        return out + [f"{where}.{k}: unknown key (allowed: {allowed})" for k in extra]
    fields = BackboneConfig.model_fields
    given = {k: v for k, v in bb.model_dump().items() if v is not None}
    unknown = [k for k in given if k not in fields]
    out += [f"{where}.{k}: unknown key (allowed: {', '.join(fields)})" for k in unknown]
    try:
        BackboneConfig(**{k: v for k, v in given.items() if k in fields})
    except ValidationError as e:
        out += _pydantic_problems(e, src, BackboneConfig, ("backbone",))
    except (ValueError, TypeError) as e:
        out.append(f"{where}: {e}")
    return out


def _check_method(name: str, settings: Any, src: str) -> list[str]:
    where = f"{src}: methods.{name}"
    try:
        from funad.methods import available, method_class

        names = available()
    except ImportError as e:  # a method module that fails to import is itself a problem to show
        return [f"{where}: cannot load the method registry ({e})"]
    if name not in names:
        return [f"{where}: unknown method {name!r} (allowed: {', '.join(names)})"]
    if not isinstance(settings, dict):
        return []  # the structural pass reports the type
    from harness.cells import list_valued_settings, method_grid

    out = []
    lv = list_valued_settings(name)
    for key, value in settings.items():
        if isinstance(value, list) and key not in lv:
            if not value:
                out.append(f"{where}.{key}: empty grid (allowed: a value, or a list of at least one value)")
            else:
                try:
                    _no_duplicates(value)
                except ValueError as e:
                    out.append(f"{where}.{key}: {e}")
    if out:
        return out
    settings_cls = method_class(name).Settings
    seen: list[str] = []
    for params, _hp in itertools.islice(method_grid(name, settings), MAX_VALIDATED_POINTS):
        try:
            settings_cls(**params)
        except ValidationError as e:
            for p in _pydantic_problems(e, src, settings_cls, ("methods", name)):
                if p not in seen:
                    seen.append(p)
    return seen


# -------------------------------------------------------------------------------------------------


def load_spec(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), *, check_data: bool = True
) -> SweepSpec:
    """Read, override, expand and validate a sweep file; raise SpecError listing every problem.

    check_data=False skips opening datasets (listing categories), e.g. for quick CLI help.
    """
    src = str(path)
    data = _read_yaml(Path(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{src}: (top level): expected a mapping of settings, got {type(data).__name__}"])
    problems: list[str] = []
    for ov in overrides:
        try:
            apply_override(data, ov)
        except ValueError as e:
            problems.append(f"{src}: --set {ov}: {e}")
    data = _expand_env(data, (), problems, src)

    try:
        spec: SweepSpec | None = SweepSpec.model_validate(data)
    except ValidationError as e:
        spec = None
        problems += _pydantic_problems(e, src, SweepSpec)

    # Section checks run on whatever parses, so one bad section does not hide another's problems.
    raw_datasets = data.get("datasets")
    if isinstance(raw_datasets, list):
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_datasets):
            try:
                ds = DatasetSpec.model_validate(raw)
            except ValidationError:
                continue
            key = json.dumps(ds.model_dump(mode="json"), sort_keys=True)
            if key in seen:
                problems.append(
                    f"{src}: datasets[{i}]: duplicate of datasets[{seen[key]}] (allowed: each dataset once)"
                )
                continue
            seen[key] = i
            problems += _check_dataset(ds, i, src, check_data)
    raw_bb = data.get("backbone", {})
    try:
        problems += _check_backbone(BackboneSpec.model_validate(raw_bb if raw_bb is not None else {}), src)
    except ValidationError:
        pass
    raw_methods = data.get("methods")
    if isinstance(raw_methods, dict):
        for name, settings in raw_methods.items():
            problems += _check_method(str(name), {} if settings is None else settings, src)

    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    assert spec is not None
    return spec
