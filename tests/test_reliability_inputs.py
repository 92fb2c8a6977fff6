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
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from bad_inputs.trees import TREE_CASES, build_broken
from conftest_data import build_mvtec, write_mask

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
DECODE_CASES = sorted(k for k, (_, where, _) in TREE_CASES.items() if where == "decode")


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


TINY_BACKBONE = {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64}


@pytest.mark.parametrize("name", DECODE_CASES)
def test_decode_check_names_the_broken_file(name: str, tmp_path: Path) -> None:
    """Listing passes (headers are fine); decoding every image and mask finds the file."""
    from funad.data import create_dataset
    from funad.data.images import check_files
    from funad.data.records import DatasetError

    root = tmp_path / "mvtec"
    named = build_broken(root, name)
    records = create_dataset("mvtec", root=str(root)).records("wood")  # listing does not see it
    with pytest.raises(DatasetError) as info:
        check_files(records)
    message = str(info.value)
    assert message.startswith(f"{named}: ") and "\n" not in message, message
    for fragment in TREE_CASES[name][2]:
        assert fragment in message, message
    check_files(create_dataset("mvtec", root=str(root)).records("bottle"))  # the intact category passes


def test_features_stage_decodes_every_file_on_a_warm_cache(tmp_path: Path, one_thread: None) -> None:
    """Cold: the backbone decodes each image once and the check adds no second decode. Warm (a new
    process: nothing decoded yet): no backbone forward, yet every image and mask is decoded, so a
    mask broken after the features were cached still stops the stage."""
    from funad.data.records import DatasetError
    from funad.features import BackboneConfig
    from harness.cells import FeatureJob
    from harness.features_stage import extract_category

    root = tmp_path / "mvtec"
    build_broken(root, "truncated_png_body")  # breaks wood; bottle is intact
    job = FeatureJob({"kind": "mvtec", "root": str(root)}, "bottle", BackboneConfig(**TINY_BACKBONE))
    images = sorted(p for p in (root / "bottle").rglob("*.png") if "ground_truth" not in p.parts)
    n_unique = len({p.read_bytes() for p in images})  # two defect images are equal: one backbone pass
    cache = str(tmp_path / "features")
    cold = extract_category(job, cache)
    n = len(images)
    assert (cold["images"], cold["forwards"], cold["decoded"]) == (n, n_unique, n - n_unique)
    for p in images:  # what a new process sees: files it has not decoded (same content: cache hits)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1_000_000))
    warm = extract_category(job, cache)
    assert (warm["forwards"], warm["decoded"]) == (0, n)
    mask = root / "bottle" / "ground_truth" / "broken" / "000_mask.png"
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(DatasetError, match=re.escape(str(mask))):
        extract_category(job, cache)
    with pytest.raises(DatasetError, match="unreadable or truncated image"):
        extract_category(job._replace(category="wood"), cache)


@pytest.mark.slow
def test_undecodable_image_stops_the_sweep_before_any_trial(tmp_path: Path) -> None:
    """A training image cut after its header: exit 2 from the features stage, one message naming the
    file, no traceback, and no trial ran (no results/, scores/, history/, maps/ or tune/)."""
    root = tmp_path / "mvtec"
    named = build_broken(root, "truncated_png_body")
    spec = write_tree_spec(tmp_path, root)
    res = cli(str(spec), cwd=tmp_path)  # not quiet: workers' logs are forwarded to this console
    assert res.returncode == 2
    console = res.stdout + res.stderr
    assert "Traceback" not in console and not re.search(r'File "[^"]*/(funad|harness)/', console), console
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("error: mvtec/wood/"), errors[0]
    assert f"{named}: unreadable or truncated image" in errors[0], errors[0]
    run_dir = tmp_path / "runs" / "t"
    left = sorted(p.name for p in run_dir.iterdir())
    print("run directory after exit 2:", left)
    assert not {"results", "scores", "history", "maps", "tune", "report.html"} & set(left), left
    assert " ok " not in res.stdout and "FAILED" not in res.stdout


