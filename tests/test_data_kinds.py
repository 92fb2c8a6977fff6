"""Real-IAD, MVTec AD 2, BTAD and MPDD on small trees in their published layouts, and their errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from conftest_data import mask_truth, write_image, write_mask
from conftest_data import raises_dataset_error as _raises
from fixtures_datasets import (
    AD2_BAD,
    AD2_GOOD,
    AD2_TRAIN,
    AD2_VALIDATION,
    BTAD_PRODUCTS,
    REALIAD_CLASSES,
    build_btad,
    build_mpdd,
    build_mvtec_ad2,
    build_realiad,
    build_realiad_fuiad,
)
from PIL import Image

from funad.data import DATASET_KINDS, ImageRecord, create_dataset
from funad.data.btad import BTADDataset
from funad.data.images import load_mask, load_rgb
from funad.data.mpdd import MPDDDataset
from funad.data.mvtec_ad2 import MVTecAD2Dataset
from funad.data.realiad import RealIADDataset, sample_key

NEW_KINDS = {
    "realiad": RealIADDataset,
    "mvtec_ad2": MVTecAD2Dataset,
    "btad": BTADDataset,
    "mpdd": MPDDDataset,
}


def _ids(recs: list[ImageRecord], **where: object) -> list[str]:
    return [r.image_id for r in recs if all(getattr(r, k) == v for k, v in where.items())]


def _check_masks(recs: list[ImageRecord]) -> None:
    """Every mask given is the fixture's rectangle at its image's size (binarised on load)."""
    for r in recs:
        if r.mask_path is not None:
            size = load_rgb(r.path).size
            np.testing.assert_array_equal(load_mask(r.mask_path, size), mask_truth(size))


# ---- factory ----------------------------------------------------------------------------------


def test_new_kinds_factory(tmp_path: Path) -> None:
    assert set(NEW_KINDS) <= set(DATASET_KINDS)
    trees = {
        "realiad": build_realiad(tmp_path / "realiad"),
        "mvtec_ad2": build_mvtec_ad2(tmp_path / "ad2"),
        "btad": build_btad(tmp_path / "btad"),
        "mpdd": build_mpdd(tmp_path / "mpdd"),
    }
    missing = tmp_path / "nope"
    for kind, cls in NEW_KINDS.items():
        ds = create_dataset(kind, str(trees[kind]), require_masks=False)
        assert type(ds) is cls and ds.kind == kind and ds.pixel_level is True and ds.require_masks is False
        assert ds.root == trees[kind]
        _raises(lambda k=kind: create_dataset(k, missing), missing)
        _raises(lambda k=kind: create_dataset(k, None), kind, "root")
        _raises(lambda k=kind, r=trees[kind]: create_dataset(k, r, colour="red"), "colour", "require_masks")
    ds = create_dataset("realiad", trees["realiad"], split="realiad_jsons_sv", resolution=256)
    assert ds.split == "realiad_jsons_sv" and ds.resolution == "256"
    assert create_dataset("mvtec_ad2", trees["mvtec_ad2"], include_validation=True).include_validation


# ---- Real-IAD ---------------------------------------------------------------------------------


def test_realiad_layout(tmp_path: Path) -> None:
    root = build_realiad(tmp_path)
    ds = RealIADDataset(root)
    assert ds.categories() == list(REALIAD_CLASSES)
    assert (
        ds.json_dir() == root / "realiad_jsons" / "realiad_jsons" and ds.image_dir() == root / "realiad_256"
    )
    recs = ds.records("audiojack")
    assert [r.image_id for r in recs] == sorted(r.image_id for r in recs)
    # 2 OK samples x 5 views train; 1 OK + 2 NG samples x 5 views test, defect visible in views 1 and 3.
    assert Counter((r.split, r.label) for r in recs) == {("train", 0): 10, ("test", 0): 11, ("test", 1): 4}
    assert all(r.category == "audiojack" and r.augment is None for r in recs)
    base = "realiad_256/audiojack"
    assert _ids(recs, split="train")[:2] == [
        f"{base}/OK/S0001/audiojack_0001_OK_C1_202309210001.jpg",
        f"{base}/OK/S0001/audiojack_0001_OK_C2_202309220001.jpg",
    ]
    anom = [r for r in recs if r.label == 1]
    assert [(r.image_id, r.defect_type) for r in anom] == [
        (f"{base}/NG/BX/S0004/audiojack_0004_NG_C1_202309210004.jpg", "BX"),
        (f"{base}/NG/BX/S0004/audiojack_0004_NG_C3_202309230004.jpg", "BX"),
        (f"{base}/NG/QS/S0005/audiojack_0005_NG_C1_202309210005.jpg", "QS"),
        (f"{base}/NG/QS/S0005/audiojack_0005_NG_C3_202309230005.jpg", "QS"),
    ]
    for r in anom:
        assert r.path == root / r.image_id
        assert r.mask_path == r.path.with_name(r.path.stem + "_mask.png")
    # The label is the JSON's anomaly_class, not the folder: NG views without a visible defect are normal.
    ng_normal = [r for r in recs if "/NG/" in r.image_id and r.label == 0]
    assert len(ng_normal) == 6 and all(r.defect_type == "good" and r.mask_path is None for r in ng_normal)
    assert all(r.defect_type == "good" and r.mask_path is None for r in recs if r.label == 0)
    _check_masks(recs)
    assert load_rgb(anom[0].path).size == (32, 24)


def test_realiad_flat_json_folder_and_resolutions(tmp_path: Path) -> None:
    root = build_realiad(tmp_path, resolutions=("256", "512"), nested=False)
    _raises(RealIADDataset(root).image_dir, root, "realiad_256", "realiad_512", "resolution")
    _raises(lambda: RealIADDataset(root).records("pcb"), "resolution")
    for res, size in ((512, (48, 36)), ("256", (32, 24))):
        ds = RealIADDataset(root, resolution=res)
        assert ds.json_dir() == root / "realiad_jsons"
        recs = ds.records("pcb")
        assert all(r.image_id.startswith(f"realiad_{res}/pcb/") for r in recs)
        assert len(recs) == 25 and {load_rgb(r.path).size for r in recs[:3]} == {size}
        _check_masks(recs)
    _raises(lambda: RealIADDataset(root, resolution="1024").records("pcb"), root / "realiad_1024", "1024")
    for bad in (128, "big", True):
        _raises(lambda b=bad: RealIADDataset(root, resolution=b), root, "256, 512, 1024, raw")
    for bad in ("", "../x", "a/b", 3):
        _raises(lambda b=bad: RealIADDataset(root, split=b), root, "realiad_jsons_fuiad_0.4")


def test_realiad_fuiad_split(tmp_path: Path) -> None:
    root = build_realiad_fuiad(build_realiad(tmp_path))
    ds = RealIADDataset(root, split="realiad_jsons_fuiad_0.2")
    assert ds.json_dir() == root / "realiad_jsons" / "realiad_jsons_fuiad_0.2"
    recs = ds.records("pcb")
    # train: OK samples 1-2 and NG sample 4 (BX: defect in views 1 and 3); test: OK 3 and NG 5 (QS).
    assert Counter((r.split, r.label) for r in recs) == {
        ("train", 0): 13,
        ("train", 1): 2,
        ("test", 0): 8,
        ("test", 1): 2,
    }
    train_anom = [r for r in recs if r.split == "train" and r.label == 1]
    assert [r.image_id for r in train_anom] == [
        "realiad_256/pcb/NG/BX/S0004/pcb_0004_NG_C1_202309210004.jpg",
        "realiad_256/pcb/NG/BX/S0004/pcb_0004_NG_C3_202309230004.jpg",
    ]
    assert all(r.defect_type == "BX" and r.mask_path is not None for r in train_anom)
    assert {r.defect_type for r in recs if r.split == "test" and r.label == 1} == {"QS"}
    _check_masks(recs)
    # The standard split of the same tree is unchanged, and its training set is all normal.
    std = RealIADDataset(root).records("pcb")
    assert sum(r.split == "train" for r in std) == 10 and all(r.label == 0 for r in std if r.split == "train")
    # A training anomaly needs no mask (FUIAD files may omit it); a test anomaly does.
    jp = root / "realiad_jsons" / "realiad_jsons_fuiad_0.2" / "pcb.json"
    doc = json.loads(jp.read_text())
    doc["train"][10]["mask_path"] = None
    jp.write_text(json.dumps(doc))
    assert [r.mask_path for r in ds.records("pcb") if r.image_id == train_anom[0].image_id] == [None]


def test_realiad_sample_key(tmp_path: Path) -> None:
    recs = RealIADDataset(build_realiad(tmp_path)).records("pcb")
    groups = Counter(sample_key(r.image_id) for r in recs)
    assert groups == {
        f"realiad_256/pcb/{s}": 5 for s in ("OK/S0001", "OK/S0002", "OK/S0003", "NG/BX/S0004", "NG/QS/S0005")
    }


def _realiad_doc(root: Path, cls: str = "pcb") -> tuple[Path, dict]:
    jp = root / "realiad_jsons" / "realiad_jsons" / f"{cls}.json"
    return jp, json.loads(jp.read_text())


def test_realiad_bad_json(tmp_path: Path) -> None:
    root = build_realiad(tmp_path)
    jp, good = _realiad_doc(root)
    ds = RealIADDataset(root)

    def put(doc: object) -> None:
        jp.write_text(doc if isinstance(doc, str) else json.dumps(doc))

    put('{"meta": {}, "train": [')
    _raises(lambda: ds.records("pcb"), jp, "not valid JSON", "line 1")
    jp.write_bytes(b'{"train": [], "test": ["\xff"]}')
    _raises(lambda: ds.records("pcb"), jp, "UTF-8")
    put([1, 2])
    _raises(lambda: ds.records("pcb"), jp, "object")
    put({k: v for k, v in good.items() if k != "test"})
    _raises(lambda: ds.records("pcb"), jp, "'test'")
    put({**good, "train": {"a": 1}})
    _raises(lambda: ds.records("pcb"), jp, "'train' must be a list")
    put({**good, "train": []})
    _raises(lambda: ds.records("pcb"), jp, "empty train split")

    def with_entry(split: str, i: int, **change: object) -> dict:
        doc = json.loads(json.dumps(good))
        doc[split][i].update(change)
        return doc

    put(with_entry("train", 3, image_path="OK/S0001/missing.jpg"))
    _raises(
        lambda: ds.records("pcb"),
        root / "realiad_256/pcb/OK/S0001/missing.jpg",
        jp,
        "train[3]",
        "does not exist",
    )
    # Test entries: 0-4 OK sample 3, 5-9 NG/BX sample 4 (5 and 7 anomalous), 10-14 NG/QS sample 5.
    put(with_entry("test", 5, mask_path="NG/BX/S0004/nope_mask.png"))
    _raises(lambda: ds.records("pcb"), root / "realiad_256/pcb/NG/BX/S0004/nope_mask.png", "test[5]")
    put(with_entry("test", 7, mask_path=None))
    msg = _raises(lambda: ds.records("pcb"), "pcb_0004_NG_C3_202309230004.jpg", "test[7]", "require_masks")
    assert "mask_path" in msg
    assert len(RealIADDataset(root, require_masks=False).records("pcb")) == 25
    put(with_entry("test", 0, image_path="/etc/passwd"))
    _raises(lambda: ds.records("pcb"), jp, "test[0]", "relative")
    put(with_entry("test", 0, image_path="../audiojack/OK/S0001/x.jpg"))
    _raises(lambda: ds.records("pcb"), jp, "test[0]", "relative")
    put(with_entry("test", 0, image_path=good["train"][0]["image_path"]))
    _raises(lambda: ds.records("pcb"), jp, "test[0]", "listed twice", "train[0]")
    put(with_entry("test", 2, category="audiojack"))
    _raises(lambda: ds.records("pcb"), jp, "test[2]", "'audiojack'")
    put(with_entry("test", 2, anomaly_class=""))
    _raises(lambda: ds.records("pcb"), jp, "test[2]", "anomaly_class")
    put(with_entry("train", 0, image_path=None))
    _raises(lambda: ds.records("pcb"), jp, "train[0]", "image_path")
    put({**good, "test": [*good["test"], "oops"]})
    _raises(lambda: ds.records("pcb"), jp, "test[15]", "object")
    put({**good, "meta": {"prefix": "audiojack/"}})
    _raises(lambda: ds.records("pcb"), jp, "prefix", "'pcb'")
    put({**good, "meta": {"normal_class": 0}})
    _raises(lambda: ds.records("pcb"), jp, "normal_class")
    # meta is optional: normal_class defaults to "OK".
    put({k: v for k, v in good.items() if k != "meta"})
    assert Counter(r.label for r in ds.records("pcb")) == {0: 21, 1: 4}


def test_realiad_bad_tree(tmp_path: Path) -> None:
    root = build_realiad(tmp_path)
    ds = RealIADDataset(root)
    _raises(lambda: ds.records("toaster"), root, "toaster", "audiojack, pcb")
    _raises(
        lambda: RealIADDataset(root, split="realiad_jsons_fuiad_0.1").categories(),
        "realiad_jsons_fuiad_0.1",
        root / "realiad_jsons" / "realiad_jsons_fuiad_0.1",
        "realiad_jsons/realiad_jsons",
    )
    jdir = root / "realiad_jsons" / "realiad_jsons"
    stray = jdir / "notes.txt"
    stray.write_text("x")
    _raises(ds.categories, stray, jdir)
    stray.unlink()
    (jdir / ".DS_Store").write_bytes(b"ignored")
    assert ds.categories() == list(REALIAD_CLASSES)
    # A mis-sized mask names the mask and its image.
    mask = root / "realiad_256/pcb/NG/QS/S0005/pcb_0005_NG_C1_202309210005_mask.png"
    write_mask(mask, size=(10, 10))
    msg = _raises(lambda: ds.records("pcb"), mask, "10x10", "32x24")
    assert "pcb_0005_NG_C1_202309210005.jpg" in msg
    # A class listed by a JSON file whose image folder is missing.
    (jdir / "zipper.json").write_text(json.dumps({"train": [], "test": []}))
    _raises(lambda: ds.records("zipper"), root / "realiad_256" / "zipper", "does not exist")
    # No image folder at all; the same split in both the nested and the flat place.
    (root / "realiad_256").rename(root / "images")
    _raises(lambda: ds.records("pcb"), root, "realiad_256", "realiad_raw")
    (root / "realiad_jsons_sv").mkdir()
    (root / "realiad_jsons_sv" / "pcb.json").write_text("{}")
    (root / "realiad_jsons" / "realiad_jsons_sv").mkdir()
    (root / "realiad_jsons" / "realiad_jsons_sv" / "pcb.json").write_text("{}")
    _raises(RealIADDataset(root, split="realiad_jsons_sv").categories, "twice", root / "realiad_jsons_sv")
    gone = tmp_path / "gone"
    _raises(RealIADDataset(gone).categories, gone)


# ---- MVTec AD 2 -------------------------------------------------------------------------------


def test_mvtec_ad2_layout(tmp_path: Path) -> None:
    root = build_mvtec_ad2(tmp_path)
    (root / "vial" / "train" / "good" / ".DS_Store").write_bytes(b"ignored")
    ds = MVTecAD2Dataset(root)
    assert ds.categories() == ["can", "vial"]
    for cat in ("can", "vial"):
        recs = ds.records(cat)
        assert [r.image_id for r in recs] == sorted(r.image_id for r in recs)
        assert _ids(recs, split="train") == [f"{cat}/train/good/{s}.png" for s in AD2_TRAIN]
        assert _ids(recs, split="test", label=0) == [f"{cat}/test_public/good/{s}.png" for s in AD2_GOOD]
        anom = [r for r in recs if r.label == 1]
        assert [r.image_id for r in anom] == [f"{cat}/test_public/bad/{s}.png" for s in AD2_BAD]
        assert all(r.split == "test" and r.defect_type == "bad" for r in anom)
        assert [r.mask_path for r in anom] == [
            root / cat / "test_public" / "ground_truth" / "bad" / f"{s}_mask.png" for s in AD2_BAD
        ]
        assert all(r.mask_path is None and r.defect_type == "good" for r in recs if r.label == 0)
        assert not any("private" in r.image_id or "validation" in r.image_id for r in recs)
        _check_masks(recs)
    # vial is single-channel grey on disk and RGB after loading.
    vial = ds.records("vial")[0]
    assert Image.open(vial.path).mode == "L" and load_rgb(vial.path).mode == "RGB"
    with_val = MVTecAD2Dataset(root, include_validation=True).records("can")
    assert _ids(with_val, split="train") == sorted(
        [f"can/train/good/{s}.png" for s in AD2_TRAIN]
        + [f"can/validation/good/{s}.png" for s in AD2_VALIDATION]
    )
    assert all(r.label == 0 for r in with_val if r.split == "train")


def test_mvtec_ad2_errors(tmp_path: Path) -> None:
    root = build_mvtec_ad2(tmp_path)
    ds = MVTecAD2Dataset(root)
    pub = root / "can" / "test_public"
    gt = pub / "ground_truth" / "bad"
    _raises(lambda: ds.records("cable"), root, "cable", "can, vial")
    mask = gt / "001_underexposed_mask.png"
    mask.unlink()
    _raises(
        lambda: ds.records("can"),
        pub / "bad" / "001_underexposed.png",
        "001_underexposed_mask",
        "require_masks",
    )
    masks = {
        r.image_id: r.mask_path for r in MVTecAD2Dataset(root, require_masks=False).records("can") if r.label
    }
    assert masks["can/test_public/bad/001_underexposed.png"] is None
    write_mask(mask, size=(24, 32))
    _raises(lambda: ds.records("can"), mask, "24x32", "32x24")
    write_mask(mask)
    orphan = write_mask(gt / "009_regular_mask.png")
    _raises(lambda: ds.records("can"), orphan, "no image", "009_regular.*")
    orphan.unlink()
    twin = write_mask(gt / "000_regular_mask.bmp")
    _raises(lambda: ds.records("can"), pub / "bad" / "000_regular.png", "more than one mask")
    twin.unlink()
    stray = pub / "bad" / "notes.txt"
    stray.write_text("x")
    _raises(lambda: ds.records("can"), stray)
    stray.unlink()
    odd = write_image(pub / "weird" / "000.png")
    _raises(lambda: ds.records("can"), odd.parent, pub)
    odd.unlink()
    odd.parent.rmdir()
    good_gt = write_mask(pub / "ground_truth" / "good" / "000_regular_mask.png")
    _raises(lambda: ds.records("can"), good_gt.parent)
    good_gt.unlink()
    good_gt.parent.rmdir()
    extra = write_image(root / "can" / "train" / "bad" / "0.png")
    _raises(lambda: ds.records("can"), extra.parent)
    extra.unlink()
    extra.parent.rmdir()
    assert len(ds.records("can")) == 8
    val = root / "vial" / "validation"
    for p in (val / "good").iterdir():
        p.unlink()
    assert ds.records("vial")  # validation is not read by default
    _raises(lambda: MVTecAD2Dataset(root, include_validation=True).records("vial"), val / "good", "empty")
    (val / "good").rmdir()
    val.rmdir()
    _raises(lambda: MVTecAD2Dataset(root, include_validation=True).records("vial"), val, "does not exist")
    for sub in ("good", "bad"):
        for p in (root / "vial" / "test_public" / sub).iterdir():
            p.unlink()
    for p in (root / "vial" / "test_public" / "ground_truth" / "bad").iterdir():
        p.unlink()
    _raises(lambda: ds.records("vial"), root / "vial" / "test_public", "empty test split")
    import shutil

    shutil.rmtree(pub)
    _raises(lambda: ds.records("can"), pub, "does not exist")
    _raises(MVTecAD2Dataset(tmp_path / "none").categories, tmp_path / "none")


# ---- BTAD -------------------------------------------------------------------------------------


def test_btad_layout(tmp_path: Path) -> None:
    root = build_btad(tmp_path)
    ds = BTADDataset(root)
    assert ds.categories() == ["01", "02", "03"]  # README.txt at the root is not a product
    for product, (ext, mext, size) in BTAD_PRODUCTS.items():
        recs = ds.records(product)
        assert [r.image_id for r in recs] == sorted(r.image_id for r in recs)
        assert _ids(recs, split="train") == [f"{product}/train/ok/{i:04d}{ext}" for i in range(3)]
        assert _ids(recs, split="test", label=0) == [f"{product}/test/ok/{i:04d}{ext}" for i in range(2)]
        anom = [r for r in recs if r.label == 1]
        assert [r.image_id for r in anom] == [f"{product}/test/ko/{i:04d}{ext}" for i in range(2)]
        assert [r.mask_path for r in anom] == [
            root / product / "ground_truth" / "ko" / f"{i:04d}{mext}" for i in range(2)
        ]
        assert all(r.defect_type == "ko" and r.split == "test" and r.category == product for r in anom)
        assert all(r.defect_type == "good" and r.mask_path is None for r in recs if r.label == 0)
        assert load_rgb(anom[0].path).size == size
        _check_masks(recs)


def test_btad_errors(tmp_path: Path) -> None:
    root = build_btad(tmp_path)
    ds = BTADDataset(root)
    gt = root / "01" / "ground_truth" / "ko"
    _raises(lambda: ds.records("04"), root, "'04'", "01, 02, 03")
    (gt / "0001.png").unlink()
    _raises(lambda: ds.records("01"), root / "01" / "test" / "ko" / "0001.bmp", gt / "0001", "require_masks")
    assert [r.mask_path for r in BTADDataset(root, require_masks=False).records("01") if r.label][1] is None
    twin_a, twin_b = write_mask(gt / "0001.png"), write_mask(gt / "0001.bmp", size=(20, 20))
    _raises(
        lambda: ds.records("01"),
        root / "01" / "test" / "ko" / "0001.bmp",
        "more than one mask",
        twin_a,
        twin_b,
    )
    twin_b.unlink()
    write_mask(gt / "0001.png", size=(10, 10))
    _raises(lambda: ds.records("01"), gt / "0001.png", "10x10", "20x20")
    write_mask(gt / "0001.png", size=(20, 20))
    orphan = write_mask(gt / "0007.png", size=(20, 20))
    _raises(lambda: ds.records("01"), orphan, "no image")
    orphan.unlink()
    same_stem = write_image(root / "01" / "test" / "ko" / "0000.png", size=(20, 20))
    _raises(lambda: ds.records("01"), same_stem, "stem")
    same_stem.unlink()
    stray = root / "01" / "test" / "ko" / "Thumbs.db"
    stray.write_bytes(b"x")
    _raises(lambda: ds.records("01"), stray)
    stray.unlink()
    loose = write_image(root / "01" / "test" / "0000.bmp")
    _raises(lambda: ds.records("01"), loose, root / "01" / "test")
    loose.unlink()
    extra = write_image(root / "01" / "train" / "ko" / "0000.bmp")
    _raises(lambda: ds.records("01"), extra.parent, root / "01" / "train")
    extra.unlink()
    extra.parent.rmdir()
    stale = write_mask(root / "01" / "ground_truth" / "ok" / "0000.png")
    _raises(lambda: ds.records("01"), stale.parent, "ko")
    stale.unlink()
    stale.parent.rmdir()
    assert len(ds.records("01")) == 7
    for p in (root / "02" / "train" / "ok").iterdir():
        p.unlink()
    _raises(lambda: ds.records("02"), root / "02" / "train" / "ok", "empty")
    import shutil

    shutil.rmtree(root / "03" / "test")
    _raises(lambda: ds.records("03"), root / "03" / "test", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(BTADDataset(empty).categories, empty, "train/ok")


# ---- MPDD -------------------------------------------------------------------------------------


def test_mpdd_layout_and_errors(tmp_path: Path) -> None:
    root = build_mpdd(tmp_path)
    ds = MPDDDataset(root)
    assert ds.kind == "mpdd" and ds.categories() == ["bracket_black", "tubes"]
    recs = ds.records("bracket_black")
    assert Counter((r.split, r.defect_type) for r in recs) == {
        ("train", "good"): 3,
        ("test", "good"): 2,
        ("test", "hole"): 2,
        ("test", "scratches"): 1,
    }
    hole = [r for r in recs if r.defect_type == "hole"]
    assert [r.image_id for r in hole] == [
        "bracket_black/test/hole/000.png",
        "bracket_black/test/hole/001.png",
    ]
    assert [r.mask_path for r in hole] == [
        root / f"bracket_black/ground_truth/hole/00{i}_mask.png" for i in (0, 1)
    ]
    _check_masks(recs)
    mask = root / "tubes" / "ground_truth" / "anomalous" / "001_mask.png"
    mask.unlink()
    _raises(lambda: ds.records("tubes"), root / "tubes" / "test" / "anomalous" / "001.png", mask)
    _raises(lambda: ds.records("bottle"), "mpdd", "bottle", "bracket_black, tubes")
