"""The report gallery's maps/ rows: a cell's example images, anomaly maps and masks as PNG bytes.

The map is scaled by the cell's min/max over ALL its test maps (not per image), so one grey level
means the same score across a cell's examples.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def map_rows(cell_id: str, examples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """run_cell's map_examples -> maps/ rows."""
    rows = []
    for ex in examples:
        m = np.asarray(ex["map"], dtype=np.float32)
        lo, hi = float(ex["map_min"]), float(ex["map_max"])
        scaled = np.zeros_like(m) if hi <= lo else np.clip((m - lo) / (hi - lo), 0.0, 1.0)
        mask = None if ex["mask"] is None else np.asarray(ex["mask"], dtype=bool).astype(np.uint8) * 255
        rows.append(
            {
                "cell_id": cell_id,
                "image_id": ex["image_id"],
                "pick": ex["pick"],
                "label": int(ex["label"]),
                "score": float(ex["score"]),
                "image_png": png(np.asarray(ex["image"], dtype=np.uint8)),
                "map_png": png((scaled * 255.0 + 0.5).astype(np.uint8)),
                "mask_png": None if mask is None else png(mask),
            }
        )
    return rows
