"""The sweep file: a good one parses with defaults; every bad one names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest_data import build_mvtec

from harness.spec import SpecError, apply_override, load_spec


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mvtec(tmp_path_factory.mktemp("spec") / "mvtec")


def base(root: Path) -> dict[str, Any]:
    return {
        "name": "t",
        "datasets": [{"kind": "mvtec", "root": str(root), "categories": ["bottle"]}],
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64},
        "contamination": {"ratios": [0.0, 0.1]},
        "seeds": [0, 1],
        "methods": {"patchcore": {"coreset_ratio": [0.5, 1.0]}, "softpatch": None},
    }


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def problems_of(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_spec(path, overrides)
    probs = exc.value.problems
    assert probs and all(p.startswith(f"{path}: ") for p in probs), probs
    return probs


def one_problem(path: Path, key: str, *words: str) -> str:
    """Exactly one problem, naming the key path and containing each word."""
    probs = problems_of(path)
    hits = [p for p in probs if f": {key}" in p]
    assert len(hits) == 1, probs
    for w in words:
        assert w in hits[0], hits[0]
    return hits[0]


def test_valid_spec_fills_defaults(tmp_path: Path, mvtec_root: Path) -> None:
    spec = load_spec(write(tmp_path, base(mvtec_root)))
    assert spec.name == "t" and spec.storage == "runs"
    assert spec.ray.address is None and spec.ray.dashboard is True
    assert spec.resources.cpu == 1.0 and spec.resources.gpu == 0.0
    assert spec.max_failures == 1 and spec.max_concurrent is None
    assert spec.contamination.shortfall == "cap" and spec.contamination.overlaps == [False]
    assert spec.methods["softpatch"] == {}
    assert spec.eval_every == 0 and spec.report is True
    assert spec.run_dir == Path("runs") / "t"
    r = spec.resolved()
    assert r["contamination"]["ratios"] == [0.0, 0.1]
    assert r["backbone"]["resize"] == 64 and r["datasets"][0]["categories"] == ["bottle"]
    # the resolved dict is plain YAML and re-validates to the same spec
    again = write(tmp_path, yaml.safe_dump(r), "again.yaml")
    assert load_spec(again).resolved() == r


def test_fractional_resources_and_counts(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["resources"] = {"cpu": 0.5, "gpu": 0.25}
    d["contamination"] = {"counts": [0, 2], "overlap": [False, True]}
    spec = load_spec(write(tmp_path, d))
    assert spec.resources.gpu == 0.25
    assert spec.contamination.ratios is None and spec.contamination.counts == [0, 2]
    assert spec.contamination.overlaps == [False, True]


def test_unknown_top_level_key(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root) | {"sedes": [0]}
    one_problem(write(tmp_path, d), "sedes", "unknown key", "allowed:", "seeds")


def test_unknown_nested_key(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["resources"] = {"cpus": 2}
    one_problem(write(tmp_path, d), "resources.cpus", "unknown key", "cpu, gpu")


def test_wrong_type(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["seeds"] = [0, "one"]
    one_problem(write(tmp_path, d), "seeds[1]", "integer", "'one'")


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_ratio_out_of_range(tmp_path: Path, mvtec_root: Path, ratio: float) -> None:
    d = base(mvtec_root)
    d["contamination"] = {"ratios": [0.0, ratio]}
    msg = one_problem(write(tmp_path, d), "contamination.ratios[1]")
    assert str(ratio) in msg


def test_unknown_dataset_kind(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["datasets"][0]["kind"] = "mvtek"
    one_problem(write(tmp_path, d), "datasets[0].kind", "'mvtek'", "synthetic", "mvtec", "folder")


def test_unknown_method(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["methods"]["patchcorr"] = {}
    one_problem(write(tmp_path, d), "methods.patchcorr", "unknown method", "patchcore, softpatch")


def test_unknown_method_setting(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["methods"]["patchcore"]["coreset"] = 0.1
    one_problem(write(tmp_path, d), "methods.patchcore.coreset", "unknown setting", "coreset_ratio")


def test_wrong_typed_and_out_of_range_setting_in_a_grid(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["methods"]["funad"] = {"epochs": ["ten", 5], "keep_ratio": [0.5]}
    probs = problems_of(write(tmp_path, d))
    hits = [p for p in probs if ": methods.funad.epochs" in p]
    # reported once although two grid points (x the other axes) carry the bad value
    assert len(hits) == 1 and "'ten'" in hits[0], probs


def test_duplicate_values_and_empty_lists(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["seeds"] = [0, 0]
    d["contamination"] = {"ratios": [0.1, 0.1]}
    d["methods"]["patchcore"]["coreset_ratio"] = [0.5, 0.5]
    d["methods"]["softpatch"] = {"lof_k": []}
    probs = problems_of(write(tmp_path, d))
    text = "\n".join(probs)
    assert ": seeds: duplicate" in text
    assert ": contamination.ratios: duplicate" in text
    assert ": methods.patchcore.coreset_ratio: duplicate" in text
    assert ": methods.softpatch.lof_k: empty grid" in text


def test_empty_seeds(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["seeds"] = []
    one_problem(write(tmp_path, d), "seeds", "at least 1")


def test_unknown_category_of_a_tree(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["datasets"][0]["categories"] = ["bottle", "bottel"]
    one_problem(write(tmp_path, d), "datasets[0].categories", "'bottel'", "bottle, wood")


def test_unknown_category_of_synthetic(tmp_path: Path, mvtec_root: Path) -> None:
    from funad.data import create_dataset

    have = create_dataset("synthetic").categories()  # generated once per test session
    d = base(mvtec_root)
    d["datasets"] = [{"kind": "synthetic", "categories": [have[0], "marble"]}]
    one_problem(write(tmp_path, d), "datasets[0].categories", "'marble'", have[0])


def test_missing_root_and_missing_weights(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["datasets"] = [{"kind": "mvtec", "root": str(tmp_path / "nope")}, {"kind": "folder"}]
    d["backbone"] = {"weights": str(tmp_path / "w.pth")}
    probs = problems_of(write(tmp_path, d))
    text = "\n".join(probs)
    assert ": datasets[0].root: directory does not exist" in text and "nope" in text
    assert ": datasets[1].root: required for kind folder" in text
    assert ": backbone.weights: weights file does not exist" in text and "w.pth" in text


def test_unknown_backbone(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root)
    d["backbone"] = {"name": "tf_efficientnet_lite9", "weights": "hub"}
    one_problem(write(tmp_path, d), "backbone.name", "unknown backbone", "tf_efficientnet_lite")


def test_python_tag_is_refused_with_its_key(tmp_path: Path, mvtec_root: Path) -> None:
    text = yaml.safe_dump(base(mvtec_root), sort_keys=False)
    text += "storage: !!python/object/apply:os.system ['echo pwned']\n"
    probs = problems_of(write(tmp_path, text))
    assert len(probs) == 1 and ": storage: YAML tag !!python/object/apply:os.system" in probs[0], probs
    assert "not allowed" in probs[0]


def test_env_expansion_and_unset_variable(
    tmp_path: Path, mvtec_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = base(mvtec_root)
    d["datasets"][0]["root"] = "${SPEC_TEST_ROOT}"
    d["storage"] = "${SPEC_TEST_STORAGE:-out}"
    path = write(tmp_path, d)
    monkeypatch.delenv("SPEC_TEST_ROOT", raising=False)
    one_problem(path, "datasets[0].root", "SPEC_TEST_ROOT is not set")
    monkeypatch.setenv("SPEC_TEST_ROOT", str(mvtec_root))
    spec = load_spec(path)
    assert spec.datasets[0].root == str(mvtec_root) and spec.storage == "out"


def test_all_problems_reported_at_once(tmp_path: Path, mvtec_root: Path) -> None:
    d = base(mvtec_root) | {"bogus": 1, "seeds": []}
    d["datasets"][0]["kind"] = "nope"
    d["methods"] = {"patchcore": {"coreset_ratio": "x"}, "nomethod": {}}
    probs = problems_of(write(tmp_path, d))
    keys = ["bogus", "seeds", "datasets[0].kind", "methods.patchcore.coreset_ratio", "methods.nomethod"]
    for k in keys:
        assert any(f": {k}" in p for p in probs), (k, probs)


def test_set_overrides(tmp_path: Path, mvtec_root: Path) -> None:
    path = write(tmp_path, base(mvtec_root))
    spec = load_spec(
        path,
        [
            "methods.funad.epochs=5",
            "contamination.ratios=[0.05]",
            "datasets.0.categories=all",
            "report=false",
            "ray.address=auto",
        ],
    )
    assert spec.methods["funad"] == {"epochs": 5}
    assert spec.contamination.ratios == [0.05]
    assert spec.datasets[0].categories == "all" and spec.report is False and spec.ray.address == "auto"
    # overrides are validated like the file
    probs = problems_of(path, ("contamination.ratios=[2]",))
    assert any(": contamination.ratios[0]" in p for p in probs)
    probs = problems_of(path, ("noequals",))
    assert any("--set noequals" in p for p in probs)


def test_apply_override_index_errors() -> None:
    data: dict[str, Any] = {"datasets": [{"kind": "synthetic"}]}
    apply_override(data, "datasets.0.root=/x")
    assert data["datasets"][0]["root"] == "/x"
    with pytest.raises(ValueError, match="not an index"):
        apply_override(data, "datasets.3.root=/x")


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "none.yaml")
    bad = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    top = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(top)


def test_smoke_sweep_is_valid() -> None:
    smoke = Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml"
    spec = load_spec(smoke, check_data=False)
    assert spec.name == "smoke" and spec.datasets[0].kind == "synthetic"
    assert set(spec.methods) == {"funad", "patchcore", "softpatch"}
    assert spec.contamination.ratios == [0.0, 0.1] and spec.seeds == [0, 1]


def test_a_dataset_with_its_own_noisy_split_refuses_injection(tmp_path: Path, capsys) -> None:
    """A Real-IAD FUIAD split already holds anomalous training images: asking it for injected images
    on top is one problem naming the dataset and its categories (exit 2 before Ray); ratio 0 is fine."""
    from fixtures_datasets import REALIAD_CLASSES, build_realiad, build_realiad_fuiad

    from harness.sweep import main

    root = build_realiad_fuiad(build_realiad(tmp_path / "realiad"))
    fuiad = {"kind": "realiad", "root": str(root), "split": "realiad_jsons_fuiad_0.2"}
    data = base(root) | {"datasets": [fuiad]}
    path = write(tmp_path, data)
    problem = one_problem(path, "datasets[0]", "this split already holds anomalous training images",
                          "inject nothing more", *REALIAD_CLASSES)
    assert "ratio 0" in problem
    assert main([str(path), "--dry-run"]) == 2
    assert "already holds anomalous training images" in capsys.readouterr().err
    fine = write(tmp_path, data | {"contamination": {"ratios": [0.0]}}, name="fine.yaml")
    assert load_spec(fine).contamination.ratios == [0.0]


def test_a_method_family_expands_into_its_members(tmp_path: Path, mvtec_root: Path, monkeypatch) -> None:
    """One sweep-file entry standing for several methods (as `anomalib: {model: [...]}` does): each member
    is its own method in the grid, checked by its own Settings; an unknown member is one problem."""
    import funad.methods as registry
    from funad.methods import FamilyError
    from harness.cells import expand_cells

    def expand(settings: dict) -> list[tuple[str, dict]]:
        models = settings.pop("model")
        models = models if isinstance(models, list) else [models]
        for m in models:
            if m not in ("patchcore", "softpatch"):
                raise FamilyError("model", f"unknown model {m!r} (allowed: patchcore, softpatch)")
        return [(m, dict(settings)) for m in models]

    registry.available()  # built-ins loaded before the family is added
    monkeypatch.setitem(registry._FAMILIES, "both", expand)
    both = {"model": ["patchcore", "softpatch"], "map_sigma": [1.0, 2.0]}
    data = base(mvtec_root) | {"methods": {"both": both}}
    spec = load_spec(write(tmp_path, data))
    assert list(spec.concrete_methods()) == ["patchcore", "softpatch"]
    cells = expand_cells(spec)
    assert {c.config.method for c in cells} == {"patchcore", "softpatch"}
    assert {c.hp["map_sigma"] for c in cells} == {1.0, 2.0} and all(set(c.hp) == {"map_sigma"} for c in cells)
    bad = write(tmp_path, data | {"methods": {"both": {"model": ["patchcore", "nope"]}}}, name="bad.yaml")
    one_problem(bad, "methods.both.model", "unknown model 'nope'", "allowed: patchcore, softpatch")
    negative = {"both": {"model": "softpatch", "map_sigma": -1}}
    wrong = write(tmp_path, data | {"methods": negative}, name="w.yaml")
    one_problem(wrong, "methods.both.map_sigma")