# --------------------------------------------------------------- bad input at the method level
def _cell(root: Path, method: str = "patchcore", params: dict | None = None):
    from funad.run import CellConfig

    return CellConfig.build(dataset={"kind": "mvtec", "root": str(root)}, category="bottle",
                            backbone=TINY_BACKBONE, method=method,
                            settings={"coreset_ratio": 0.5} if params is None else params)


def _ok_row(cfg, outcome) -> dict:
    """The result row the harness writes for this outcome, through the run store and back."""
    from datetime import UTC, datetime

    from harness.cells import Cell
    from harness.rows import build_ok_row
    from harness.store import RunStore

    now = datetime.now(UTC)
    row = build_ok_row(run="r", cell=Cell("c0", cfg, {}), outcome=outcome, started_at=now, finished_at=now,
                       node="n", peak_rss_mb=1.0, peak_gpu_mb=None)
    store = RunStore(Path(cfg.dataset["root"]).parent / "run", methods={cfg.method: {}})
    store.write_cell(row, outcome.scores, outcome.history, outcome.map_examples)
    return store.read_results().iloc[0].to_dict()


def test_check_finite_names_exactly_the_broken_images() -> None:
    from funad.features import FeatureSet, PackRows

    rng = np.random.default_rng(0)
    n, grid, c = 9, 3, 4
    patches = rng.normal(size=(n, grid, grid, c)).astype(np.float16)
    cls = patches.mean(axis=(1, 2))
    ids = [f"cat/train/good/{i:03d}.png" for i in range(n)]
    labels = np.zeros(n, np.int8)
    FeatureSet(ids, cls, patches, labels).check_finite()  # finite: nothing raised
    patches[2, 1, 2, 3] = np.nan
    cls[5, 0] = np.inf
    with np.errstate(over="ignore"):
        patches[7, 0, 0, 0] = np.float16(70000.0)  # past float16's range: inf, as an fp16 overflow leaves it
    truth = [ids[i] for i in range(n) if not (np.isfinite(patches[i]).all() and np.isfinite(cls[i]).all())]
    assert truth == [ids[2], ids[5], ids[7]]
    for chunk in (1, 2, 64):  # chunk borders must not matter
        with pytest.raises(ValueError) as info:
            FeatureSet(ids, cls, patches, labels).check_finite("training pool", chunk=chunk)
        message = str(info.value)
        assert message.startswith("training pool: NaN or inf in the features of 3 of 9 images (")
        assert ", ".join(truth) in message
    # a split's view of a category pack (rows 7, 0, 3): only row 7 is broken
    rows = np.array([7, 0, 3])
    view = FeatureSet([ids[i] for i in rows], PackRows(cls, rows), PackRows(patches, rows), labels[rows])
    with pytest.raises(ValueError, match=r"of 1 of 3 images \(cat/train/good/007.png\)"):
        view.check_finite("training pool", chunk=2)


