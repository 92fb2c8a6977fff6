"""The checks that need the world, done before Ray starts: dataset roots and categories exist (a
user's tree is listed from headers, so a broken one costs no cluster time), the backbone is a timm
model, a weights file exists, methods are registered and every grid point of a method's settings
passes that method's own Settings model."""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any

import timm

from funad.data import DATASET_KINDS, KINDS, create_dataset
from funad.data.contamination import has_own_noisy_split
from funad.data.splits import check_list, list_path, read_split_list
from funad.features import WEIGHT_KINDS
from funad.methods import FamilyError, available, expand_method, families, method_class
from funad.methods.base import unmet_split_needs
from funad.methods.plugins import PluginError
from harness.cells import MethodPoint, list_valued_settings, method_points, split_rules
from harness.spec.errors import pydantic_problems
from harness.spec.models import DatasetSpec, SweepSpec, no_duplicates
from harness.spec.overrides import has_unset_env


def check_dataset(ds: DatasetSpec, i: int, src: str, check_data: bool, data_cache: Path | None) -> list[str]:
    where = f"{src}: datasets[{i}]"
    if ds.kind not in KINDS:
        return [f"{where}.kind: unknown dataset kind {ds.kind!r} (allowed: {', '.join(DATASET_KINDS)})"]
    if ds.root is not None and has_unset_env(ds.root):
        return []  # already reported
    if ds.root is None and KINDS[ds.kind].needs_root:
        return [f"{where}.root: required for kind {ds.kind} (allowed: the dataset's directory)"]
    if ds.root is not None and not Path(ds.root).expanduser().is_dir():
        return [f"{where}.root: directory does not exist: {ds.root} (allowed: an existing directory)"]
    if not check_data:
        return []
    options = dict(ds.model_extra or {})
    try:
        dataset = create_dataset(ds.kind, root=ds.root, data_cache=data_cache, **options)
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
    # from headers only). Undecodable image bodies can only be found by decoding; those end as
    # failed rows.
    out = []
    for c in wanted:
        try:
            dataset.records(c)
        except Exception as e:  # DatasetError names the path
            out.append(f"{where}: category {c!r}: {e}")
    return out


def check_backbone(raw: Any, src: str) -> list[str]:
    """The given backbone name is a timm model and a weights path exists (types and the other fields
    are BackboneConfig's, checked with the rest of the file)."""
    if not isinstance(raw, dict):
        return []
    where = f"{src}: backbone"
    out = []
    name, weights = raw.get("name"), raw.get("weights")
    if isinstance(name, str) and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"e.g. {', '.join(close)}" if close else "a timm model name"
        out.append(f"{where}.name: unknown backbone {name!r} (allowed: {hint})")
    if (
        isinstance(weights, str)
        and weights not in WEIGHT_KINDS
        and not has_unset_env(weights)
        and not Path(weights).expanduser().is_file()
    ):
        out.append(
            f"{where}.weights: weights file does not exist: {weights} "
            f"(allowed: {', '.join(WEIGHT_KINDS)} or a weights file path)"
        )
    return out


def check_method(name: str, settings: Any, src: str) -> tuple[list[str], dict[str, list[MethodPoint]]]:
    """A sweep file's method entry and every grid point of its settings: (problems, each method's
    validated points). A family entry (e.g. `anomalib: {model: [Padim, Stfpm]}`) is checked member by
    member. The points' Settings instances are the cells' (load_spec keeps them on the spec), so a
    method setting is validated here and nowhere else."""
    where = f"{src}: methods.{name}"
    try:
        names, groups = available(), families()
    except PluginError as e:  # an installed method plugin is broken: its message names it
        return [f"{src}: methods: {e}"], {}
    if name not in names and name not in groups:
        return [f"{where}: unknown method {name!r} (allowed: {', '.join(sorted(names + groups))})"], {}
    if not isinstance(settings, dict):
        return [], {}  # the structural pass reports the type
    try:
        members = expand_method(name, settings)
    except FamilyError as e:
        return [f"{where}.{e.key}: {e}"], {}
    problems: list[str] = []
    points: dict[str, list[MethodPoint]] = {}
    for member, raw in members:
        found, points[member] = _check_points(member, raw, where, src, ("methods", name))
        problems += [p for p in found if p not in problems]
    return problems, points


