"""Training splits from list files, and a cell's split as a list: so published splits can be reproduced
and ours reused without our code.

Two list forms are read (one CSV per ratio and seed, any categories):
- ours, written for every finished cell (`<run>/splits/<cell_id>.csv`): `path,category,role,label,injected`
  (path = the image id: relative to the dataset root; role train|test); only the `train` rows are used;
- the MeDS form (`filename,clsname`): one row per training image; `filename` relative to the dataset
  root, or to the category folder.
The training pool is exactly the listed images of the category (normal training images and test images
alike: a listed test image is an injected one); the test set is the category's test images minus the
listed ones, or all of them with overlap. Every problem (an image the dataset does not have, a category it
does not have, an image listed twice, a malformed header) names the list, its line and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from funad.data.contamination import Split
from funad.data.records import DatasetError, ImageRecord

#: our form's columns (what `split_rows` writes), and the MeDS form's
OUR_COLUMNS = ("path", "category", "role", "label", "injected")
MEDS_COLUMNS = ("filename", "clsname")
#: the fields a list path template may use
TEMPLATE_FIELDS = ("dataset", "ratio", "ratio_pct", "count", "seed")


@dataclass(frozen=True)
class SplitList:
    """One parsed list file: per category, the training image ids in file order (with their line)."""

    path: Path
    sha256: str
    train: dict[str, list[tuple[str, int]]]

    @property
    def source(self) -> str:
        """What a result row records as `split_source`."""
        return f"{self.path} sha256:{self.sha256}"


def list_path(template: str, *, dataset: str, ratio: float | None, count: int | None, seed: int) -> Path:
    """Fill a list path template such as `lists/train_mvtec_nr{ratio_pct}_seed_{seed}.csv`.

    ratio_pct is the ratio in whole percent (0.1 -> 10); count the absolute count of a count cell.
    """
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise DatasetError(f"split list template {template!r}: unknown field(s) {', '.join(unknown)} "
                           f"(allowed: {', '.join(TEMPLATE_FIELDS)})")
    values = {"dataset": dataset, "ratio": "" if ratio is None else f"{ratio:g}",
              "ratio_pct": "" if ratio is None else str(int(round(float(ratio) * 100))),
              "count": "" if count is None else str(count), "seed": str(seed)}
    return Path(template.format(**values)).expanduser()


def read_split_list(path: str | Path) -> SplitList:
    """Parse a list file (either form); structural problems name the file and the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: split list does not exist") from None
    except OSError as exc:
        raise DatasetError(f"{path}: split list cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: split list is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DatasetError(f"{path}: split list is empty (expected a header: "
                           f"{','.join(OUR_COLUMNS)} or {','.join(MEDS_COLUMNS)})")
    header = [h.strip() for h in rows[0]]
    if tuple(header[: len(OUR_COLUMNS)]) == OUR_COLUMNS:
        form = "ours"
    elif tuple(header[: len(MEDS_COLUMNS)]) == MEDS_COLUMNS:
        form = "meds"
    else:
        raise DatasetError(f"{path}: line 1: unknown header {','.join(header)!r} (allowed: "
                           f"{','.join(OUR_COLUMNS)} or {','.join(MEDS_COLUMNS)})")
    train: dict[str, list[tuple[str, int]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        width = len(OUR_COLUMNS) if form == "ours" else len(MEDS_COLUMNS)
        if len(row) < width:
            raise DatasetError(f"{path}: line {lineno}: expected {width} columns, got {len(row)}")
        if form == "ours":
            name, category, role = row[0].strip(), row[1].strip(), row[2].strip()
            if role not in ("train", "test"):
                raise DatasetError(f"{path}: line {lineno}: role {role!r} (allowed: train, test)")
            if role != "train":
                continue
        else:
            name, category = row[0].strip(), row[1].strip()
        if not name or not category:
            raise DatasetError(f"{path}: line {lineno}: empty image name or category")
        if "#aug" in name:
            raise DatasetError(f"{path}: line {lineno}: {name!r} is an augmented copy (shortfall 'augment'), "
                               "which a list cannot reproduce (allowed: images of the dataset)")
        if (category, name) in seen:
            raise DatasetError(f"{path}: line {lineno}: {name!r} listed twice (first on line "
                               f"{seen[(category, name)]})")
        seen[(category, name)] = lineno
        train.setdefault(category, []).append((name, lineno))
    return SplitList(path, hashlib.sha256(raw).hexdigest(), train)


def _resolve(name: str, category: str, by_id: dict[str, ImageRecord]) -> ImageRecord | None:
    """The record a listed name means: an id relative to the root, or to the category folder."""
    clean = name.lstrip("./").replace("\\", "/")
    return by_id.get(clean) or by_id.get(f"{category}/{clean}")


def check_list(split_list: SplitList, categories: Sequence[str], records_of: dict[str, list[ImageRecord]]
               ) -> list[str]:
    """Every problem of a list against a dataset: unknown categories, images the dataset does not have.

    records_of: category -> that category's records (only the categories a sweep uses need be given;
    categories the list names but the dataset lacks are problems).
    """
    problems = []
    have = set(categories)
    for category, names in split_list.train.items():
        if category not in have:
            line = names[0][1]
            problems.append(f"{split_list.path}: line {line}: category {category!r} is not in the dataset "
                            f"(allowed: {', '.join(sorted(have)) or '(none)'})")
            continue
        if category not in records_of:
            continue
        by_id = {r.image_id: r for r in records_of[category]}
        for name, line in names:
            if _resolve(name, category, by_id) is None:
                problems.append(f"{split_list.path}: line {line}: {name!r} is not an image of category "
                                f"{category!r} of the dataset")
    return problems


def split_from_list(
    records: list[ImageRecord], split_list: SplitList, category: str, *, overlap: bool = False,
    pool_order: str = "sorted", ratio: float | None = None, count: int | None = None,
) -> Split:
    """The split a list defines for one category (see the module docstring)."""
    where = f"{split_list.path}"
    names = split_list.train.get(category)
    if not names:
        raise DatasetError(f"{where}: lists no training image of category {category!r}")
    by_id = {r.image_id: r for r in records}
    listed: list[ImageRecord] = []
    for name, line in names:
        rec = _resolve(name, category, by_id)
        if rec is None:
            raise DatasetError(f"{where}: line {line}: {name!r} is not an image of category {category!r}")
        listed.append(rec)
    if len({r.image_id for r in listed}) != len(listed):
        raise DatasetError(f"{where}: category {category!r}: two lines name the same image")
    ids = {r.image_id for r in listed}
    train_normal = [r for r in listed if r.split == "train"]
    injected = [r for r in listed if r.split != "train"]
    if not train_normal and not any(r.label == 0 for r in listed):
        raise DatasetError(f"{where}: category {category!r}: the list holds no normal image")
    test = sorted((r for r in records if r.split == "test" and (overlap or r.image_id not in ids)),
                  key=lambda r: r.image_id)
    # the list's order, or sorted by id; an injected image joins the pool as a training image and
    # keeps its true label (read for diagnostics only)
    pool = sorted(listed, key=lambda r: r.image_id) if pool_order == "sorted" else list(listed)
    pool = [replace(r, split="train") for r in pool]
    n_normal = sum(1 for r in listed if r.label == 0)
    n_anomalous = len(listed) - n_normal
    n_injected_normal = sum(1 for r in injected if r.label == 0)
    return Split(
        train=pool,
        test=test,
        injected_ids=sorted(r.image_id for r in injected),
        n_train_normal=len(train_normal),
        n_injected=len(injected),
        n_test_normal=sum(1 for r in test if r.label == 0),
        n_test_anomalous=sum(1 for r in test if r.label == 1),
        requested_ratio=ratio,
        requested_count=count,
        achieved_ratio=n_anomalous / n_normal if n_normal else float("nan"),
        shortfall_applied=None,
        n_injected_normal=n_injected_normal,
        source="list",
        ratio_of="normal",
    )


def split_from_records(records: list[ImageRecord], *, pool_order: str = "sorted") -> Split:
    """A dataset's own noisy split (its training records include anomalous images, e.g. Real-IAD's
    FUIAD JSON): the pool is every training record, the injected images are its anomalous ones, and
    the test set is the dataset's (overlap does not apply: nothing is drawn from it)."""
    train = [r for r in records if r.split == "train"]
    if pool_order == "sorted":
        train = sorted(train, key=lambda r: r.image_id)
    test = sorted((r for r in records if r.split == "test"), key=lambda r: r.image_id)
    injected = [r for r in train if r.label != 0]
    n_normal = len(train) - len(injected)
    return Split(
        train=train,
        test=test,
        injected_ids=sorted(r.image_id for r in injected),
        n_train_normal=n_normal,
        n_injected=len(injected),
        n_test_normal=sum(1 for r in test if r.label == 0),
        n_test_anomalous=sum(1 for r in test if r.label == 1),
        requested_ratio=None,
        requested_count=None,
        achieved_ratio=len(injected) / n_normal if n_normal else float("nan"),
        shortfall_applied=None,
        source="dataset",
    )


def split_rows(split: Split) -> list[dict[str, object]]:
    """A cell's split in our list form: one row per image it used (train first, then test)."""
    injected = set(split.injected_ids)
    rows = [{"path": r.image_id, "category": r.category, "role": "train", "label": int(r.label),
             "injected": int(r.image_id in injected)} for r in split.train]
    rows += [{"path": r.image_id, "category": r.category, "role": "test", "label": int(r.label),
              "injected": int(r.image_id in injected)} for r in split.test]
    return rows


def rows_to_csv(rows: Iterable[dict[str, object]], columns: Sequence[str] = OUR_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
