"""BTAD (beanTech Anomaly Detection; Mishra et al., ISIE 2021) reader.

Layout of the published archive: `<root>/<product>/train/ok/*`, `<root>/<product>/test/{ok,ko}/*`,
masks `<root>/<product>/ground_truth/ko/<stem>.<ext>`; products are `01`, `02`, `03`. Image and mask
formats differ per product (01: bmp images, png masks; 02: png and png; 03: bmp and bmp), so a mask is
matched by file stem with any image extension, never by a fixed name. Any other anomalous folder
`test/<defect>` is read the same way (masks in `ground_truth/<defect>`), so a re-labelled copy works.
Like the MVTec reader, nothing is skipped: a stray file, a mask without its image, two masks for one
image, or two images sharing a stem are errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from funad.data.mvtec import (
    check_mask_size,
    list_categories,
    list_images,
    rel_id,
    unknown_category,
)
from funad.data.records import Dataset, DatasetError, ImageRecord

#: BTAD's folder names for normal and anomalous images.
OK, KO = "ok", "ko"


def pair_masks(
    images: list[Path], mask_dir: Path, *, suffix: str = "", require: bool = True
) -> dict[Path, Path | None]:
    """Each anomalous image's mask: the one image file in `mask_dir` whose stem is `<image stem><suffix>`.

    Matching by stem (any extension) is what layouts with per-product mask formats need. Two images
    with one stem, two masks for one image, and a mask that belongs to no image are errors: each
    means the tree was edited or half-extracted. A missing mask is an error when `require`,
    else None.
    """
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise DatasetError(f"{p}: same file stem as {stems[p.stem]}; masks are matched by stem")
        stems[p.stem] = p
    masks = list_images(mask_dir) if mask_dir.exists() else []
    by_stem: dict[str, list[Path]] = {}
    for m in masks:
        by_stem.setdefault(m.stem, []).append(m)
    wanted = {f"{stem}{suffix}" for stem in stems}
    orphans = [m for m in masks if m.stem not in wanted]
    if orphans:
        image_dir = images[0].parent if images else "the matching test folder"
        stem = orphans[0].stem
        stem = stem[: len(stem) - len(suffix)] if suffix and stem.endswith(suffix) else stem
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DatasetError(
            f"{orphans[0]}: mask has no image{more} (expected an image named {stem}.* in {image_dir})"
        )
    out: dict[Path, Path | None] = {}
    for p in images:
        found = by_stem.get(f"{p.stem}{suffix}", [])
        if len(found) > 1:
            raise DatasetError(f"{p}: more than one mask matches ({', '.join(map(str, found))}); keep one")
        if not found:
            if require:
                raise DatasetError(
                    f"{p}: anomalous test image has no mask (expected {mask_dir / (p.stem + suffix)}.<ext>); "
                    "pass require_masks=False to allow it"
                )
            out[p] = None
            continue
        check_mask_size(p, found[0])
        out[p] = found[0]
    return out


def only_folders(parent: Path, allowed: set[str], what: str) -> None:
    """Every non-dot entry of `parent` must be one of the `allowed` folders."""
    for p in sorted(parent.iterdir()):
        if p.name.startswith("."):
            continue
        if p.name not in allowed or not p.is_dir():
            raise DatasetError(
                f"{p}: unexpected entry in {parent} ({what}: {', '.join(sorted(allowed)) or '(none)'})"
            )


@dataclass
class BTADDataset(Dataset):
    """BTAD products; categories are the sub-folders that have train/ok.

    require_masks: an anomalous test image without a mask is an error (True) or gets mask_path
    None (False).
    """

    require_masks: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.kind = "btad"
        self.pixel_level = True

    def categories(self) -> list[str]:
        expected = f"<root>/<product>/train/{OK}/* and <root>/<product>/test/{{{OK},{KO}}}/*"
        return list_categories(self.root, self.kind, OK, expected)

    def records(self, category: str) -> list[ImageRecord]:
        have = self.categories()
        if category not in have:
            raise unknown_category(self.root, self.kind, category, have)
        cdir = self.root / category
        train_dir = cdir / "train"
        only_folders(train_dir, {OK}, "the training set holds only normal images")
        train = list_images(train_dir / OK)
        if not train:
            raise DatasetError(f"{train_dir / OK}: empty training split (no images)")
        recs = [ImageRecord(rel_id(p, self.root), p, 0, "train", category) for p in train]

        test_dir = cdir / "test"
        if not test_dir.is_dir():
            raise DatasetError(f"{test_dir}: test split folder does not exist")
        defects: list[str] = []
        n_test = 0
        for d in sorted(test_dir.iterdir()):
            if d.name.startswith("."):
                continue
            if not d.is_dir():
                raise DatasetError(f"{d}: unexpected file in {test_dir} (expected the folders {OK} and {KO})")
            images = list_images(d)
            n_test += len(images)
            if d.name == OK:
                recs += [ImageRecord(rel_id(p, self.root), p, 0, "test", category) for p in images]
                continue
            defects.append(d.name)
            masks = pair_masks(images, cdir / "ground_truth" / d.name, require=self.require_masks)
            recs += [
                ImageRecord(rel_id(p, self.root), p, 1, "test", category, d.name, masks[p]) for p in images
            ]
        if n_test == 0:
            raise DatasetError(f"{test_dir}: empty test split (no images)")
        gt = cdir / "ground_truth"
        if gt.exists():
            only_folders(gt, set(defects), "mask folders must match the anomalous test folders")
        return sorted(recs, key=lambda r: r.image_id)
