"""VisA reader: the official archive (split_csv/1cls.csv) or the MVTec-style converted tree.

The official split file is the source of truth when present, so numbers match other papers'
1cls protocol; the converted tree (`test/{good,bad}`, masks `<stem>.png` or `<stem>_mask.png`)
is what many tools produce and is read with the MVTec rules.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from funad.data.images import is_image_file
from funad.data.mvtec import MVTecDataset, check_mask_size, check_root, unknown_category
from funad.data.records import Dataset, DatasetError, ImageRecord

SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
#: VisA's 1cls split has no per-defect types.
DEFECT = "bad"


@dataclass
class _VisATree(MVTecDataset):
    """MVTec-style converted VisA tree; masks may be named `<stem>.png` or `<stem>_mask.png`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "visa"

    def mask_candidates(self, category: str, defect: str, stem: str) -> list[Path]:
        gt = self.root / category / "ground_truth" / defect
        return [gt / f"{stem}.png", gt / f"{stem}_mask.png"]

    def layout_hint(self) -> str:
        return f"{SPLIT_CSV.as_posix()}, or <root>/<category>/train/good/* and <root>/<category>/test/*"


@dataclass
class VisADataset(Dataset):
    """VisA in either layout, detected by the presence of `split_csv/1cls.csv`."""

    require_masks: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.kind = "visa"
        self.pixel_level = True

    @property
    def csv_path(self) -> Path:
        return self.root / SPLIT_CSV

    def uses_split_csv(self) -> bool:
        return self.csv_path.is_file()

    def categories(self) -> list[str]:
        check_root(self.root, self.kind)
        if not self.uses_split_csv():
            return _VisATree(self.root, require_masks=self.require_masks).categories()
        cats = sorted({row["object"] for _, row in self._rows()})
        if not cats:
            raise DatasetError(f"{self.csv_path}: split file lists no images")
        return cats

    def records(self, category: str) -> list[ImageRecord]:
        check_root(self.root, self.kind)
        if not self.uses_split_csv():
            return _VisATree(self.root, require_masks=self.require_masks).records(category)
        rows = self._rows()
        have = sorted({row["object"] for _, row in rows})
        if category not in have:
            raise unknown_category(self.root, self.kind, category, have)
        recs: list[ImageRecord] = []
        seen: dict[str, int] = {}
        for line, row in rows:
            if row["object"] != category:
                continue
            recs.append(self._record(line, row, seen))
        for split in ("train", "test"):
            if not any(r.split == split for r in recs):
                raise DatasetError(f"{self.csv_path}: empty {split} split for category {category!r}")
        return sorted(recs, key=lambda r: r.image_id)

    def _rows(self) -> list[tuple[int, dict[str, str]]]:
        """Parse the split csv (line number, row); a missing column is an error naming the file."""
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = [c.strip() for c in (reader.fieldnames or [])]
                missing = [c for c in CSV_COLUMNS if c not in fields]
                if missing:
                    raise DatasetError(
                        f"{self.csv_path}: split file lacks column(s) {', '.join(missing)} "
                        f"(has {', '.join(fields) or 'no header'}; needs {', '.join(CSV_COLUMNS)})"
                    )
                rows = []
                for i, raw in enumerate(reader, start=2):
                    row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                    rows.append((i, row))
                return rows
        except UnicodeDecodeError as e:
            raise DatasetError(f"{self.csv_path}: split file is not UTF-8 text ({e})") from e

    def _resolve(self, line: int, rel: str, what: str) -> Path:
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DatasetError(f"{self.csv_path}:{line}: {what} path {rel!r} must be relative to the root")
        path = self.root / pure
        if not path.is_file():
            raise DatasetError(f"{path}: {what} file listed in {self.csv_path}:{line} does not exist")
        return path

    def _record(self, line: int, row: dict[str, str], seen: dict[str, int]) -> ImageRecord:
        where = f"{self.csv_path}:{line}"
        split, label = row["split"].lower(), row["label"].lower()
        if split not in ("train", "test"):
            raise DatasetError(f"{where}: split {row['split']!r} is not 'train' or 'test'")
        if label not in ("normal", "anomaly"):
            raise DatasetError(f"{where}: label {row['label']!r} is not 'normal' or 'anomaly'")
        if split == "train" and label == "anomaly":
            raise DatasetError(f"{where}: an anomalous image in the training split is not supported")
        if not row["image"]:
            raise DatasetError(f"{where}: empty image path")
        image = self._resolve(line, row["image"], "image")
        if not is_image_file(image):
            raise DatasetError(f"{image}: not an image file (listed in {where})")
        image_id = image.relative_to(self.root).as_posix()
        if image_id in seen:
            raise DatasetError(f"{where}: image {image_id} is listed twice (also line {seen[image_id]})")
        seen[image_id] = line
        mask: Path | None = None
        if row["mask"]:
            mask = self._resolve(line, row["mask"], "mask")
            check_mask_size(image, mask)
        elif label == "anomaly" and self.require_masks:
            raise DatasetError(
                f"{image}: anomalous image has no mask in {where}; pass require_masks=False to allow it"
            )
        if label == "normal":
            return ImageRecord(image_id, image, 0, split, row["object"], "good", mask)
        return ImageRecord(image_id, image, 1, split, row["object"], DEFECT, mask)
