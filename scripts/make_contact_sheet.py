"""Regenerate docs/img/synthetic_contact_sheet.png: one row per synthetic category, defects outlined in red.

Usage: python scripts/make_contact_sheet.py [--root DIR] [--out PNG]
Without --root the dataset is generated into a temporary folder (the data cache is left alone).
The sheet is a picture for the docs, which is why its drawing lives here and not in funad/data.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from funad.data.records import DatasetError
from funad.data.synthetic import CATEGORIES, DEFECT_TYPES, generate, list_pngs

REPO = Path(__file__).resolve().parents[1]


def _thumb(path: Path, size: int, mask_path: Path | None = None) -> Image.Image:
    img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    if mask_path is None:
        return img
    small = Image.open(mask_path).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    mask = np.asarray(small) > 127
    edge = ndimage.binary_dilation(mask, iterations=1) & ~mask  # outside, so the defect stays visible
    arr = np.asarray(img).copy()
    arr[edge] = (255, 0, 0)
    return Image.fromarray(arr)


def make_contact_sheet(
    root: Path, out_png: Path, *, thumb: int = 112, n_train: int = 2, n_good: int = 2, n_defect: int = 2
) -> Path:
    """One row per category: train goods, test goods, then each defect type with its mask outline in red.

    For eyeballing realism (do defects look like surface defects, do masks fit), not for metrics.
    """
    root = Path(root)
    cats = sorted(c for c in CATEGORIES if (root / c / "train").is_dir())
    if not cats:
        raise DatasetError(f"{root}: no synthetic categories to show")
    label_h, label_w, gap = 16, 64, 4
    cols: list[str] = ["train"] * n_train + ["test good"] * n_good
    for d in DEFECT_TYPES:
        cols += [d] * n_defect
    width = label_w + len(cols) * (thumb + gap)
    height = label_h + len(cats) * (thumb + gap)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(cols):
        if j == 0 or cols[j - 1] != name:
            draw.text((label_w + j * (thumb + gap) + 2, 2), name, fill=(0, 0, 0))
    for i, cat in enumerate(cats):
        y = label_h + i * (thumb + gap)
        draw.text((2, y + thumb // 2 - 6), cat, fill=(0, 0, 0))
        base = root / cat
        cells: list[tuple[Path, Path | None]] = []
        cells += [(p, None) for p in list_pngs(base / "train" / "good")[:n_train]]
        cells += [(p, None) for p in list_pngs(base / "test" / "good")[:n_good]]
        for d in DEFECT_TYPES:
            for p in list_pngs(base / "test" / d)[:n_defect]:
                cells.append((p, base / "ground_truth" / d / f"{p.stem}_mask.png"))
        for j, (p, m) in enumerate(cells):
            sheet.paste(_thumb(p, thumb, m), (label_w + j * (thumb + gap), y))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, format="PNG", optimize=True)
    return out_png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="an existing synthetic tree to show")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "synthetic_contact_sheet.png")
    ap.add_argument("--thumb", type=int, default=112, help="thumbnail side in pixels")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "synthetic"
            t0 = time.perf_counter()
            generate(root)
            print(f"generated {root} in {time.perf_counter() - t0:.1f} s")
        out = make_contact_sheet(root, args.out, thumb=args.thumb)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
