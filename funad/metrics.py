"""Anomaly-detection metrics, exact (sorted-score) curves throughout.

Image level: AUROC, AP, F1-max on image scores (good = 0, anomalous = 1).
Pixel level: AUROC and AP over all pixels of all test images, pooled; AUPRO up to FPR 0.3.

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


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact area under the ROC curve; None when only one class is present."""
    y, s = _check(labels, scores)
    pos = int(y.sum())
    if pos == 0 or pos == y.size:
        return None
    tps, fps, _ = _curve(y, s)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / (y.size - pos)]
    return float(np.trapezoid(tpr, fpr))


def _precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision and recall at each distinct threshold (descending); None with a single class."""
    y, s = _check(labels, scores)
    pos = int(y.sum())
    if pos == 0 or pos == y.size:
        return None
    tps, fps, _ = _curve(y, s)
    return tps / (tps + fps), tps / pos


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
    n_regions = sum(len(c) for c in sizes)
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        return None
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
