"""Builders of small trees in the published layouts of Real-IAD, MVTec AD 2, BTAD and MPDD.

Each builder writes a few tiny images per split with the release's folder and file naming, so the
loader tests read what a real download looks like (see each loader's module docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest_data import H, W, build_mvtec, write_image, write_mask
from PIL import Image

# ---- Real-IAD ---------------------------------------------------------------------------------

REALIAD_CLASSES = ("audiojack", "pcb")
REALIAD_VIEWS = (1, 2, 3, 4, 5)
#: the camera views of an NG sample in which its defect is visible (the others are listed as OK)
REALIAD_VISIBLE = (1, 3)
REALIAD_DEFECTS = ("BX", "QS")
#: image size per resolution folder (not square, so swapped axes would show)
REALIAD_SIZES = {"256": (W, H), "512": (48, 36)}


def realiad_sample(sample: int, defect: str | None) -> str:
    """A sample folder relative to the class folder: `OK/S0001` or `NG/<defect>/S0003`."""
    return f"OK/S{sample:04d}" if defect is None else f"NG/{defect}/S{sample:04d}"


def realiad_image(cls: str, sample: int, defect: str | None, view: int) -> str:
    """An image path relative to the class folder, named like the release's files."""
    tag = "OK" if defect is None else "NG"
    return f"{realiad_sample(sample, defect)}/{cls}_{sample:04d}_{tag}_C{view}_2023092{view}{sample:04d}.jpg"


def realiad_entries(cls: str, sample: int, defect: str | None) -> list[dict[str, object]]:
    """The JSON entries of one sample's views: defect views carry the code and a mask, others are OK."""
    out = []
    for v in REALIAD_VIEWS:
        image = realiad_image(cls, sample, defect, v)
        visible = defect is not None and v in REALIAD_VISIBLE
        out.append(
            {
                "category": cls,
                "anomaly_class": defect if visible else "OK",
                "image_path": image,
                "mask_path": image[: -len(".jpg")] + "_mask.png" if visible else None,
            }
        )
    return out


