"""The sweep file: YAML -> typed, validated settings (`SweepSpec`), or ALL its problems at once.

Every problem reads `FILE: key.path: what is wrong (allowed: ...)`, so a user fixes a spec in one
pass instead of one traceback at a time. The parts: safe YAML reading (yaml_safe), `--set` and
`${ENV}` (overrides), the typed models (models), pydantic errors as problem lines (errors), and the
checks that need the world: datasets, backbone, methods (world).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from harness.spec.errors import SpecError, pydantic_problems
from harness.spec.models import DatasetSpec, SweepSpec
from harness.spec.overrides import apply_override, expand_env
from harness.spec.world import (
    check_backbone,
    check_contamination,
    check_dataset,
    check_input_kinds,
    check_method,
    check_split_needs,
)
from harness.spec.yaml_safe import read_yaml

__all__ = ["DatasetSpec", "SpecError", "SweepSpec", "apply_override", "load_spec"]


def load_spec(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), *, check_data: bool = True
) -> SweepSpec:
    """Read, override, expand and validate a sweep file; raise SpecError listing every problem.

    check_data=False skips opening datasets (listing categories), e.g. for quick CLI help.
    """
    src = str(path)
    data = read_yaml(Path(path))
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
    data = expand_env(data, (), problems, src)

    try:
        spec: SweepSpec | None = SweepSpec.model_validate(data)
    except ValidationError as e:
        spec = None
        problems += pydantic_problems(e, src, SweepSpec)

    # Section checks run on whatever parses, so one bad section does not hide another's problems.
    data_cache = spec.data_dir() if spec is not None else None
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
            problems += check_dataset(ds, i, src, check_data, data_cache)
    problems += check_backbone(data.get("backbone"), src)
    raw_methods = data.get("methods")
    points = {}
    if isinstance(raw_methods, dict):
        for name, settings in raw_methods.items():
            found, members = check_method(str(name), {} if settings is None else settings, src)
            problems += found
            points.update(members)

    if spec is not None:
        problems += check_split_needs(spec, points, src)
    if spec is not None and not problems:
        problems += check_input_kinds(spec, src)
    if spec is not None and check_data and not problems:
        problems += check_contamination(spec, src)

    if problems or spec is None:
        raise SpecError(list(dict.fromkeys(problems)))
    spec.set_method_points(points)
    return spec
