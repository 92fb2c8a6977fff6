"""Bad inputs: every malformed sweep file and dataset tree gives one clear message, never a traceback.

The corpus lives in tests/bad_inputs/: specs/*.yaml (malformed sweep files; EXPECTED below says what
each message must contain) and trees.py (malformed MVTec-layout trees). Most cases run the CLI's
main() in-process with Ray forbidden (a spec error must be found before Ray); a few run the real CLI
as a subprocess to check stderr and the exit code end to end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from bad_inputs.trees import TREE_CASES, build_broken

REPO = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "bad_inputs" / "specs"

#: corpus file -> fragments its message must contain (besides the file's own path)
EXPECTED: dict[str, tuple[str, ...]] = {
    "01_syntax_unclosed_bracket": ("not valid YAML at line 3", "expected ',' or '}'"),
    "02_syntax_bad_indent": ("not valid YAML at line 4",),
    "03_tab_indent": ("not valid YAML at line 3", "'\\t'"),
    "04_unknown_top_key": ("bogus_key: unknown key", "allowed:"),
    "05_unknown_method_setting": ("methods.patchcore.coreset_ratoi: unknown setting", "coreset_ratio"),
    "06_wrong_type_seeds": ("seeds:", "valid list", "'zero'"),
    "07_wrong_type_max_concurrent": ("max_concurrent:", "integer", "'lots'"),
    "08_ratio_out_of_range": ("contamination.ratios[0]", "less than 1", "1.5"),
    "09_negative_seed": ("seeds[0]", "greater than or equal to 0"),
    "10_empty_grid": ("methods.patchcore.coreset_ratio: empty grid",),
    "11_unknown_method": ("unknown method 'patchcor'", "patchcore"),
    "12_unknown_dataset_kind": ("datasets[0].kind", "'imagenet'", "mvtec"),
    "13_unknown_category": ("unknown category 'marble'", "brick"),
    "14_unknown_backbone": ("backbone.name: unknown backbone 'resnet9000'",),
    "15_python_object_tag": ("storage: YAML tag !!python/object/apply:os.system", "not allowed"),
    "16_python_name_tag": ("YAML tag !!python/name:os.system", "not allowed"),
    "17_duplicate_seeds": ("seeds: duplicate",),
    "18_list_instead_of_dict": ("methods:", "valid dictionary"),
    "19_dict_instead_of_list": ("datasets:", "valid list"),
    "20_top_level_list": ("expected a mapping", "got list"),
    "21_empty_file": ("name: required key is missing", "methods: required key is missing"),
    "22_huge_number": ("max_concurrent:", "'1e400'"),
    "23_huge_int": ("seeds[0]", "less than or equal to 4294967295"),
    "24_missing_name": ("name: required key is missing",),
    "25_missing_methods": ("methods: required key is missing",),
    "26_bad_name_chars": ("name:", "'../../etc'"),
    "27_crop_larger_than_resize": ("crop 512 is larger than resize 64",),
    "28_missing_root": ("datasets[0].root: directory does not exist", "/nonexistent/funad-missing-root"),
    "29_unset_env_var": ("FUNAD_SURELY_UNSET_VAR is not set",),
    "30_string_scalar_file": ("expected a mapping", "got str"),
    "31_null_methods": ("methods:", "valid dictionary"),
    "32_weights_file_missing": ("backbone.weights: weights file does not exist",),
    "33_bool_for_int": ("max_failures:", "'yes please'"),
    "34_method_setting_out_of_range": ("methods.patchcore.coreset_ratio", "less than or equal to 1"),
    "35_yaml_anchor_bomb": ("expands to more than 100000 YAML values",),
    "36_duplicate_key": ("seeds: key given twice (line 9)",),
    "37_non_utf8": ("not UTF-8 text", "0xff"),
    "38_binary_garbage": ("not valid YAML", "special characters"),
    "39_negative_resources": ("resources.cpu", "greater than 0"),
    "40_nan_ratio": ("contamination.ratios[0]", "nan"),
    "41_storage_under_a_file": ("storage: cannot write the run directory /dev/null/runs/bad",),
    "42_billion_laughs": ("expands to more than 100000 YAML values",),
    "43_deep_nesting": ("nested too deeply",),
}


def test_corpus_is_complete() -> None:
    names = sorted(p.stem for p in SPECS.glob("*.yaml"))
    assert names == sorted(EXPECTED) and len(names) >= 25


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run main() from an empty directory (storage: runs lands here) with Ray forbidden."""
    import harness.sweep as hs

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad input reached Ray")

    monkeypatch.setattr(hs, "run_on_ray", forbidden)
    monkeypatch.delenv("FUNAD_SURELY_UNSET_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_main(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from harness.sweep import main

    rc = main([str(spec)])  # an exception here is the traceback a user would have seen
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_spec_one_clear_message(name: str, no_ray: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = SPECS / f"{name}.yaml"
    rc, out, err = run_main(spec, capsys)
    assert rc == 2, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(f"error: {spec}: ") for ln in lines), err
    text = "\n".join(lines)
    for fragment in EXPECTED[name]:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "Traceback" not in out + err
    # one message per problem: nothing but the error lines, and no line is repeated
    assert len(set(lines)) == len(lines)
    assert not (no_ray / "runs").exists()  # no partial run directory
    assert not Path("/tmp/funad-pwned").exists()


def write_tree_spec(tmp_path: Path, root: Path) -> Path:
    spec = {
        "name": "t",
        "storage": str(tmp_path / "runs"),
        "ray": {"dashboard": False, "num_cpus": 2},
        "max_failures": 0,
        "datasets": [{"kind": "mvtec", "root": str(root), "categories": ["bottle", "wood"]}],
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64},
        "methods": {"patchcore": {"coreset_ratio": 0.5}},
        "report": False,
    }
    path = tmp_path / "tree.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


