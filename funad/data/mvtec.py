"""MVTec AD layout reader (any category names), plus the folder checks other layouts share.

Layout: `<root>/<category>/train/good/*`, `<root>/<category>/test/{good,<defect>}/*`, masks
`<root>/<category>/ground_truth/<defect>/<stem>_mask.png`. Everything is validated when
`records()` is called, and nothing is silently skipped: a stray file in an image folder is an
error, because a half-extracted or hand-edited tree would otherwise shift every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from funad.data.images import image_size, is_image_file
from funad.data.records import Dataset, DatasetError, ImageRecord

GOOD = "good"


def check_root(root: Path, kind: str) -> None:
    """A missing (or non-directory) root is the most common user error: name it clearly."""
    if not root.exists():
        raise DatasetError(f"{root}: {kind} dataset root does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: {kind} dataset root is not a directory")


def list_images(folder: Path) -> list[Path]:
    """All images of a flat image folder, sorted.

    Dotfiles (.DS_Store, ._x) are ignored; anything else that is not an image is an error,
    so a typo'd extension or a nested folder is never dropped without notice.
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder does not exist")
    out: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            raise DatasetError(f"{p}: unexpected sub-folder inside image folder {folder}")
        if not p.exists():
            raise DatasetError(f"{p}: broken link inside image folder {folder}")
        if not is_image_file(p):
            raise DatasetError(
                f"{p}: not an image file (extension {p.suffix or '(none)'!r}) inside image folder "
                f"{folder}; remove it or move it out"
            )
        out.append(p)
    return out


def check_mask_size(image: Path, mask: Path) -> None:
    """Compare header sizes only (cheap); a resized mask would silently shift pixel metrics."""
    iw, ih = image_size(image)
    mw, mh = image_size(mask)
    if (iw, ih) != (mw, mh):
        raise DatasetError(f"{mask}: mask size {mw}x{mh} does not match its image {image} ({iw}x{ih})")


def list_categories(root: Path, kind: str, train_folder: str, expected: str) -> list[str]:
    """The sub-folders of root that hold train/<train_folder>, sorted; none is an error naming the
    layout that was `expected`."""
    check_root(root, kind)
    cats = sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "train" / train_folder).is_dir()
    )
    if not cats:
        raise DatasetError(f"{root}: no {kind} categories found (expected {expected})")
    return cats


def rel_id(path: Path, root: Path) -> str:
    """The stable image id: POSIX path relative to the dataset root."""
    return path.relative_to(root).as_posix()


def unknown_category(root: Path, kind: str, category: str, have: list[str]) -> DatasetError:
    return DatasetError(
        f"{root}: unknown {kind} category {category!r}; available: {', '.join(have) or '(none)'}"
    )


@dataclass
class MVTecDataset(Dataset):
    """Any tree in the MVTec AD layout; categories are the sub-folders that have train/good.

    require_masks: an anomalous test image without a mask is an error (True) or gets
    mask_path None (False).
    """

    require_masks: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.kind = "mvtec"
        self.pixel_level = True

    # Overridden by the VisA MVTec-style reader, which also accepts `<stem>.png`.
    def mask_candidates(self, category: str, defect: str, stem: str) -> list[Path]:
        """Possible mask files of one anomalous test image, in order of preference."""
        return [self.root / category / "ground_truth" / defect / f"{stem}_mask.png"]

    def layout_hint(self) -> str:
        return "<root>/<category>/train/good/*, <root>/<category>/test/{good,<defect>}/*"

    def categories(self) -> list[str]:
        return list_categories(self.root, self.kind, GOOD, self.layout_hint())

    def records(self, category: str) -> list[ImageRecord]:
        have = self.categories()
        if category not in have:
            raise unknown_category(self.root, self.kind, category, have)
        cdir = self.root / category
        recs: list[ImageRecord] = []

        train_dir = cdir / "train"
        for p in sorted(train_dir.iterdir()):
            if p.name.startswith(".") or p.name == GOOD:
                continue
            raise DatasetError(
                f"{p}: unexpected entry in {train_dir} (the training set holds only '{GOOD}' images)"
            )
        train = list_images(train_dir / GOOD)
        if not train:
            raise DatasetError(f"{train_dir / GOOD}: empty training split (no images)")
        recs += [ImageRecord(rel_id(p, self.root), p, 0, "train", category) for p in train]

        test_dir = cdir / "test"
        if not test_dir.is_dir():
            raise DatasetError(f"{test_dir}: test split folder does not exist")
        n_test = 0
        for d in sorted(test_dir.iterdir()):
            if d.name.startswith("."):
                continue
            if not d.is_dir():
                raise DatasetError(
                    f"{d}: unexpected file in {test_dir} (expected one folder per defect type)"
                )
            for p in list_images(d):
                n_test += 1
                if d.name == GOOD:
                    recs.append(ImageRecord(rel_id(p, self.root), p, 0, "test", category))
                    continue
                mask = self._find_mask(category, d.name, p)
                recs.append(ImageRecord(rel_id(p, self.root), p, 1, "test", category, d.name, mask))
        if n_test == 0:
            raise DatasetError(f"{test_dir}: empty test split (no images)")
        return sorted(recs, key=lambda r: r.image_id)

    def _find_mask(self, category: str, defect: str, image: Path) -> Path | None:
        found = [m for m in self.mask_candidates(category, defect, image.stem) if m.is_file()]
        if len(found) > 1:
            raise DatasetError(
                f"{image}: more than one mask matches ({', '.join(map(str, found))}); keep one"
            )
        if not found:
            if self.require_masks:
                expected = " or ".join(str(m) for m in self.mask_candidates(category, defect, image.stem))
                raise DatasetError(
                    f"{image}: anomalous test image has no mask (expected {expected}); "
                    "pass require_masks=False to allow it"
                )
            return None
        check_mask_size(image, found[0])
        return found[0]
