"""Every loader on small trees in its real on-disk layout: categories, counts, labels, ids, masks."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest_data import (
    build_classes,
    build_folder,
    build_folder_fixed,
    build_mvtec,
    build_visa_csv,
    build_visa_tree,
    mask_truth,
    write_image,
)
from PIL import Image

from funad.data import DATASET_KINDS, ImageRecord, create_dataset
from funad.data.folder import FolderDataset
from funad.data.images import load_mask, load_rgb
from funad.data.mvtec import MVTecDataset
from funad.data.oneclass import OneClassDataset, build_digits, digits_dir
from funad.data.visa import VisADataset


def _ids(recs: list[ImageRecord], **where: object) -> list[str]:
    return [r.image_id for r in recs if all(getattr(r, k) == v for k, v in where.items())]


def test_kinds_and_factory(tmp_path: Path) -> None:
    assert tuple(DATASET_KINDS) == (
        "synthetic", "mvtec", "visa", "folder", "oneclass", "realiad", "mvtec_ad2", "btad", "mpdd")
    build_mvtec(tmp_path)
    ds = create_dataset("mvtec", str(tmp_path), require_masks=False)
    assert isinstance(ds, MVTecDataset) and ds.kind == "mvtec" and ds.require_masks is False
    assert isinstance(create_dataset("visa", tmp_path), VisADataset)
    # synthetic is another module's loader: a not-yet-generated root is fine (nothing built here).
    syn = create_dataset("synthetic", tmp_path / "syn")
    assert syn.kind == "synthetic" and syn.root == tmp_path / "syn" and not syn.root.exists()


def test_mvtec_layout(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"bottle": {"broken": 2, "scratch": 1}, "my_part": {"dent": 1}})
    (tmp_path / "bottle" / "train" / "good" / ".DS_Store").write_bytes(b"junk")  # ignored
    (tmp_path / "license.txt").write_text("not a category")
    ds = MVTecDataset(tmp_path)
    assert ds.categories() == ["bottle", "my_part"]
    assert ds.resolve_categories("all") == ["bottle", "my_part"]
    recs = ds.records("bottle")
    assert [r.image_id for r in recs] == sorted(r.image_id for r in recs)
    assert _ids(recs, split="train") == [f"bottle/train/good/{i:03d}.png" for i in range(3)]
    assert all(
        r.label == 0 and r.defect_type == "good" and r.mask_path is None for r in recs if r.split == "train"
    )
    test = [r for r in recs if r.split == "test"]
    assert Counter(r.defect_type for r in test) == {"good": 2, "broken": 2, "scratch": 1}
    assert all(r.label == (r.defect_type != "good") for r in test)
    scratch = next(r for r in test if r.defect_type == "scratch")
    assert scratch.image_id == "bottle/test/scratch/000.png"
    assert scratch.path == tmp_path / "bottle/test/scratch/000.png"
    assert scratch.mask_path == tmp_path / "bottle/ground_truth/scratch/000_mask.png"
    assert scratch.category == "bottle" and scratch.augment is None
    np.testing.assert_array_equal(load_mask(scratch.mask_path, (32, 24)), mask_truth())
    assert load_rgb(scratch.path).size == (32, 24)


def test_mvtec_without_masks_allowed(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"x": {"cut": 2}})
    (tmp_path / "x" / "ground_truth" / "cut" / "001_mask.png").unlink()
    recs = MVTecDataset(tmp_path, require_masks=False).records("x")
    masks = {r.image_id: r.mask_path for r in recs if r.label == 1}
    assert masks == {
        "x/test/cut/000.png": tmp_path / "x/ground_truth/cut/000_mask.png",
        "x/test/cut/001.png": None,
    }


def test_visa_official_csv(tmp_path: Path) -> None:
    build_visa_csv(tmp_path)
    ds = create_dataset("visa", tmp_path)
    assert ds.categories() == ["candle", "pcb1"]
    recs = ds.records("pcb1")
    assert len(recs) == 7
    assert _ids(recs, split="train") == [f"pcb1/Data/Images/Normal/{i:04d}.JPG" for i in range(3)]
    assert _ids(recs, split="test", label=0) == [f"pcb1/Data/Images/Normal/{i:04d}.JPG" for i in (3, 4)]
    anom = [r for r in recs if r.label == 1]
    assert [r.defect_type for r in anom] == ["bad", "bad"]
    assert all(r.split == "test" and r.category == "pcb1" for r in anom)
    assert anom[0].mask_path == tmp_path / "pcb1/Data/Masks/Anomaly/000.png"
    # VisA masks hold 0/1, not 0/255: binarised > 0 on load.
    assert np.asarray(Image.open(anom[0].mask_path)).max() == 1
    np.testing.assert_array_equal(load_mask(anom[0].mask_path, (32, 24)), mask_truth())
    assert load_rgb(anom[0].path).size == (32, 24)


def test_visa_converted_tree(tmp_path: Path) -> None:
    build_visa_tree(tmp_path)
    ds = VisADataset(tmp_path)
    assert not ds.uses_split_csv()
    assert ds.categories() == ["capsules"]
    recs = ds.records("capsules")
    assert Counter((r.split, r.label) for r in recs) == {("train", 0): 3, ("test", 0): 1, ("test", 1): 2}
    masks = {r.image_id: r.mask_path for r in recs if r.label == 1}
    gt = tmp_path / "capsules/ground_truth/bad"
    assert masks == {
        "capsules/test/bad/020.JPG": gt / "020.png",
        "capsules/test/bad/021.JPG": gt / "021_mask.png",
    }
    for m in masks.values():
        np.testing.assert_array_equal(load_mask(m, (32, 24)), mask_truth())
    assert {r.defect_type for r in recs if r.label == 1} == {"bad"}


def test_folder_random_split(tmp_path: Path) -> None:
    build_folder(tmp_path, n_normal=10, n_anomaly=3)
    ds = create_dataset("folder", tmp_path)
    assert ds.categories() == ["parts"] and ds.pixel_level is True
    recs = ds.records("parts")
    train = _ids(recs, split="train")
    test_normal = _ids(recs, split="test", label=0)
    assert len(train) == 6 and len(test_normal) == 4
    assert sorted(train + test_normal) == [f"parts/normal/n{i:02d}.png" for i in range(10)]
    anom = [r for r in recs if r.label == 1]
    assert [r.image_id for r in anom] == [f"parts/anomaly/a{i:02d}.jpg" for i in range(3)]
    assert all(r.mask_path == tmp_path / f"parts/mask/{Path(r.image_id).stem}.png" for r in anom)
    assert all(r.defect_type == "anomaly" and r.split == "test" for r in anom)
    # Stable: same seed -> same split; it is a seeded draw, not "the first 60 %".
    assert _ids(FolderDataset(tmp_path).records("parts"), split="train") == train
    splits = {
        tuple(_ids(FolderDataset(tmp_path, split_seed=s).records("parts"), split="train")) for s in range(6)
    }
    assert len(splits) > 1
    assert len(_ids(FolderDataset(tmp_path, train_fraction=0.3).records("parts"), split="train")) == 3


GOLDEN_FOLDER_TRAIN = ["n00", "n02", "n05", "n07", "n08", "n09"]


def test_folder_random_split_golden(tmp_path: Path) -> None:
    # Computed once; a change of numpy's SeedSequence/PCG64 stream would change the split.
    build_folder(tmp_path, n_normal=10, n_anomaly=1, masks=False)
    train = _ids(FolderDataset(tmp_path, split_seed=0).records("parts"), split="train")
    assert [Path(i).stem for i in train] == GOLDEN_FOLDER_TRAIN


def test_folder_without_masks_is_image_level(tmp_path: Path) -> None:
    build_folder(tmp_path, masks=False)
    ds = FolderDataset(tmp_path)
    assert ds.pixel_level is False and not ds.has_masks("parts")
    assert all(r.mask_path is None for r in ds.records("parts"))
    # Mixed: pixel metrics only apply when every category has masks.
    build_folder_fixed(tmp_path)
    mixed = FolderDataset(tmp_path)
    assert mixed.categories() == ["gears", "parts"] and mixed.has_masks("gears")
    assert mixed.pixel_level is False


def test_folder_fixed_split(tmp_path: Path) -> None:
    build_folder_fixed(tmp_path)
    ds = FolderDataset(tmp_path)
    assert ds.categories() == ["gears"] and ds.pixel_level
    recs = ds.records("gears")
    assert _ids(recs, split="train") == [f"gears/train/normal/t{i}.png" for i in range(4)]
    assert _ids(recs, split="test", label=0) == ["gears/test/normal/n0.png", "gears/test/normal/n1.png"]
    anom = [r for r in recs if r.label == 1]
    assert [r.mask_path for r in anom] == [tmp_path / f"gears/test/mask/a{i}.png" for i in range(3)]


def test_oneclass_with_root(tmp_path: Path) -> None:
    build_classes(tmp_path, {"cat": 10, "dog": 5, "fox": 5})
    ds = create_dataset("oneclass", tmp_path)
    assert ds.pixel_level is False and ds.categories() == ["cat", "dog", "fox"]
    recs = ds.records("cat")
    assert Counter((r.split, r.label, r.defect_type) for r in recs) == {
        ("train", 0, "good"): 6,
        ("test", 0, "good"): 4,
        ("test", 1, "dog"): 2,  # 5 - floor(0.6 * 5)
        ("test", 1, "fox"): 2,
    }
    assert all(r.mask_path is None and r.category == "cat" for r in recs)
    # A class's held-out part does not depend on which class is normal.
    dog_test = set(_ids(recs, defect_type="dog"))
    dog_as_normal = ds.records("dog")
    assert set(_ids(dog_as_normal, split="test", label=0)) == dog_test
    assert not set(_ids(dog_as_normal, split="train")) & dog_test


def test_oneclass_builtin_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    monkeypatch.setenv("FUNAD_CACHE", str(tmp_path / "cache"))
    ds = OneClassDataset()
    assert ds.root == tmp_path / "cache" / "data" / "oneclass-digits-v1" == digits_dir()
    assert ds.categories() == [str(i) for i in range(10)]
    digits = load_digits()
    recs = ds.records("3")
    n3 = int((digits.target == 3).sum())
    assert sum(r.split == "train" for r in recs) == int(0.6 * n3)
    assert sum(r.split == "test" and r.label == 0 for r in recs) == n3 - int(0.6 * n3)
    per_class = Counter(r.defect_type for r in recs if r.label == 1)
    assert set(per_class) == {str(i) for i in range(10) if i != 3}
    for c, k in per_class.items():
        n = int((digits.target == int(c)).sum())
        assert k == n - int(0.6 * n)
    # Files are the digits, nearest-upscaled 8x: constant 8x8 blocks, gray, ink where the digit is.
    rec = next(r for r in recs if r.label == 1)
    idx = int(Path(rec.image_id).stem)
    assert digits.target[idx] == int(rec.defect_type)
    im = load_rgb(rec.path)
    assert im.size == (64, 64)
    arr = np.asarray(im).astype(int)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    blocks = arr[..., 0].reshape(8, 8, 8, 8)
    assert (blocks == blocks[:, :1, :, :1]).all()
    np.testing.assert_array_equal(blocks[:, 0, :, 0], np.round(digits.images[idx] * 255 / 16))
    # Built once, no temp leftovers; a second instance reuses it.
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()] == ["oneclass-digits-v1"]
    assert len(list(ds.root.glob("*/*.png"))) == len(digits.target)
    assert OneClassDataset().records("3") == recs


def test_oneclass_builtin_concurrent_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNAD_CACHE", str(tmp_path))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build_digits(8))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / "data" / "oneclass-digits-v1-8px"
    assert results == [target] * 3
    assert [p.name for p in (tmp_path / "data").iterdir()] == [target.name]
    digest = hashlib.sha256((target / "0" / "0000.png").read_bytes()).hexdigest()
    assert len(list(target.glob("*/*.png"))) == 1797
    # Deterministic rendering: a rebuild elsewhere writes identical bytes.
    monkeypatch.setenv("FUNAD_CACHE", str(tmp_path / "again"))
    assert hashlib.sha256((build_digits(8) / "0" / "0000.png").read_bytes()).hexdigest() == digest


def test_non_square_jpg_loads(tmp_path: Path) -> None:
    p = write_image(tmp_path / "x.jpg", size=(40, 10))
    assert load_rgb(p).size == (40, 10)
