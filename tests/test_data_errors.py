"""Bad inputs fail loudly with a DatasetError that names the offending path."""

from __future__ import annotations

from pathlib import Path

from conftest_data import (
    build_classes,
    build_folder,
    build_folder_fixed,
    build_mvtec,
    build_visa_csv,
    build_visa_tree,
    write_image,
    write_mask,
)
from conftest_data import raises_dataset_error as _raises

from funad.data import create_dataset
from funad.data.folder import FolderDataset
from funad.data.images import load_rgb
from funad.data.mvtec import MVTecDataset
from funad.data.oneclass import OneClassDataset
from funad.data.visa import VisADataset


def test_factory_errors(tmp_path: Path) -> None:
    msg = _raises(lambda: create_dataset("imagenet", tmp_path), "imagenet")
    for kind in ("synthetic", "mvtec", "visa", "folder", "oneclass"):
        assert kind in msg
    missing = tmp_path / "nope"
    for kind in ("mvtec", "visa", "folder"):
        _raises(lambda k=kind: create_dataset(k, missing), missing)
        _raises(lambda k=kind: create_dataset(k, None), kind, "root")
    _raises(lambda: create_dataset("oneclass", missing), missing)
    _raises(lambda: create_dataset("mvtec", tmp_path, colour="red"), "colour", "require_masks")


def test_missing_root_at_records_time(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    for ds in (MVTecDataset(gone), VisADataset(gone), FolderDataset(gone), OneClassDataset(gone)):
        _raises(ds.categories, gone)
        _raises(lambda d=ds: d.records("x"), gone)


def test_unknown_category_lists_available(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"bottle": {"cut": 1}, "wood": {"hole": 1}})
    _raises(lambda: MVTecDataset(tmp_path).records("glass"), tmp_path, "glass", "bottle, wood")
    _raises(lambda: MVTecDataset(tmp_path).resolve_categories(["glass"]), "glass", "bottle, wood")
    visa = tmp_path / "visa"
    build_visa_csv(visa)
    _raises(lambda: VisADataset(visa).records("pcb9"), "pcb9", "candle, pcb1")


def test_empty_root_has_no_categories(tmp_path: Path) -> None:
    _raises(MVTecDataset(tmp_path).categories, tmp_path, "train/good")
    _raises(FolderDataset(tmp_path).categories, tmp_path)


def test_empty_splits(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"a": {"cut": 1}, "b": {"cut": 1}})
    for p in (tmp_path / "a" / "train" / "good").iterdir():
        p.unlink()
    _raises(lambda: MVTecDataset(tmp_path).records("a"), tmp_path / "a" / "train" / "good", "empty")
    for p in (tmp_path / "b" / "test").rglob("*.png"):
        p.unlink()
    _raises(lambda: MVTecDataset(tmp_path).records("b"), tmp_path / "b" / "test", "empty")
    folder = build_folder(tmp_path / "f", n_normal=1, n_anomaly=1)
    _raises(lambda: FolderDataset(folder).records("parts"), folder / "parts" / "normal", "empty training")


def test_truncated_png_and_jpg(tmp_path: Path) -> None:
    for name in ("t.png", "t.jpg"):
        p = write_image(tmp_path / name, size=(64, 48))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        _raises(lambda q=p: load_rgb(q), p)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png")
    _raises(lambda: load_rgb(junk), junk)


def test_mask_of_wrong_size(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"a": {"cut": 1}})
    bad = write_mask(tmp_path / "a" / "ground_truth" / "cut" / "000_mask.png", size=(16, 16))
    msg = _raises(
        lambda: MVTecDataset(tmp_path).records("a"), bad, tmp_path / "a" / "test" / "cut" / "000.png"
    )
    assert "16x16" in msg and "32x24" in msg
    visa = build_visa_csv(tmp_path / "visa")
    vbad = write_mask(visa / "candle/Data/Masks/Anomaly/001.png", size=(24, 32))
    _raises(lambda: VisADataset(visa).records("candle"), vbad)
    folder = build_folder(tmp_path / "f")
    fbad = write_mask(folder / "parts" / "mask" / "a01.png", size=(10, 10))
    _raises(lambda: FolderDataset(folder).records("parts"), fbad)