def write_realiad_json(path: Path, cls: str, train: list, test: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": {"prefix": f"{cls}/", "normal_class": "OK", "pre_transform": None},
        "train": train,
        "test": test,
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def build_realiad(
    root: Path,
    resolutions: tuple[str, ...] = ("256",),
    nested: bool = True,
    n_ok_train: int = 2,
    n_ok_test: int = 1,
) -> Path:
    """Real-IAD: per class `n_ok_train` + `n_ok_test` OK samples and one NG sample per defect code,
    five views each; masks beside the visible-defect views; the standard split file per class, in
    `realiad_jsons/realiad_jsons/` (nested, as the archive extracts) or `realiad_jsons/` (flat).

    Sample numbers: OK 1..n_ok_train+n_ok_test, then NG samples in REALIAD_DEFECTS order.
    """
    for res in resolutions:
        size = REALIAD_SIZES[res]
        for cls in REALIAD_CLASSES:
            cdir = root / f"realiad_{res}" / cls
            samples = [(s, None) for s in range(1, n_ok_train + n_ok_test + 1)]
            samples += [(n_ok_train + n_ok_test + 1 + k, d) for k, d in enumerate(REALIAD_DEFECTS)]
            for s, d in samples:
                for e in realiad_entries(cls, s, d):
                    write_image(
                        cdir / str(e["image_path"]), size=size, value=s * 10 + len(str(e["image_path"]))
                    )
                    if e["mask_path"]:
                        write_mask(cdir / str(e["mask_path"]), size=size)
    jdir = root / "realiad_jsons" / "realiad_jsons" if nested else root / "realiad_jsons"
    for cls in REALIAD_CLASSES:
        train = [e for s in range(1, n_ok_train + 1) for e in realiad_entries(cls, s, None)]
        test = [
            e
            for s in range(n_ok_train + 1, n_ok_train + n_ok_test + 1)
            for e in realiad_entries(cls, s, None)
        ]
        test += [
            e
            for k, d in enumerate(REALIAD_DEFECTS)
            for e in realiad_entries(cls, n_ok_train + n_ok_test + 1 + k, d)
        ]
        write_realiad_json(jdir / f"{cls}.json", cls, train, test)
    return root


def build_realiad_fuiad(root: Path, name: str = "realiad_jsons_fuiad_0.2") -> Path:
    """A FUIAD split over build_realiad's images (defaults): the first NG sample (BX, sample 4) moves
    into the training set with its views' labels and masks; the OK samples 1-2 train, 3 tests."""
    for cls in REALIAD_CLASSES:
        train = [e for s in (1, 2) for e in realiad_entries(cls, s, None)] + realiad_entries(cls, 4, "BX")
        test = realiad_entries(cls, 3, None) + realiad_entries(cls, 5, "QS")
        write_realiad_json(root / "realiad_jsons" / name / f"{cls}.json", cls, train, test)
    return root


# ---- MVTec AD 2 -------------------------------------------------------------------------------

AD2_TRAIN = ("000_regular", "001_regular", "002_regular")
AD2_VALIDATION = ("000_regular", "001_regular")
AD2_GOOD = ("000_regular", "001_overexposed")
AD2_BAD = ("000_regular", "001_underexposed", "002_shift_1")


def write_gray(path: Path, size: tuple[int, int] = (W, H), value: int = 0) -> Path:
    """A single-channel image, as some MVTec AD 2 categories (vial, wallplugs) are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = ((np.arange(w)[None, :] * 3 + np.arange(h)[:, None] + value) % 256).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path)
    return path


def build_mvtec_ad2(root: Path) -> Path:
    """MVTec AD 2: `can` (RGB) and `vial` (grey); train/validation good, test_public good/bad with
    `<stem>_mask.png` masks, and unlabelled test_private / test_private_mixed (not read)."""
    for cat, write in (("can", write_image), ("vial", write_gray)):
        cdir = root / cat
        for i, stem in enumerate(AD2_TRAIN):
            write(cdir / "train" / "good" / f"{stem}.png", value=i)
        for i, stem in enumerate(AD2_VALIDATION):
            write(cdir / "validation" / "good" / f"{stem}.png", value=20 + i)
        for i, stem in enumerate(AD2_GOOD):
            write(cdir / "test_public" / "good" / f"{stem}.png", value=40 + i)
        for i, stem in enumerate(AD2_BAD):
            write(cdir / "test_public" / "bad" / f"{stem}.png", value=60 + i)
            write_mask(cdir / "test_public" / "ground_truth" / "bad" / f"{stem}_mask.png")
        for i in range(2):
            write(cdir / "test_private" / f"{i:03d}_regular.png", value=80 + i)
            write(cdir / "test_private_mixed" / f"{i:03d}_mixed.png", value=90 + i)
    return root


# ---- BTAD -------------------------------------------------------------------------------------

#: product -> (image extension, mask extension, image size), as in the published archive's formats
BTAD_PRODUCTS = {
    "01": (".bmp", ".png", (20, 20)),
    "02": (".png", ".png", (16, 16)),
    "03": (".bmp", ".bmp", (32, 24)),
}


def build_btad(root: Path, n_train: int = 3, n_ok: int = 2, n_ko: int = 2) -> Path:
    """BTAD: `<product>/train/ok`, `test/{ok,ko}`, `ground_truth/ko/<stem><mask ext>`; plus the
    archive's top-level README (not a product)."""
    for product, (ext, mext, size) in BTAD_PRODUCTS.items():
        pdir = root / product
        for i in range(n_train):
            write_image(pdir / "train" / "ok" / f"{i:04d}{ext}", size=size, value=i)
        for i in range(n_ok):
            write_image(pdir / "test" / "ok" / f"{i:04d}{ext}", size=size, value=30 + i)
        for i in range(n_ko):
            write_image(pdir / "test" / "ko" / f"{i:04d}{ext}", size=size, value=60 + i)
            write_mask(pdir / "ground_truth" / "ko" / f"{i:04d}{mext}", size=size)
    (root / "README.txt").write_text("BeanTech Anomaly Detection Dataset - BTAD\n")
    return root


# ---- MPDD -------------------------------------------------------------------------------------

MPDD_DEFECTS = {"bracket_black": {"hole": 2, "scratches": 1}, "tubes": {"anomalous": 2}}


def build_mpdd(root: Path) -> Path:
    """MPDD ships in the MVTec AD layout (`<stem>_mask.png` masks); categories and defects as released."""
    return build_mvtec(root, MPDD_DEFECTS)
