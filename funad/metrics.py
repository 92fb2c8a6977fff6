"""Anomaly-detection metrics, exact (sorted-score) curves throughout.

Image level: AUROC, AP, F1-max on image scores (good = 0, anomalous = 1).
Pixel level: AUROC and AP over all pixels of all test images, pooled; AUPRO up to FPR 0.3.
A metric whose labels hold one class only (no anomalous or no normal test image; no anomalous or no
normal pixel) is None, never a number; `metric_notes` says why, for the result row's `metric_notes`.

AUPRO (Bergmann et al., IJCV 2021), as implemented here:
- regions = 8-connected components of each ground-truth mask;
- PRO(t) = mean over ALL regions of all images of the fraction of the region with score >= t;
- FPR(t) = fraction of ALL normal pixels (mask == 0, in every test image, anomalous images' background
  included) with score >= t;
- the curve is integrated (trapezoid) over FPR in [0, 0.3], linearly interpolated at 0.3, and the
  integral is divided by 0.3, so a perfect detector scores 1.0 and a random one about 0.15.
It is computed exactly from one sort of the pooled pixels: each anomalous pixel carries the weight
1 / (|its region| * number of regions), so the cumulative weight at a threshold is PRO(t). No bins.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AUPRO_FPR_LIMIT = 0.3
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _curve(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None):
    """Cumulative (weighted) positives and negatives at each distinct threshold, descending.

    Returns (tps, fps, thresholds) where tps[i] / fps[i] count the positives / negatives with
    score >= thresholds[i]. Ties share one point, as in exact ROC/PR curves.
    """
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = labels[order].astype(np.float64)
    w = np.ones_like(y) if weights is None else weights[order].astype(np.float64)
    distinct = np.flatnonzero(np.diff(s)) if s.size > 1 else np.array([], dtype=np.int64)
    ends = np.r_[distinct, s.size - 1]
    tps = np.cumsum(y * w)[ends]
    fps = np.cumsum(1.0 - y)[ends]  # negatives are never weighted
    return tps, fps, s[ends]


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in size")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return (y > 0).astype(np.int8), s


def _missing_class(y: np.ndarray) -> int | None:
    """The class (0 normal, 1 anomalous) absent from binary labels, or None when both are present: the
    one rule for when a metric is undefined (null). No labels at all count as "no anomalous"."""
    pos = int(np.count_nonzero(y))
    if pos == 0:
        return 1
    return 0 if pos == np.size(y) else None


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact area under the ROC curve; None when only one class is present."""
    y, s = _check(labels, scores)
    if _missing_class(y) is not None:
        return None
    pos = int(y.sum())
    tps, fps, _ = _curve(y, s)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / (y.size - pos)]
    return float(np.trapezoid(tpr, fpr))


def _precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision and recall at each distinct threshold (descending); None with a single class."""
    y, s = _check(labels, scores)
    if _missing_class(y) is not None:
        return None
    tps, fps, _ = _curve(y, s)
    return tps / (tps + fps), tps / int(y.sum())


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (no interpolation); None without positives."""
    pr = _precision_recall(labels, scores)
    if pr is None:
        return None
    precision, recall = pr
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Best F1 over all thresholds (an operating-point-free summary)."""
    pr = _precision_recall(labels, scores)
    if pr is None:
        return None
    precision, recall = pr
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float | None:
    """Normalised area under the PRO curve up to `fpr_limit` (see the module docstring).

    masks: [N, H, W] bool ground truth; maps: [N, H, W] scores. None when there is no anomalous or
    no normal pixel.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"aupro: masks {masks.shape} and maps {maps.shape} must both be [N, H, W]")
    if not np.all(np.isfinite(maps)):
        raise ValueError("aupro: maps contain NaN or infinite values")
    weights = np.zeros(masks.shape, dtype=np.float64)
    sizes: list[np.ndarray] = []
    comps: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i in range(masks.shape[0]):
        if not masks[i].any():
            continue
        lab, n = ndimage.label(masks[i], structure=_EIGHT_CONNECTED)
        counts = np.bincount(lab.ravel(), minlength=n + 1)
        comps.append((i, lab, counts))
        sizes.append(counts[1:])
    if _missing_class(masks) is not None:  # no region, or no normal pixel
        return None
    n_regions = sum(len(c) for c in sizes)
    n_normal = int((~masks).sum())
    for i, lab, counts in comps:
        inv = np.zeros(counts.shape, dtype=np.float64)
        inv[1:] = 1.0 / (counts[1:] * n_regions)
        weights[i] = inv[lab]
    y = masks.ravel().astype(np.int8)
    pro, fp, _ = _curve(y, maps.ravel(), weights.ravel())
    fpr = np.r_[0.0, fp / n_normal]
    pro = np.r_[0.0, pro]
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a monotone-x polyline from x=0 to x=limit (linear interpolation at limit)."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < x.size:
        j = int(np.argmax(~keep))  # first point beyond the limit
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.trapezoid(ys, xs))


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    return {
        "image_auroc": auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1max": f1_max(labels, scores),
    }


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> dict[str, float | None]:
    """Pooled pixel AUROC / AP and AUPRO; maps are cast to float32 to bound memory on large sets."""
    m = np.asarray(masks).astype(bool)
    a = np.asarray(maps, dtype=np.float32)
    if m.shape != a.shape:
        raise ValueError(f"pixel metrics: masks {m.shape} and maps {a.shape} differ")
    flat_y, flat_s = m.ravel(), a.ravel()
    return {
        "pixel_auroc": auroc(flat_y, flat_s),
        "pixel_ap": average_precision(flat_y, flat_s),
        "aupro": aupro(m, a),
    }


METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max")
IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro")
#: why a metric is null, by level and the class its labels lack (_missing_class)
_ONE_CLASS_NOTES = {
    ("image", 1): "the test set has no anomalous image",
    ("image", 0): "the test set has no normal image",
    ("pixel", 1): "no test mask has an anomalous pixel",
    ("pixel", 0): "every test pixel is anomalous",
}
#: the notes key of the all-zero-mask remark (not a metric: the pixel metrics are still computed)
MASKS_NOTE = "masks"
_NAMED = 3


def metric_notes(
    labels: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    image_ids: list[str] | None = None,
) -> dict[str, str]:
    """Why compute_metrics (same arguments) leaves a metric null: metric key -> reason, for exactly the
    null ones. Plus, under MASKS_NOTE, anomalous test images whose mask is all zero at the evaluated
    crop (an empty mask file, or a defect outside the center crop): the pixel metrics count them as
    normal pixels and AUPRO has no region for them, which a reader of the numbers should know."""
    notes: dict[str, str] = {}
    y = np.asarray(labels).ravel() > 0
    missing = _missing_class(y)
    if missing is not None:
        notes.update(dict.fromkeys(IMAGE_METRICS, _ONE_CLASS_NOTES[("image", missing)]))
    if masks is None or maps is None:
        why = "image-level data: no ground-truth masks" if masks is None else "the method gives no maps"
        notes.update(dict.fromkeys(PIXEL_METRICS, why))
        return notes
    m = np.asarray(masks).astype(bool)
    missing = _missing_class(m)
    if missing is not None:
        notes.update(dict.fromkeys(PIXEL_METRICS, _ONE_CLASS_NOTES[("pixel", missing)]))
    empty = [i for i in np.flatnonzero(y) if not m[i].any()]
    if empty and missing is None:
        ids = [image_ids[i] if image_ids is not None else f"#{i}" for i in empty]
        shown = ", ".join(ids[:_NAMED]) + (f" and {len(ids) - _NAMED} more" if len(ids) > _NAMED else "")
        notes[MASKS_NOTE] = (f"{len(empty)} anomalous test image(s) with an all-zero mask at the evaluated "
                             f"crop ({shown}): their pixels count as normal and AUPRO has no region for them")
    return notes


def format_notes(notes: dict[str, str]) -> str | None:
    """One line for the `metric_notes` column: keys with the same reason grouped, e.g.
    "image_auroc, image_ap, image_f1max: the test set has no anomalous image"; None without notes."""
    grouped: dict[str, list[str]] = {}
    for key, why in notes.items():
        grouped.setdefault(why, []).append(key)
    return "; ".join(f"{', '.join(keys)}: {why}" for why, keys in grouped.items()) or None


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
) -> dict[str, float | None]:
    """All six metrics; the pixel ones are None when masks or maps are not given (image-level data)."""
    out: dict[str, float | None] = {name: None for name in METRIC_NAMES}
    out.update(image_metrics(labels, scores))
    if masks is not None and maps is not None:
        out.update(pixel_metrics(masks, maps))
    return out