def test_metric_notes_say_exactly_why_a_metric_is_null() -> None:
    """A metric is null exactly when sklearn cannot compute it for want of a class, and then it has a note."""
    from sklearn.metrics import roc_auc_score

    from funad.metrics import MASKS_NOTE, compute_metrics, format_notes, metric_notes

    rng = np.random.default_rng(1)
    masks = np.zeros((4, 8, 8), bool)
    masks[2, :3, :3] = masks[3, 4:, 4:] = True
    maps = rng.random((4, 8, 8))
    cases = {
        "both classes": ([0, 0, 1, 1], masks),
        "no anomalous image": ([0, 0, 0, 0], np.zeros_like(masks)),
        "no normal image": ([1, 1, 1, 1], masks),
        "all-zero masks": ([0, 0, 1, 1], np.zeros_like(masks)),
        "every pixel anomalous": ([1, 1, 1, 1], np.ones_like(masks)),
    }
    for name, (labels, m) in cases.items():
        scores = rng.random(4)
        metrics = compute_metrics(np.array(labels), scores, m, maps)
        notes = metric_notes(np.array(labels), m, maps, image_ids=list("abcd"))
        for key, value in metrics.items():
            assert (value is None) == (key in notes), (name, key, value, notes)
        for key, y, s in (("image_auroc", labels, scores), ("pixel_auroc", m.ravel(), maps.ravel())):
            with warnings.catch_warnings():  # sklearn warns and returns NaN (older: raises) on one class
                warnings.simplefilter("ignore")
                try:
                    defined = bool(np.isfinite(roc_auc_score(y, s)))
                except ValueError:
                    defined = False
            assert defined == (metrics[key] is not None), (name, key)
    notes = metric_notes(np.array([0, 0, 0, 0]), np.zeros_like(masks), maps)
    assert format_notes(notes) == ("image_auroc, image_ap, image_f1max: the test set has no anomalous image; "
                                   "pixel_auroc, pixel_ap, aupro: no test mask has an anomalous pixel")
    each = masks.copy()
    each[0, 0, 0] = each[1, 7, 7] = True  # every (anomalous) image has a region
    assert format_notes(metric_notes(np.array([1, 1, 1, 1]), each, maps)) == (
        "image_auroc, image_ap, image_f1max: the test set has no normal image")
    assert metric_notes(np.array([0, 1]), None, None)["aupro"] == "image-level data: no ground-truth masks"
    # One anomalous image (c) whose mask is empty at the crop: the metrics exist, the note says so.
    one_empty = masks.copy()
    one_empty[2] = False
    notes = metric_notes(np.array([0, 0, 1, 1]), one_empty, maps, image_ids=list("abcd"))
    assert list(notes) == [MASKS_NOTE]
    assert notes[MASKS_NOTE].startswith("1 anomalous test image(s) with an all-zero mask at the evaluated "
                                        "crop (c)")
    assert format_notes({}) is None


def test_test_set_without_anomalies_or_normals_gives_null_metrics_and_notes(
    tmp_path: Path, one_thread: None
) -> None:
    from funad.run import run_cell

    no_defects = build_mvtec(tmp_path / "a" / "mvtec", {"bottle": {}}, n_train=4, n_good=3)
    cfg = _cell(no_defects)
    out = run_cell(cfg, feature_cache=tmp_path / "features")
    assert all(out.metrics[k] is None for k in out.metrics)
    row = _ok_row(cfg, out)
    assert row["status"] == "ok" and pd.isna(row["image_auroc"])
    assert row["metric_notes"] == ("image_auroc, image_ap, image_f1max: the test set has no anomalous image; "
                                   "pixel_auroc, pixel_ap, aupro: no test mask has an anomalous pixel")

    no_normals = build_mvtec(tmp_path / "b" / "mvtec", {"bottle": {"broken": 3}}, n_train=4, n_good=0)
    out = run_cell(_cell(no_normals), feature_cache=tmp_path / "features")
    assert out.metrics["image_auroc"] is None and out.metrics["pixel_auroc"] is not None
    assert out.metric_notes == dict.fromkeys(("image_auroc", "image_ap", "image_f1max"),
                                             "the test set has no normal image")


def test_all_zero_masks_are_said_in_the_row(tmp_path: Path, one_thread: None) -> None:
    from funad.run import run_cell

    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 2}}, n_train=4, n_good=2)
    write_mask(root / "bottle" / "ground_truth" / "broken" / "001_mask.png", fg=0)
    cfg = _cell(root)
    out = run_cell(cfg, feature_cache=tmp_path / "features")
    assert out.metrics["pixel_auroc"] is not None and out.metrics["aupro"] is not None
    note = _ok_row(cfg, out)["metric_notes"]
    assert note.startswith("masks: 1 anomalous test image(s) with an all-zero mask"), note
    assert "crop (bottle/test/broken/001.png)" in note, note
    write_mask(root / "bottle" / "ground_truth" / "broken" / "000_mask.png", fg=0)  # now every mask is empty
    out = run_cell(cfg, feature_cache=tmp_path / "features")
    assert out.metrics["image_auroc"] is not None
    assert {k: out.metric_notes.get(k) for k in ("pixel_auroc", "pixel_ap", "aupro")} == dict.fromkeys(
        ("pixel_auroc", "pixel_ap", "aupro"), "no test mask has an anomalous pixel")


