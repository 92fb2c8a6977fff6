"""Builders of small on-disk dataset trees in the real layouts (imported explicitly by data tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 32, 24  # deliberately not square


def write_image(path: Path, size: tuple[int, int] = (W, H), value: int = 0) -> Path:
    """A small RGB image (PNG or JPG by suffix) with a pattern so files differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = (np.arange(w)[None, :] * 7 + value) % 256
    arr[..., 1] = (np.arange(h)[:, None] * 5 + value) % 256
    arr[..., 2] = value % 256
    Image.fromarray(arr).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (W, H), fg: int = 255) -> Path:
    """A grayscale mask: a rectangle of value `fg` in the top-left corner, zero elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint8)
    arr[: h // 2, : w // 4] = fg
    Image.fromarray(arr).save(path)
    return path


def mask_truth(size: tuple[int, int] = (W, H)) -> np.ndarray:
    """The bool mask write_mask draws, computed independently of PIL."""
    w, h = size
    out = np.zeros((h, w), dtype=bool)
    out[: h // 2, : w // 4] = True
    return out


def build_mvtec(
    root: Path,
    categories: dict[str, dict[str, int]] | None = None,
    n_train: int = 3,
    n_good: int = 2,
    ext: str = ".png",
) -> Path:
    """MVTec AD tree: categories maps name -> {defect: count}; masks `<stem>_mask.png`."""
    categories = categories or {"bottle": {"broken": 2, "scratch": 1}, "wood": {"hole": 2}}
    for cat, defects in categories.items():
        for i in range(n_train):
            write_image(root / cat / "train" / "good" / f"{i:03d}{ext}", value=i)
        for i in range(n_good):
            write_image(root / cat / "test" / "good" / f"{i:03d}{ext}", value=50 + i)
        for defect, k in defects.items():
            for i in range(k):
                write_image(root / cat / "test" / defect / f"{i:03d}{ext}", value=100 + i)
                write_mask(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def build_visa_csv(root: Path, n_train: int = 3, n_test_normal: int = 2, n_anomaly: int = 2) -> Path:
    """Official VisA archive layout with split_csv/1cls.csv; masks use values 0/1 like VisA."""
    lines = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        base = f"{cat}/Data"
        for i in range(n_train + n_test_normal):
            rel = f"{base}/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, value=i)
            split = "train" if i < n_train else "test"
            lines.append(f"{cat},{split},normal,{rel},")
        for i in range(n_anomaly):
            rel = f"{base}/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{base}/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, value=200 + i)
            write_mask(root / mrel, fg=1)
            lines.append(f"{cat},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def build_visa_tree(root: Path) -> Path:
    """MVTec-style converted VisA: test/{good,bad}; masks named `<stem>.png` and `<stem>_mask.png`."""
    for i in range(3):
        write_image(root / "capsules" / "train" / "good" / f"{i:03d}.JPG", value=i)
    write_image(root / "capsules" / "test" / "good" / "010.JPG", value=10)
    write_image(root / "capsules" / "test" / "bad" / "020.JPG", value=20)
    write_image(root / "capsules" / "test" / "bad" / "021.JPG", value=21)
    write_mask(root / "capsules" / "ground_truth" / "bad" / "020.png", fg=1)
    write_mask(root / "capsules" / "ground_truth" / "bad" / "021_mask.png", fg=255)
    return root


def build_folder(root: Path, n_normal: int = 10, n_anomaly: int = 3, masks: bool = True) -> Path:
    """Random-split folder form: <cat>/normal, <cat>/anomaly, optional <cat>/mask/<stem>.png."""
    for i in range(n_normal):
        write_image(root / "parts" / "normal" / f"n{i:02d}.png", value=i)
    for i in range(n_anomaly):
        write_image(root / "parts" / "anomaly" / f"a{i:02d}.jpg", value=100 + i)
        if masks:
            write_mask(root / "parts" / "mask" / f"a{i:02d}.png")
    return root


def build_folder_fixed(root: Path, masks: bool = True) -> Path:
    """Fixed-split folder form: <cat>/train/normal, <cat>/test/{normal,anomaly,mask}."""
    for i in range(4):
        write_image(root / "gears" / "train" / "normal" / f"t{i}.png", value=i)
    for i in range(2):
        write_image(root / "gears" / "test" / "normal" / f"n{i}.png", value=10 + i)
    for i in range(3):
        write_image(root / "gears" / "test" / "anomaly" / f"a{i}.png", value=20 + i)
        if masks:
            write_mask(root / "gears" / "test" / "mask" / f"a{i}.png")
    return root


def build_classes(root: Path, sizes: dict[str, int]) -> Path:
    """`<root>/<class>/*` for the one-class loader."""
    for cls, n in sizes.items():
        for i in range(n):
            write_image(root / cls / f"{i:02d}.png", size=(8, 8), value=i)
    return root


def sweep_env(extra: dict[str, str] | None = None, *, pythonpath: Path | None = None) -> dict[str, str]:
    """Environment for a `python -m harness.sweep` subprocess: offline, no usage stats, a local Ray."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def write_tiny_spec(path: Path, root: Path, **changes: object) -> Path:
    """A tiny valid sweep file at `path`: the MVTec-layout tree at `root` (all categories), a 64 px
    bundled CPU backbone, ratio 0, seed 0, patchcore; runs under path.parent / "runs". `changes`
    replace top-level keys."""
    import yaml

    spec: dict[str, object] = {
        "name": "t",
        "storage": str(path.parent / "runs"),
        "ray": {"dashboard": False, "num_cpus": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 0,
        "datasets": [{"kind": "mvtec", "root": str(root), "categories": "all"}],
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled", "resize": 64, "crop": 64},
        "contamination": {"ratios": [0.0], "overlap": False, "shortfall": "cap"},
        "seeds": [0],
        "methods": {"patchcore": {"coreset_ratio": 0.5}},
        "report": False,
        **changes,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def raises_dataset_error(fn, *names: object) -> str:  # type: ignore[no-untyped-def]
    """Call fn, expect DatasetError, check every name (path or word) is in the message."""
    import pytest

    from funad.data import DatasetError

    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    for n in names:
        assert str(n) in msg, f"{n!s} not in {msg!r}"
    return msg


def run_cell_through_trial(tmp_path: Path, name: str, settings: dict[str, object]) -> object:
    """One cell of method `name` through the harness's trial body (harness.trial.run_one: the code a Ray
    trial runs) on a tiny MVTec tree with one injected image; checks the ok row (its diagnostics in the
    run's schema, one injected image) and the cell's scores, history, maps and split files; returns the
    row."""
    import pandas as pd

    from funad.methods import method_class
    from harness.cells import expand_cells
    from harness.spec import load_spec
    from harness.store import RunStore
    from harness.trial import TrialContext, run_one

    cls = method_class(name)
    spec = load_spec(write_tiny_spec(
        tmp_path / "s.yaml", build_mvtec(tmp_path / "data", {"bottle": {"broken": 3}}, n_train=5),
        methods={name: settings}, contamination={"ratios": [0.2]}))
    methods = spec.concrete_methods()
    run = tmp_path / "runs" / "t"
    RunStore(run, methods=methods).write_spec(spec.resolved())
    (cell,) = expand_cells(spec)
    run_one(cell, TrialContext(run_name="t", run_dir=str(run), feature_cache=str(tmp_path / "f"),
                               methods=methods), attempt=1)
    row = pd.read_parquet(run / "results").iloc[0]
    assert row["status"] == "ok" and row["method"] == name and row["n_injected"] == 1, row["error"]
    for diag in cls.diagnostic_names:
        assert f"diag_{diag}" in row.index
    for folder in ("scores", "history", "maps"):
        assert (run / folder / f"{cell.cell_id}.parquet").is_file()
    assert (run / "splits" / f"{cell.cell_id}.csv").is_file()
    return row
