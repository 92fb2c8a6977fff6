"""Metrics against scikit-learn and hand-computed AUPRO cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from funad.metrics import aupro, auroc, average_precision, compute_metrics, f1_max


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding creates many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0))
    assert f1_max(y, s) == pytest.approx(f1, abs=1e-12)


def test_single_class_gives_none() -> None:
    assert auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert average_precision([1, 1], [0.1, 0.2]) is None
    assert compute_metrics([0, 0], [0.1, 0.2])["image_auroc"] is None


def test_hand_computed_auroc_and_f1() -> None:
    # scores: neg .1 .4 ; pos .35 .8 -> pairs (pos>neg): .35>.1, .8>.1, .8>.4 = 3 of 4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # threshold .8 -> P=1 R=.5 F1=.667; threshold .35 -> P=2/3 R=1 F1=.8
    assert f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)


def test_aupro_one_region() -> None:
    # 1x4 image, region = first two pixels. Curve (FPR, PRO): (0,0) (0,.5) (.5,.5) (.5,1) (1,1):
    # area up to .3 = .3 * .5 -> normalised .5
    mask = np.array([[[1, 1, 0, 0]]], bool)
    amap = np.array([[[0.9, 0.4, 0.5, 0.1]]])
    assert aupro(mask, amap) == pytest.approx(0.5)


def test_aupro_two_regions_of_different_size_is_region_averaged() -> None:
    # regions A={0} (size 1) and B={2,3,4} (size 3); each region weighs 1/2, so A's pixel counts .5 and
    # each of B's pixels 1/6. After thresholds .9 and .8: PRO = .5 + 1/6 = 2/3 at FPR 0, and FPR reaches
    # .25 then .5 before B's other pixels. Area up to .3 = .3 * 2/3 -> normalised 2/3
    # (a pixel-pooled recall would give 2/4 instead).
    mask = np.array([[[1, 0, 1, 1, 1, 0, 0, 0]]], bool)
    amap = np.array([[[0.9, 0.5, 0.8, 0.2, 0.2, 0.3, 0.1, 0.05]]])
    assert aupro(mask, amap) == pytest.approx(2 / 3)


def test_aupro_with_an_all_normal_image() -> None:
    # the all-normal image adds 8 normal pixels (12 in all) and one high false positive (.95).
    # Curve: (0,0) (1/12,0) (1/12,.5) (1/12,2/3) (2/12,2/3) (3/12,2/3) (3/12,1) (4/12,1) ...
    # area up to .3 = 2/3 * 2/12 + 1 * (.3 - 3/12) = .161111 -> normalised .537037
    mask = np.zeros((2, 1, 8), bool)
    mask[0, 0] = [1, 0, 1, 1, 1, 0, 0, 0]
    amap = np.zeros((2, 1, 8))
    amap[0, 0] = [0.9, 0.5, 0.8, 0.2, 0.2, 0.3, 0.1, 0.05]
    amap[1, 0, 0] = 0.95
    expected = (2 / 3 * 2 / 12 + 1.0 * (0.3 - 3 / 12)) / 0.3
    assert aupro(mask, amap) == pytest.approx(expected)


def test_aupro_eight_connectivity_and_bounds() -> None:
    # (0,0) touches (1,1) only diagonally: with 8-connectivity {(0,0),(1,1),(1,2)} is ONE region of 3.
    # Detecting (0,0) alone: curve (0,0) (0,1/3) (1,1); at FPR .3 PRO = 1/3 + 2/3*.3 = .5333;
    # area = .3*(1/3+.5333)/2 -> normalised .43333 (4-connectivity would give two regions and .575).
    mask = np.zeros((1, 3, 3), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = True
    amap = np.zeros((1, 3, 3))
    amap[0, 0, 0] = 1.0
    assert aupro(mask, amap) == pytest.approx((1 / 3 + (1 / 3 + 2 / 3 * 0.3)) / 2)
    perfect = mask.astype(float)
    assert aupro(mask, perfect) == pytest.approx(1.0)
    assert aupro(np.zeros((1, 3, 3), bool), amap) is None


def test_aupro_matches_a_brute_force_threshold_sweep() -> None:
    """Independent check: evaluate PRO and FPR threshold by threshold with loops over regions."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 3:9] = True
    masks[0, 10:12, 10:15] = True
    masks[1, 5:13, 5:7] = True
    maps = np.round(rng.random((3, 16, 16)) + 0.6 * masks, 2)
    regions = []
    for i in range(3):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = ~masks
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = (maps[normal] >= t).mean()
        pro = np.mean([(maps[i][reg] >= t).mean() for i, reg in regions])
        pts.append((fpr, pro))
    x, y = np.array(pts).T
    area = 0.0
    for j in range(1, len(x)):
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        if x0 >= 0.3:
            break
        if x1 > 0.3:
            y1 = y0 + (y1 - y0) * (0.3 - x0) / (x1 - x0)
            x1 = 0.3
        area += (x1 - x0) * (y0 + y1) / 2
    assert aupro(masks, maps) == pytest.approx(area / 0.3, abs=1e-9)


def test_pixel_metrics_pool_all_pixels_and_match_sklearn() -> None:
    rng = np.random.default_rng(4)
    masks = rng.random((4, 8, 8)) > 0.8
    maps = rng.random((4, 8, 8)) + masks * 0.5
    out = compute_metrics([0, 1, 1, 1], [0.1, 0.5, 0.7, 0.9], masks, maps)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel().astype(np.float32)))
    assert out["pixel_ap"] == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel().astype(np.float32))
    )
    assert set(out) == {"image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max"}
    assert all(0.0 <= v <= 1.0 for v in out.values())


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="differ"):
        auroc([0, 1, 1], [0.1, 0.2])