POOL_OF_ONE = {"patchcore": {"coreset_ratio": 0.5}, "softpatch": {"coreset_ratio": 0.5},
               "funad": {"epochs": 1}, "inreach": {}}


@pytest.mark.parametrize("method", sorted(POOL_OF_ONE))
def test_pool_of_one_image_scores_or_says_why(method: str, tmp_path: Path, one_thread: None) -> None:
    """A training pool of one image: finite scores, or one ValueError naming the method and the pool."""
    from funad.run import run_cell

    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 2}}, n_train=1, n_good=2)
    cfg = _cell(root, method, POOL_OF_ONE[method])
    try:
        out = run_cell(cfg, feature_cache=tmp_path / "features")
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(f"{method}: ") and "pool of 1 image" in message and "\n" not in message
        assert method == "inreach", message  # the one method that needs more than one image (documented)
        return
    assert out.n_train_pool == 1 and all(np.isfinite(s["score"]) for s in out.scores)
    assert out.metrics["image_auroc"] is not None


def test_nan_features_fail_the_cell_naming_the_image(tmp_path: Path, one_thread: None) -> None:
    """A cache entry holding NaN (written by a version before the cache refused them): the cell fails
    with the image's id, instead of NaN scores or an error deep in a method."""
    import hashlib
    import json
    import shutil

    from funad.features.cache import FeatureCache, entry_key
    from funad.run import run_cell

    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 2}}, n_train=4, n_good=2)
    cfg = _cell(root)
    cache = tmp_path / "features"
    run_cell(cfg, feature_cache=cache)
    bdir = next(cache.glob("*/entries")).parent
    image = root / "bottle" / "train" / "good" / "002.png"
    data_path, meta_path = FeatureCache(bdir, np.load(next(bdir.rglob("*.npy"))).shape).entry_paths(
        entry_key(image, None))
    arr = np.load(data_path)
    arr[3, 1] = np.nan
    np.save(data_path, arr)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(bdir / "packs")  # the pack is rebuilt from the (checksum-valid) entries
    with pytest.raises(ValueError) as info:
        run_cell(cfg, feature_cache=cache)
    message = str(info.value)
    assert message.startswith("training pool: NaN or inf in the features of 1 of 4 images "
                              "(bottle/train/good/002.png)"), message


def test_broken_weights_file_fails_naming_an_image(tmp_path: Path, one_thread: None) -> None:
    """A weights file with NaN in it: the features are refused (never cached, never scored)."""
    import timm
    import torch

    from funad.features.backbone import bundled_state_dict
    from funad.run import CellConfig, run_cell

    sd = bundled_state_dict(timm.create_model("tf_efficientnet_lite0"))
    sd["conv_stem.weight"] = sd["conv_stem.weight"] * float("nan")
    weights = tmp_path / "broken.pth"
    torch.save(sd, weights)
    root = build_mvtec(tmp_path / "mvtec", {"bottle": {"broken": 2}}, n_train=4, n_good=2)
    cfg = CellConfig.build(dataset={"kind": "mvtec", "root": str(root)}, category="bottle",
                     backbone={**TINY_BACKBONE, "weights": str(weights)}, method="patchcore",
                     settings={"coreset_ratio": 0.5})
    with pytest.raises(ValueError) as info:
        run_cell(cfg, feature_cache=tmp_path / "features")
    message = str(info.value)
    assert str(root / "bottle") in message and "non-finite features" in message, message
    assert not list((tmp_path / "features").rglob("entries/*/*.npy"))
