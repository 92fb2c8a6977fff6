"""Real-IAD (Wang et al., CVPR 2024) reader: the release's per-class JSON split files.

Layout of the release:
    <root>/realiad_<res>/<class>/OK/<sample>/<image>.jpg
    <root>/realiad_<res>/<class>/NG/<defect>/<sample>/<image>.jpg, mask <image>_mask.png beside it
    <root>/realiad_jsons/<split>/<class>.json   (the JSON archive as extracted), or
    <root>/<split>/<class>.json                 (its folders moved up one level)
`res` is 256, 512, 1024 or raw (a copy may hold several). A split file is
`{"meta": {"prefix": "<class>/", "normal_class": "OK", ...}, "train": [...], "test": [...]}`; an entry is
`{"category", "anomaly_class", "image_path", "mask_path"}`, paths relative to the class folder
`realiad_<res>/<class>/`, mask_path null for normal images. Splits (the `split` option) are JSON
folder names: `realiad_jsons` (the standard split, normal-only training set), `realiad_jsons_sv`
(single view), `realiad_jsons_fuiad_0.0` / `_0.1` / `_0.2` / `_0.4` (the fully-unsupervised FUIAD
setting, whose training sets hold the given share of anomalous images).

The JSON file is the source of truth: images on disk it does not list are not read (the sv split
lists one view of five), and every listed file must exist. Labels come from `anomaly_class`
(label 0 when it equals meta.normal_class, else 1 with defect_type = the class code, e.g. "BX"),
never from the path: views of an NG sample in which the defect is not visible are listed as normal
although they lie under NG/. Training entries with label 1 (FUIAD) become train records with label
1, the dataset's own contamination. Each camera view is its own record; `sample_key` groups the
views of one physical sample.

Where the release documents nothing, this reader assumes: `meta` and its fields are optional
(normal_class defaults to "OK"); a given `meta.prefix` must name the file's class (the paths are
read relative to the class folder, as every public loader of the release does); an entry's
`category`, when given, must equal the file's class; a mask is optional for a training anomaly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from funad.data.images import is_image_file
from funad.data.mvtec import GOOD, check_mask_size, check_root, rel_id, unknown_category
from funad.data.records import Dataset, DatasetError, ImageRecord

RESOLUTIONS = ("256", "512", "1024", "raw")
#: the folder the JSON archive extracts to; it holds one folder per split
JSON_PARENT = "realiad_jsons"
DEFAULT_SPLIT = "realiad_jsons"
#: the split folders of the release (others, e.g. a user's own, are read the same way)
KNOWN_SPLITS = (
    "realiad_jsons",
    "realiad_jsons_sv",
    "realiad_jsons_fuiad_0.0",
    "realiad_jsons_fuiad_0.1",
    "realiad_jsons_fuiad_0.2",
    "realiad_jsons_fuiad_0.4",
)
DEFAULT_NORMAL_CLASS = "OK"
SPLIT_KEYS = ("train", "test")


def image_folder_name(resolution: str) -> str:
    return f"realiad_{resolution}"


def sample_key(image_id: str) -> str:
    """The physical sample an image shows: its folder (`.../OK/S0001`), shared by the camera views.

    A split that moves single views between train and test would leak one sample into both; group by
    this key to keep a sample's views together.
    """
    return PurePosixPath(image_id).parent.as_posix()


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


@dataclass
class RealIADDataset(Dataset):
    """Real-IAD classes as listed by one split's JSON files; see the module docstring.

    split: the JSON folder to read (default "realiad_jsons"; a FUIAD split for the release's own
        contaminated training sets).
    resolution: which `realiad_<res>` image folder to read (256, 512, 1024 or "raw"); None = the one
        present (an error when there are several).
    require_masks: an anomalous test image without mask_path is an error (True) or gets mask_path
        None (False).
    """

    split: str = DEFAULT_SPLIT
    resolution: str | int | None = None
    require_masks: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        self.kind = "realiad"
        self.pixel_level = True
        s = self.split
        if not isinstance(s, str) or not s or s in (".", "..") or "/" in s or "\\" in s:
            raise DatasetError(
                f"{self.root}: realiad split must be a JSON folder name (e.g. {', '.join(KNOWN_SPLITS)}), "
                f"got {s!r}"
            )
        if self.resolution is not None:
            res = self.resolution
            self.resolution = str(res) if isinstance(res, int) and not isinstance(res, bool) else res
            if self.resolution not in RESOLUTIONS:
                raise DatasetError(
                    f"{self.root}: realiad resolution {res!r} is not one of {', '.join(RESOLUTIONS)}"
                )

    # ---- where things are -------------------------------------------------------------------

    def _json_dirs(self) -> list[Path]:
        """Folders directly holding JSON files, at the root and inside the archive's folder."""
        out: list[Path] = []
        for parent in (self.root, self.root / JSON_PARENT):
            if parent.is_dir():
                out += [d for d in sorted(parent.iterdir()) if d.is_dir() and any(map(_is_json, d.iterdir()))]
        return out

    def json_dir(self) -> Path:
        """The folder of the chosen split; the archive's nesting and the flat form are both accepted."""
        check_root(self.root, self.kind)
        candidates = [self.root / JSON_PARENT / self.split, self.root / self.split]
        found = [d for d in candidates if d.is_dir() and any(map(_is_json, d.iterdir()))]
        if len(found) > 1:
            raise DatasetError(
                f"{self.root}: realiad split {self.split!r} exists twice ({found[0]} and {found[1]}); "
                "keep one"
            )
        if not found:
            have = ", ".join(rel_id(d, self.root) for d in self._json_dirs()) or "(none)"
            raise DatasetError(
                f"{self.root}: realiad split folder {self.split!r} with <class>.json files not found "
                f"(looked for {candidates[0]} and {candidates[1]}); JSON folders found: {have}"
            )
        return found[0]

    def image_dir(self) -> Path:
        check_root(self.root, self.kind)
        if self.resolution is not None:
            d = self.root / image_folder_name(str(self.resolution))
            if not d.is_dir():
                raise DatasetError(
                    f"{d}: realiad image folder of resolution {self.resolution} does not exist"
                )
            return d
        present = [self.root / image_folder_name(r) for r in RESOLUTIONS]
        present = [d for d in present if d.is_dir()]
        if not present:
            names = ", ".join(image_folder_name(r) for r in RESOLUTIONS)
            raise DatasetError(f"{self.root}: no realiad image folder found (expected one of {names})")
        if len(present) > 1:
            names = ", ".join(d.name for d in present)
            raise DatasetError(
                f"{self.root}: several realiad image folders ({names}); pass resolution= "
                f"({', '.join(RESOLUTIONS)}) to choose one"
            )
        return present[0]

    def _json_files(self) -> dict[str, Path]:
        jdir = self.json_dir()
        files: dict[str, Path] = {}
        for p in sorted(jdir.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() or not _is_json(p):
                raise DatasetError(
                    f"{p}: unexpected entry in realiad split folder {jdir} "
                    "(it holds one <class>.json per class)"
                )
            if p.stem in files:
                raise DatasetError(f"{p}: same class name as {files[p.stem]}; keep one")
            files[p.stem] = p
        return files

    def categories(self) -> list[str]:
        return sorted(self._json_files())

    # ---- records ----------------------------------------------------------------------------

    def records(self, category: str) -> list[ImageRecord]:
        files = self._json_files()
        if category not in files:
            raise unknown_category(self.root, self.kind, category, sorted(files))
        json_path = files[category]
        data = _load(json_path)
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise DatasetError(f"{json_path}: 'meta' must be an object, got {type(meta).__name__}")
        normal = meta.get("normal_class", DEFAULT_NORMAL_CLASS)
        if not isinstance(normal, str) or not normal:
            raise DatasetError(f"{json_path}: meta.normal_class must be a non-empty string, got {normal!r}")
        prefix = meta.get("prefix")
        if prefix is not None and (not isinstance(prefix, str) or prefix.strip("/") != category):
            raise DatasetError(
                f"{json_path}: meta.prefix {prefix!r} does not name class {category!r}; this reader takes "
                "paths relative to the class folder"
            )
        class_dir = self.image_dir() / category
        if not class_dir.is_dir():
            raise DatasetError(f"{class_dir}: image folder of realiad class {category!r} does not exist")
        recs: list[ImageRecord] = []
        seen: dict[str, str] = {}
        for split in SPLIT_KEYS:
            entries = data[split]
            for i, entry in enumerate(entries):
                recs.append(
                    self._record(json_path, f"{split}[{i}]", split, entry, class_dir, normal, category, seen)
                )
            if not entries:
                raise DatasetError(f"{json_path}: empty {split} split (no entries)")
        return sorted(recs, key=lambda r: r.image_id)

    def _record(
        self,
        json_path: Path,
        at: str,
        split: str,
        entry: Any,
        class_dir: Path,
        normal: str,
        category: str,
        seen: dict[str, str],
    ) -> ImageRecord:
        where = f"{json_path} entry {at}"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: entry must be an object, got {type(entry).__name__}")
        cls = entry.get("anomaly_class")
        if not isinstance(cls, str) or not cls:
            raise DatasetError(f"{where}: anomaly_class must be a non-empty string, got {cls!r}")
        cat = entry.get("category")
        if cat is not None and cat != category:
            raise DatasetError(f"{where}: category {cat!r} does not match the file's class {category!r}")
        image = self._resolve(where, class_dir, entry.get("image_path"), "image")
        if not is_image_file(image):
            raise DatasetError(f"{image}: not an image file (listed in {where})")
        image_id = rel_id(image, self.root)
        if image_id in seen:
            raise DatasetError(f"{where}: image {image_id} is listed twice (also {seen[image_id]})")
        seen[image_id] = at
        raw_mask = entry.get("mask_path")
        mask = None if raw_mask in (None, "") else self._resolve(where, class_dir, raw_mask, "mask")
        label = 0 if cls == normal else 1
        if mask is not None:
            check_mask_size(image, mask)
        elif label == 1 and split == "test" and self.require_masks:
            raise DatasetError(
                f"{image}: anomalous test image has no mask_path in {where}; "
                "pass require_masks=False to allow it"
            )
        return ImageRecord(image_id, image, label, split, category, GOOD if label == 0 else cls, mask)

    @staticmethod
    def _resolve(where: str, class_dir: Path, rel: Any, what: str) -> Path:
        if not isinstance(rel, str) or not rel:
            raise DatasetError(f"{where}: {what}_path must be a non-empty string, got {rel!r}")
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DatasetError(
                f"{where}: {what}_path {rel!r} must be relative to the class folder {class_dir}"
            )
        path = class_dir / pure
        if not path.is_file():
            raise DatasetError(f"{path}: {what} file listed in {where} does not exist")
        return path


def _load(path: Path) -> dict[str, Any]:
    """Parse one split file; every structural problem names the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: split file is not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: split file must hold a JSON object, got {type(data).__name__}")
    for key in SPLIT_KEYS:
        if key not in data:
            raise DatasetError(
                f"{path}: split file lacks the {key!r} list (has {', '.join(map(repr, data)) or 'no keys'})"
            )
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list of entries, got {type(data[key]).__name__}")
    return data
