"""MVTec AD 2 (Heckler-Kram et al., 2025) reader.

Layout: `<root>/<category>/train/good/*`, `<root>/<category>/validation/good/*`,
`<root>/<category>/test_public/{good,bad}/*`, masks `<root>/<category>/test_public/ground_truth/bad/
<stem>_mask.png` (files are named `<index>_<lighting>.png`, e.g. `000_regular.png`, masks 0/255).
`test_private` and `test_private_mixed` carry no labels (they are scored by MVTec's evaluation
server), so they are not read at all. The public test set is the test split; all its anomalies
share the defect type `bad` because the release does not name defect kinds. Some categories are
single-channel grey; the image loader converts every image to RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from funad.data.btad import only_folders, pair_masks
from funad.data.mvtec import GOOD, list_categories, list_images, rel_id, unknown_category
from funad.data.records import Dataset, DatasetError, ImageRecord

TEST = "test_public"
VALIDATION = "validation"
BAD = "bad"
#: a mask's file stem is the image's stem plus this
MASK_SUFFIX = "_mask"


@dataclass
class MVTecAD2Dataset(Dataset):
    """MVTec AD 2 categories; categories are the sub-folders that have train/good.

    include_validation: also use `validation/good` as training images (default False: the paper
        keeps it for model selection; those records keep their `validation/...` image ids).
    require_masks: an anomalous test image without a mask is an error (True) or gets mask_path
        None (False).
    """

    include_validation: bool = False
    require_masks: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.kind = "mvtec_ad2"
        self.pixel_level = True

    def categories(self) -> list[str]:
        expected = f"<root>/<category>/train/{GOOD}/* and <root>/<category>/{TEST}/{{{GOOD},{BAD}}}/*"
        return list_categories(self.root, self.kind, GOOD, expected)

    def _train(self, cdir: Path, folder: str) -> list[Path]:
        split_dir = cdir / folder
        if not split_dir.is_dir():
            raise DatasetError(f"{split_dir}: {folder} folder does not exist")
        only_folders(split_dir, {GOOD}, f"the {folder} set holds only '{GOOD}' images")
        images = list_images(split_dir / GOOD)
        if not images:
            raise DatasetError(f"{split_dir / GOOD}: empty {folder} split (no images)")
        return images

    def records(self, category: str) -> list[ImageRecord]:
        have = self.categories()
        if category not in have:
            raise unknown_category(self.root, self.kind, category, have)
        cdir = self.root / category
        train = self._train(cdir, "train")
        if self.include_validation:
            train += self._train(cdir, VALIDATION)
        recs = [ImageRecord(rel_id(p, self.root), p, 0, "train", category) for p in train]

        test_dir = cdir / TEST
        if not test_dir.is_dir():
            raise DatasetError(f"{test_dir}: public test folder does not exist")
        only_folders(test_dir, {GOOD, BAD, "ground_truth"}, "expected")
        good = list_images(test_dir / GOOD) if (test_dir / GOOD).exists() else []
        bad = list_images(test_dir / BAD) if (test_dir / BAD).exists() else []
        if not good and not bad:
            raise DatasetError(f"{test_dir}: empty test split (no images in {GOOD}/ or {BAD}/)")
        gt = test_dir / "ground_truth"
        if gt.exists():
            only_folders(gt, {BAD}, "masks exist only for anomalous images")
        masks = pair_masks(bad, gt / BAD, suffix=MASK_SUFFIX, require=self.require_masks)
        recs += [ImageRecord(rel_id(p, self.root), p, 0, "test", category) for p in good]
        recs += [ImageRecord(rel_id(p, self.root), p, 1, "test", category, BAD, masks[p]) for p in bad]
        return sorted(recs, key=lambda r: r.image_id)