def _check_points(
    method: str, settings: dict[str, Any], where: str, src: str, loc: tuple[str, ...]
) -> tuple[list[str], list[MethodPoint]]:
    out = []
    lv = list_valued_settings(method)
    for key, value in settings.items():
        if isinstance(value, list) and key not in lv:
            if not value:
                out.append(f"{where}.{key}: empty grid (allowed: a value, or a list of at least one value)")
            else:
                try:
                    no_duplicates(value)
                except ValueError as e:
                    out.append(f"{where}.{key}: {e}")
    if out:
        return out, []
    settings_cls = method_class(method).Settings
    points, errors = method_points(method, settings)
    seen: list[str] = []
    for e in errors:
        for p in pydantic_problems(e, src, settings_cls, loc):
            if p not in seen:
                seen.append(p)
    return seen, points


def check_input_kinds(spec: SweepSpec, src: str) -> list[str]:
    """Image methods read the protocol's crops themselves: a backbone setting that only changes how our
    features are extracted (border_context) would silently not apply to them."""
    images = [m for m in spec.concrete_methods() if method_class(m).input_kind == "images"]
    if images and spec.backbone.border_context:
        return [f"{src}: backbone.border_context: true changes the features of the feature methods only; "
                f"{', '.join(images)} read the protocol's crops themselves (allowed: border_context: false, "
                "or these methods in a sweep of their own)"]
    return []


def check_contamination(spec: SweepSpec, src: str) -> list[str]:
    """Training lists against the datasets (every list of the grid: each problem names the list and
    its line), and a dataset's own noisy split (anomalous training records, e.g. a Real-IAD FUIAD JSON)
    asked to take injected images on top."""
    c = spec.contamination
    amounts = [(None, n) for n in c.counts] if c.counts is not None else [(r, None) for r in c.ratios or []]
    out: list[str] = []
    for i, ds in enumerate(spec.datasets):
        where = f"{src}: datasets[{i}]"
        if c.lists is None and not KINDS[ds.kind].noisy_splits:
            continue  # nothing to check that check_dataset did not
        options = dict(ds.model_extra or {})
        try:
            dataset = create_dataset(ds.kind, root=ds.root, data_cache=spec.data_dir(), **options)
            categories = dataset.resolve_categories(ds.categories)
            records = {cat: dataset.records(cat) for cat in categories}
        except Exception:  # check_dataset reported it
            continue
        if c.lists is None:
            own = [cat for cat, recs in records.items() if has_own_noisy_split(recs)]
            problem = next((p for rule, _ in split_rules(spec, ds.kind) if (p := rule.own_split_problem())),
                           None)
            if own and problem is not None:
                out.append(f"{where}: categories {', '.join(own)}: {problem}")
            continue
        for (ratio, count), seed in itertools.product(amounts, spec.seeds):
            try:
                path = list_path(c.lists, dataset=ds.kind, ratio=ratio, count=count, seed=seed)
                listed = read_split_list(path)
            except Exception as e:  # DatasetError names the list (or the template) and the problem
                out.append(f"{src}: contamination.lists: {e}")
                continue
            problems = check_list(listed, dataset.categories(), records)
            out += [f"{src}: contamination.lists: {p}" for p in problems]
            out += [f"{src}: contamination.lists: {listed.path}: lists no training image of category {cat!r}"
                    for cat in categories if cat not in listed.train]
    return out


def check_split_needs(spec: SweepSpec, points: dict[str, list[MethodPoint]], src: str) -> list[str]:
    """Method settings that only mean something with a contamination setting the file does not have
    (InReaCh's reference_quirks: the released seeds are the clean training images, the pool's first)."""
    out = [
        f"{src}: methods.{method}.{need.because}: needs contamination.{need.field}: {need.value}, got {got} "
        f"(allowed: contamination.{need.field}: {need.value}, or {need.because} left at its default)"
        for method, method_points_ in points.items()
        for point in method_points_
        for need, got in unmet_split_needs(point.settings, spec.contamination)
    ]
    return list(dict.fromkeys(out))