VALIDATE_CASES = sorted(k for k, (_, where, _) in TREE_CASES.items() if where == "validate")
LOAD_CASES = sorted(k for k, (_, where, _) in TREE_CASES.items() if where == "load")


@pytest.mark.parametrize("name", VALIDATE_CASES)
def test_bad_tree_refused_before_ray(
    name: str, no_ray: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = no_ray / "mvtec"
    named = build_broken(root, name)
    spec = write_tree_spec(no_ray, root)
    rc, out, err = run_main(spec, capsys)
    assert rc == 2, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # exactly one problem, one message
    assert lines[0].startswith(f"error: {spec}: datasets[0]"), err
    assert str(named) in lines[0], err
    for fragment in TREE_CASES[name][2]:
        assert fragment in lines[0], err
    assert "Traceback" not in out + err
    assert not (no_ray / "runs").exists()


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = subprocess.run(
        [sys.executable, "-m", "harness.sweep", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    print(res.stdout[-3000:], res.stderr[-3000:], sep="\n--- stderr ---\n")
    return res


@pytest.mark.parametrize("name", ["15_python_object_tag", "37_non_utf8", "42_billion_laughs"])
def test_bad_spec_real_cli(name: str, tmp_path: Path) -> None:
    """End to end through a real process: exit 2, the message, no traceback, nothing written."""
    res = cli(str(SPECS / f"{name}.yaml"), cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.startswith(f"error: {SPECS / name}.yaml: ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_undecodable_images_end_as_failed_rows(tmp_path: Path) -> None:
    """Problems only decoding finds: the sweep runs, the broken category ends `failed` with a clear
    first line naming the file, the other completes, and the console shows no traceback."""
    root = tmp_path / "mvtec"
    named = {}
    for name in LOAD_CASES:  # both breakers hit `wood`: a truncated PNG and a truncated JPG
        named[name] = build_broken(root, name) if not root.exists() else TREE_CASES[name][0](root)
    spec = write_tree_spec(tmp_path, root)
    res = cli(str(spec), cwd=tmp_path)  # not quiet: workers' logs are forwarded to this console
    assert res.returncode == 1
    console = res.stdout + res.stderr
    # No traceback of the failure on the console: no frame of the project's code, and Tune's own
    # "trial failed" log is one line. (A Ray worker killed at shutdown may print an unrelated
    # "Exception ignored ... SystemExit" trace of Ray's own code: not the cell's error.)
    assert not re.search(r'File "[^"]*/(funad|harness)/', console), console
    failed_logs = [ln for ln in console.splitlines() if "Trial task failed" in ln]
    assert failed_logs and all("DatasetError" in ln for ln in failed_logs), failed_logs
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results").set_index("category")
    assert df.loc["bottle", "status"] == "ok"
    assert df.loc["wood", "status"] == "failed"
    first = df.loc["wood", "error"].splitlines()[0]
    assert first.startswith("DatasetError: ") and "truncated" in first
    assert any(str(p) in first for p in named.values()), first
    assert "1 ok" in res.stdout and "1 failed" in res.stdout
