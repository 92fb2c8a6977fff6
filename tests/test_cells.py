"""The grid: size, swept-value columns, and cell ids that never drift (resume depends on them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest_data import build_mvtec

from funad.methods import method_class
from funad.run import CellConfig
from harness.cells import cell_id, compute_cell_id, expand_cells, feature_jobs, method_axes, method_grid
from harness.spec import load_spec

GOLDEN = dict(
    dataset={"kind": "mvtec", "root": "/data/mvtec"},
    category="bottle",
    backbone={"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 256, "crop": 224},
    method="patchcore",
    settings={"coreset_ratio": 0.1, "k": 1},
    ratio=0.1,
    count=None,
    overlap=False,
    seed=0,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mvtec(tmp_path_factory.mktemp("cells") / "mvtec")


def spec_file(tmp_path: Path, root: Path, **changes: Any) -> Path:
    d: dict[str, Any] = {
        "name": "g",
        "datasets": [{"kind": "mvtec", "root": str(root), "categories": "all"}],
        "backbone": {"resize": 64, "crop": 64},
        "contamination": {"ratios": [0.0, 0.1], "overlap": [False, True]},
        "seeds": [0, 1, 2],
        "methods": {"patchcore": {"coreset_ratio": [0.25, 0.5], "reweight": [True, False]}, "softpatch": {}},
    }
    d.update(changes)
    p = tmp_path / f"{d['name']}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_golden_cell_id() -> None:
    """The id is sha256 of sorted-key compact JSON; this value must never change."""
    assert compute_cell_id(GOLDEN) == "bdb32c9d346566db"
    payload = {k: GOLDEN[k] for k in ("dataset", "category", "backbone", "method", "settings")}
    payload |= {"ratio": 0.1, "count": None, "overlap": False, "seed": 0}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "bdb32c9d346566db"


def golden_config(**changes: Any) -> CellConfig:
    """A cell like GOLDEN as a typed config (settings filled by PatchCore's model), with changes."""
    plain: dict[str, Any] = {
        "dataset": GOLDEN["dataset"], "category": GOLDEN["category"], "backbone": GOLDEN["backbone"],
        "method": "patchcore", "settings": {"coreset_ratio": 0.25, "map_sigma": 2.0}, "split": {"ratio": 0.1},
        "seed": 0,
    }
    return CellConfig.build(**(plain | changes))


def test_cell_id_from_the_typed_fields() -> None:
    """cell_id hashes exactly the typed config's defining values: filled settings, the backbone with
    its defaults, the split rule's values (ratio as a float), the seed."""
    from funad.methods import default_settings

    cfg = golden_config()
    settings = {k: v for k, v in default_settings("patchcore").items() if k not in ADDED_LATER["patchcore"]}
    want = {
        "dataset": GOLDEN["dataset"], "category": "bottle", "method": "patchcore", "seed": 0,
        "settings": {**settings, "coreset_ratio": 0.25, "map_sigma": 2.0},
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 256, "crop": 224,
                     "layers": None, "mean": None, "std": None, "seed": 0},
        "ratio": 0.1, "count": None, "overlap": False,
    }
    text = json.dumps(want, sort_keys=True, separators=(",", ":"))
    assert cell_id(cfg) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_cell_id_sensitivity() -> None:
    base = cell_id(golden_config())
    # key order, int-vs-float ratio and explicit defaults do not matter
    assert cell_id(golden_config(settings={"map_sigma": 2, "coreset_ratio": 0.25})) == base
    assert cell_id(golden_config(split={"ratio": 0})) == cell_id(golden_config(split={"ratio": 0.0}))
    assert cell_id(golden_config(split={"ratio": 0.1, "shortfall": "cap", "pool_order": "sorted"})) == base
    assert cell_id(golden_config(eval_every=5, n_map_examples=0)) == base  # run knobs, not definitions
    for change in (
        {"seed": 1},
        {"split": {"ratio": 0.1, "overlap": True}},
        {"split": {"ratio": 0.2}},
        {"split": {"count": 10}},
        {"category": "wood"},
        {"method": "softpatch", "settings": {}},
        {"settings": {"coreset_ratio": 0.2, "map_sigma": 2.0}},
        {"backbone": dict(GOLDEN["backbone"], crop=200)},
        {"dataset": {"kind": "mvtec", "root": "/other"}},
        {"split": {"ratio": 0.1, "shortfall": "augment"}},
        {"split": {"ratio": 0.1, "min_test_anomalies": 3}},
    ):
        assert cell_id(golden_config(**change)) != base, change


