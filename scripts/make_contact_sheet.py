"""Regenerate docs/img/synthetic_contact_sheet.png: one row per synthetic category, defects outlined in red.

Usage: python scripts/make_contact_sheet.py [--root DIR] [--out PNG]
Without --root the dataset is generated into a temporary folder (the data cache is left alone).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from funad.data.synthetic import generate, make_contact_sheet

REPO = Path(__file__).resolve().parents[1]


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