def test_non_image_file_in_image_folder(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"a": {"cut": 1}})
    (tmp_path / "a" / "test" / "good" / ".DS_Store").write_bytes(b"ok, ignored")
    assert MVTecDataset(tmp_path).records("a")
    txt = tmp_path / "a" / "test" / "good" / "notes.txt"
    txt.write_text("hello")
    _raises(lambda: MVTecDataset(tmp_path).records("a"), txt)
    txt.unlink()
    sub = tmp_path / "a" / "train" / "good" / "nested"
    sub.mkdir()
    _raises(lambda: MVTecDataset(tmp_path).records("a"), sub)
    sub.rmdir()
    stray = tmp_path / "a" / "test" / "readme.md"
    stray.write_text("x")
    _raises(lambda: MVTecDataset(tmp_path).records("a"), stray)
    stray.unlink()
    extra = write_image(tmp_path / "a" / "train" / "bad" / "0.png")
    _raises(lambda: MVTecDataset(tmp_path).records("a"), extra.parent)
    folder = build_folder(tmp_path / "f")
    doc = folder / "parts" / "anomaly" / "a.doc"
    doc.write_text("x")
    _raises(lambda: FolderDataset(folder).records("parts"), doc)
    classes = build_classes(tmp_path / "c", {"x": 3, "y": 3})
    csv_file = classes / "y" / "labels.csv"
    csv_file.write_text("x")
    _raises(lambda: OneClassDataset(classes).records("x"), csv_file)


def test_anomaly_without_mask(tmp_path: Path) -> None:
    build_mvtec(tmp_path, {"a": {"cut": 2}})
    mask = tmp_path / "a" / "ground_truth" / "cut" / "001_mask.png"
    mask.unlink()
    _raises(lambda: MVTecDataset(tmp_path).records("a"), tmp_path / "a" / "test" / "cut" / "001.png", mask)
    tree = build_visa_tree(tmp_path / "vt")
    (tree / "capsules" / "ground_truth" / "bad" / "020.png").unlink()
    _raises(lambda: VisADataset(tree).records("capsules"), tree / "capsules" / "test" / "bad" / "020.JPG")
    folder = build_folder(tmp_path / "f")
    (folder / "parts" / "mask" / "a02.png").unlink()
    _raises(lambda: FolderDataset(folder).records("parts"), folder / "parts" / "anomaly" / "a02.jpg")
    fixed = build_folder_fixed(tmp_path / "g")
    (fixed / "gears" / "test" / "mask" / "a1.png").unlink()
    _raises(lambda: FolderDataset(fixed).records("gears"), fixed / "gears" / "test" / "anomaly" / "a1.png")


def test_bad_visa_csv(tmp_path: Path) -> None:
    root = build_visa_csv(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    good = csv_path.read_text()
    csv_path.write_text(good.replace("object,split,label,image,mask", "object,split,label,image"))
    _raises(lambda: VisADataset(root).categories(), csv_path, "mask")
    csv_path.write_text(good + "candle,test,anomaly,candle/Data/Images/Anomaly/999.JPG,x.png\n")
    _raises(
        lambda: VisADataset(root).records("candle"), root / "candle/Data/Images/Anomaly/999.JPG", csv_path
    )
    csv_path.write_text(good.replace("candle,train,normal", "candle,validation,normal", 1))
    _raises(lambda: VisADataset(root).records("candle"), csv_path, "validation")
    csv_path.write_text(good.replace("normal", "ok", 1))
    _raises(lambda: VisADataset(root).records("candle"), csv_path, "'ok'")
    lines = good.splitlines()
    csv_path.write_text("\n".join([*lines, lines[1]]) + "\n")
    _raises(lambda: VisADataset(root).records("candle"), csv_path, "twice")
    missing_mask = root / "candle/Data/Masks/Anomaly/000.png"
    csv_path.write_text(good)
    missing_mask.unlink()
    _raises(lambda: VisADataset(root).records("candle"), missing_mask, csv_path)
    csv_path.write_text(good.replace("candle/Data/Masks/Anomaly/000.png", ""))
    _raises(lambda: VisADataset(root).records("candle"), root / "candle/Data/Images/Anomaly/000.JPG")
    recs = VisADataset(root, require_masks=False).records("candle")
    assert [r.mask_path for r in recs if r.image_id.endswith("Anomaly/000.JPG")] == [None]


def test_bad_options(tmp_path: Path) -> None:
    build_folder(tmp_path)
    for frac in (0.0, 1.0, 1.5, "half"):
        _raises(lambda f=frac: FolderDataset(tmp_path, train_fraction=f), "train_fraction")
    both = tmp_path / "both"
    write_image(both / "normal" / "0.png")
    write_image(both / "train" / "normal" / "0.png")
    _raises(lambda: FolderDataset(tmp_path).categories(), both)