def test_method_grid_axes() -> None:
    grid = method_grid(
        "patchcore", {"coreset_ratio": [0.1, 0.2], "reweight": [True, False], "map_sigma": 2.0}
    )
    assert len(grid) == 4
    params, hp = grid[1]
    assert params == {"coreset_ratio": 0.1, "reweight": False, "map_sigma": 2.0}
    assert hp == {"coreset_ratio": 0.1, "reweight": False}
    assert method_grid("softpatch", {}) == [({}, {})]
    assert method_axes("patchcore", {"map_sigma": 2.0}) == {}


def test_grid_size_and_hp(tmp_path: Path, root: Path) -> None:
    spec = load_spec(spec_file(tmp_path, root))
    cells = expand_cells(spec)
    # 2 categories x (patchcore 2x2 + softpatch 1) x 2 ratios x 2 overlaps x 3 seeds
    assert len(cells) == 2 * 5 * 2 * 2 * 3
    assert len({c.cell_id for c in cells}) == len(cells)
    pc = [c for c in cells if c.config.method == "patchcore"]
    assert {tuple(sorted(c.hp)) for c in pc} == {("coreset_ratio", "reweight")}
    assert all(c.hp == {} for c in cells if c.config.method == "softpatch")
    c0 = pc[0]
    assert (c0.config.settings.coreset_ratio, c0.config.settings.reweight) == (
        c0.hp["coreset_ratio"], c0.hp["reweight"])
    assert c0.config.dataset == {"kind": "mvtec", "root": str(root)}
    assert c0.config.backbone.resize == 64 and c0.config.backbone.name == "tf_efficientnet_lite0"
    assert {c.config.category for c in cells} == {"bottle", "wood"}
    assert {c.config.split.ratio for c in cells} == {0.0, 0.1}
    assert {c.config.split.overlap for c in cells} == {False, True}
    jobs = feature_jobs(cells)
    assert len(jobs) == 2 and {j.category for j in jobs} == {"bottle", "wood"}
    dataset, category, backbone, extract = jobs[0]  # also a plain tuple
    assert extract  # a feature method reads it
    assert dataset["kind"] == "mvtec" and backbone.crop == 64


def test_defaults_filled_hash_the_same(tmp_path: Path, root: Path) -> None:
    from funad.methods import default_settings

    d = default_settings("patchcore")
    explicit = load_spec(
        spec_file(
            tmp_path,
            root,
            name="explicit",
            methods={"patchcore": {"coreset_ratio": d["coreset_ratio"], "map_sigma": d["map_sigma"]}},
            backbone={"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64},
        )
    )
    implicit = load_spec(spec_file(tmp_path, root, name="implicit", methods={"patchcore": {}}))
    a = [c.cell_id for c in expand_cells(explicit)]
    b = [c.cell_id for c in expand_cells(implicit)]
    assert a == b and len(a) == 2 * 2 * 2 * 3
    # and a different value is a different cell
    other = load_spec(spec_file(tmp_path, root, name="other", methods={"patchcore": {"map_sigma": 1.0}}))
    assert not set(a) & {c.cell_id for c in expand_cells(other)}


def test_ids_do_not_depend_on_run_name_or_storage(tmp_path: Path, root: Path) -> None:
    a = load_spec(spec_file(tmp_path, root, name="one", storage="x", eval_every=5))
    b = load_spec(spec_file(tmp_path, root, name="two", storage="y"))
    assert [c.cell_id for c in expand_cells(a)] == [c.cell_id for c in expand_cells(b)]


def test_counts_instead_of_ratios(tmp_path: Path, root: Path) -> None:
    spec = load_spec(spec_file(tmp_path, root, contamination={"counts": [1, 2]}, methods={"softpatch": {}}))
    cells = expand_cells(spec)
    assert len(cells) == 2 * 2 * 3
    assert {(c.config.split.ratio, c.config.split.count) for c in cells} == {(None, 1), (None, 2)}


def test_launch_order_longest_first_then_id() -> None:
    """FUN-AD cells (by epochs, descending) start before the one-pass methods; ties by cell id."""
    from types import SimpleNamespace

    from harness.progress import launch_order

    def cell(cid: str, method: str, **params: object) -> SimpleNamespace:
        settings = method_class(method).Settings(**params)
        return SimpleNamespace(cell_id=cid, config=SimpleNamespace(method=method, settings=settings))

    cells = [
        cell("a", "patchcore"),
        cell("b", "funad", epochs=5),
        cell("c", "softpatch"),
        cell("d", "funad"),  # default epochs: 1500
        cell("e", "funad", epochs=5),
    ]
    assert launch_order(cells) == ["d", "b", "e", "a", "c"]


#: a value other than the default for every HASH_DEFAULTS field (a new field needs one here)
NON_DEFAULT = {"shortfall": "augment", "min_test_anomalies": 3, "backbone.border_context": True,
               "source": "all_test", "ratio_of": "train", "pool_order": "appended",
               "split_list_sha256": "ab" * 32}


#: method settings added after ids were handed out (issue 24), and a value other than the default of each
ADDED_LATER: dict[str, dict[str, Any]] = {
    "patchcore": {"reference_quirks": True, "squared_distance": True, "aggregation": "zero_pad",
                  "coreset_start": "released", "truncate_coreset": True},
    "inreach": {"reference_quirks": True, "swapped_filing": True, "nearest_upsampling": True,
                "strict_trim": True, "keep_duplicates": True},
}
ADDED_LATER["softpatch"] = {**ADDED_LATER["patchcore"], "projection_per_use": True, "denoise_in_greedy": True,
                            "strict_quantile": True}


def _with(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`values` with the field at dotted `path` set (the cell id's keyword args, or inside one)."""
    head, _, rest = path.partition(".")
    if not rest:
        return {**values, head: value}
    return {**values, head: {**values[head], rest: value}}


def test_hash_defaults_table_is_covered() -> None:
    from funad.methods import available
    from harness.cells import HASH_DEFAULTS

    assert set(NON_DEFAULT) == set(HASH_DEFAULTS)
    declared = {m: set(method_class(m).Settings.ADDED_LATER) for m in available()}
    assert {m: names for m, names in declared.items() if names} == {m: set(v) for m, v in ADDED_LATER.items()}


@pytest.mark.parametrize(("method", "name"), [(m, n) for m, names in ADDED_LATER.items() for n in names])
def test_method_settings_added_later_keep_the_ids(method: str, name: str) -> None:
    """A method setting added later: its table default is the Settings' default; at it, the id is the hash
    of the settings without it (the id the cell had before), any other value joins the hash."""
    settings_cls = method_class(method).Settings

    def ids(settings: dict[str, Any]) -> tuple[str, str]:
        """(cell_id of a cell with these settings, sha256 of its payload without the added-later defaults)."""
        filled = settings_cls(**settings)
        split = {"ratio": 0.1, **{need.field: need.value for need in filled.split_needs()}}
        cfg = CellConfig.build(dataset=GOLDEN["dataset"], category="bottle", backbone=GOLDEN["backbone"],
                               method=method, settings=filled, split=split)
        dump = filled.model_dump(mode="json")
        payload = {"dataset": GOLDEN["dataset"], "category": "bottle", "method": method, "seed": 0,
                   "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 256,
                                "crop": 224, "layers": None, "mean": None, "std": None, "seed": 0},
                   "count": None, "overlap": False, **split,
                   "settings": {k: v for k, v in dump.items()
                                if k not in ADDED_LATER[method] or v != settings_cls.model_fields[k].default}}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return cell_id(cfg), hashlib.sha256(text.encode()).hexdigest()[:16]

    plain_id, plain_want = ids({})
    assert plain_id == plain_want
    changed_id, changed_want = ids({name: ADDED_LATER[method][name]})
    assert changed_id == changed_want != plain_id


def _is_same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("path", sorted(NON_DEFAULT))
def test_one_hash_rule_for_fields_added_later(path: str) -> None:
    """At its default a listed field leaves the id as it was before the field existed (the golden
    id); any other value joins the hashed JSON, so the id is the sha256 of the payload with it."""
    from harness.cells import HASH_DEFAULTS

    assert compute_cell_id(_with(GOLDEN, path, HASH_DEFAULTS[path])) == "bdb32c9d346566db"
    other = NON_DEFAULT[path]
    payload = {k: GOLDEN[k] for k in ("dataset", "category", "backbone", "method", "settings")}
    payload |= {"ratio": 0.1, "count": None, "overlap": False, "seed": 0}
    text = json.dumps(_with(payload, path, other), sort_keys=True, separators=(",", ":"))
    want = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert compute_cell_id(_with(GOLDEN, path, other)) == want != "bdb32c9d346566db"


def test_explicit_defaults_in_the_spec_keep_the_ids(tmp_path: Path, root: Path) -> None:
    """`shortfall: cap` and `border_context: false` written out are the cells of the plain spec."""
    plain = load_spec(spec_file(tmp_path, root, name="plain"))
    explicit = load_spec(
        spec_file(
            tmp_path, root, name="explicit",
            backbone={"resize": 64, "crop": 64, "border_context": False},
            contamination={"ratios": [0.0, 0.1], "overlap": [False, True], "shortfall": "cap",
                           "source": "anomalies", "ratio_of": "normal", "pool_order": "sorted"},
        )
    )
    changed = load_spec(spec_file(tmp_path, root, name="changed", backbone={"resize": 64, "crop": 64,
                                                                            "border_context": True}))
    ids = [c.cell_id for c in expand_cells(plain)]
    assert [c.cell_id for c in expand_cells(explicit)] == ids
    assert not set(ids) & {c.cell_id for c in expand_cells(changed)}
