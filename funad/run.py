"""One cell of the benchmark, end to end, with no Ray and no harness: split -> features -> fit ->
score -> metrics. The harness's trials call this; so can a notebook:

    from funad.run import CellConfig, run_cell
    out = run_cell(CellConfig(dataset={"kind": "synthetic"}, category="brick",
                              backbone={"name": "tf_efficientnet_lite0", "weights": "bundled"},
                              method="patchcore", params={}), feature_cache=Path("/tmp/feats"))
    out.metrics["image_auroc"]
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from funad.data.contamination import DEFAULTS as SPLIT_DEFAULTS
from funad.data.contamination import Split, contaminate
from funad.data.records import DatasetError, ImageRecord
from rundir import METRIC_KEYS

PICKS = ("best", "median", "worst")


@dataclass(frozen=True)
class CellConfig:
    """Plain data that defines one cell (everything that can change its result, plus run knobs).

    dataset:  {"kind": ..., "root": str | None, **loader options}
    backbone: BackboneConfig fields (None values mean "the backbone's default")
    params:   the method's settings as given; the method fills its defaults
    ratio / count: a contamination ratio (of what: ratio_of), or an absolute number of injected images
    source, ratio_of, pool_order, shortfall: the split rule (funad.data.contamination)
    min_test_anomalies: None = the contamination module's default
    split_list / split_list_sha256: a training list (funad.data.splits) instead of a drawn split; the
        sha256 of its bytes defines the cell (not the path, which differs between machines)
    """

    dataset: dict[str, Any]
    category: str
    backbone: dict[str, Any]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    ratio: float | None = 0.0
    count: int | None = None
    overlap: bool = False
    shortfall: str = SPLIT_DEFAULTS["shortfall"]
    seed: int = 0
    eval_every: int = 0
    n_map_examples: int = 2
    min_test_anomalies: int | None = None
    source: str = SPLIT_DEFAULTS["source"]
    ratio_of: str = SPLIT_DEFAULTS["ratio_of"]
    pool_order: str = SPLIT_DEFAULTS["pool_order"]
    split_list: str | None = None
    split_list_sha256: str | None = None


@dataclass
class CellOutcome:
    """Everything one cell produced; the harness turns it into Parquet rows.

    map_examples: dicts with image_id, pick (best|median|worst), label, score, image (uint8
    [S,S,3] crop), map (float32 [S,S] raw), mask (bool [S,S] or None), map_min / map_max (the
    cell's range over all test maps, for a consistent grey scale across the gallery).
    """

    metrics: dict[str, float | None]
    oracle: dict[str, float]
    split: Any
    scores: list[dict[str, Any]]
    history: list[dict[str, Any]]
    diagnostics: dict[str, float]
    params: dict[str, Any]
    timings: dict[str, float]
    device: str
    map_examples: list[dict[str, Any]] = field(default_factory=list)
    pixel_level: bool = True
    n_train_pool: int = 0
    #: where the split came from: "drawn", "dataset:<kind>" (a dataset's own noisy split, e.g. Real-IAD
    #: FUIAD) or "<list path> sha256:<hex>"
    split_source: str = "drawn"
    #: why a metric is null (metric key -> reason), and any all-zero masks (funad.metrics.metric_notes)
    metric_notes: dict[str, str] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a cell is reproducible (methods also seed from ctx.seed)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str | None) -> str:
    """None -> "cuda" when a GPU is visible, else "cpu"."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backbone_config(backbone: dict[str, Any]) -> Any:
    """BackboneConfig from a plain dict; None fields are left to the config's own defaults."""
    from funad.features import BackboneConfig

    return BackboneConfig(**{k: v for k, v in backbone.items() if v is not None})


def open_dataset(dataset: dict[str, Any], data_cache: Path | None = None) -> Any:
    """create_dataset from the cell's dataset dict; data_cache (if given) is where built-in sets live."""
    from funad.data import create_dataset

    opts = dict(dataset)
    kind = opts.pop("kind")
    root = opts.pop("root", None)
    return create_dataset(kind, root=root, data_cache=data_cache, **opts)


def load_crop(record: Any, bcfg: Any) -> np.ndarray:
    """uint8 RGB crop [crop, crop, 3] exactly as the backbone saw it (augmented copies included)."""
    from funad.features import load_crop as _load_crop

    return np.ascontiguousarray(_load_crop(record, bcfg), dtype=np.uint8)


def pick_examples(scores: np.ndarray, labels: np.ndarray, n: int) -> list[tuple[int, str]]:
    """(index, pick) for the report gallery: best / median / worst by score, n each, no repeats.

    Anomalous images are shown when the test set has any (best = highest score); an all-normal
    test set shows normal images instead.
    """
    if n <= 0 or len(scores) == 0:
        return []
    pool = np.flatnonzero(labels == 1)
    if pool.size == 0:
        pool = np.arange(len(scores))
    order = pool[np.argsort(-scores[pool], kind="stable")]
    mid = max(0, (len(order) - n) // 2)
    groups = {"best": order[:n], "median": order[mid : mid + n], "worst": order[::-1][:n]}
    seen: set[int] = set()
    out: list[tuple[int, str]] = []
    for pick in PICKS:
        for i in groups[pick]:
            if int(i) not in seen:
                seen.add(int(i))
                out.append((int(i), pick))
    return out


def make_split(cfg: CellConfig, records: list[ImageRecord]) -> tuple[Split, str]:
    """The cell's training pool and test set, and where they came from (see CellOutcome.split_source).

    A training list wins; a dataset that ships its own noisy training set (anomalous training
    records, e.g. a Real-IAD FUIAD split) is used as it is; otherwise the split is drawn.
    """
    from funad.data import splits

    kind = cfg.dataset["kind"]
    if cfg.split_list is not None:
        listed = splits.read_split_list(cfg.split_list)
        if cfg.split_list_sha256 is not None and listed.sha256 != cfg.split_list_sha256:
            raise DatasetError(f"{cfg.split_list}: the list changed since the sweep was planned "
                               f"(sha256 {listed.sha256[:12]}..., planned {cfg.split_list_sha256[:12]}...)")
        split = splits.split_from_list(records, listed, cfg.category, overlap=cfg.overlap,
                                       pool_order=cfg.pool_order, ratio=cfg.ratio, count=cfg.count)
        return split, listed.source
    if any(r.split == "train" and r.label != 0 for r in records):
        if (cfg.ratio or 0) != 0 or (cfg.count or 0) != 0:
            raise DatasetError(f"{kind}/{cfg.category}: this split already holds anomalous training "
                               "images (the dataset's own noisy training set); inject nothing more "
                               "(allowed: ratio 0 or count 0)")
        return splits.split_from_records(records, pool_order=cfg.pool_order), f"dataset:{kind}"
    extra: dict[str, Any] = {}
    if cfg.min_test_anomalies is not None:
        extra["min_test_anomalies"] = cfg.min_test_anomalies
    split = contaminate(
        records, ratio=cfg.ratio, count=cfg.count, seed=cfg.seed, overlap=cfg.overlap,
        shortfall=cfg.shortfall, key=f"{kind}/{cfg.category}", source=cfg.source, ratio_of=cfg.ratio_of,
        pool_order=cfg.pool_order, **extra,
    )
    return split, "drawn"


def run_cell(
    cfg: CellConfig,
    *,
    feature_cache: Path,
    data_cache: Path | None = None,
    device: str | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> CellOutcome:
    """Run one cell: dataset -> contamination split -> cached features -> fit -> score -> metrics."""
    from funad import features, native
    from funad.methods import FitContext, create_method
    from funad.metrics import auroc, compute_metrics, metric_notes

    native.reset_usage()  # the row's funad_native names what THIS cell's searches used
    device = resolve_device(device)
    seed_everything(cfg.seed)
    dataset = open_dataset(cfg.dataset, data_cache)
    records = dataset.records(cfg.category)
    split, split_source = make_split(cfg, records)
    pixel_level = bool(dataset.pixel_level)
    bcfg = backbone_config(cfg.backbone)
    cache = Path(feature_cache)

    t0 = time.perf_counter()
    # both splits read the category's one pack (the features stage builds it from the same records)
    train = features.extract_features(split.train, bcfg, cache, within=records, device=device, progress=False)
    test = features.extract_features(split.test, bcfg, cache, within=records, device=device, progress=False)
    # extract_features takes labels from the records: the pool's mark the injected images (diagnostics
    # only), the test labels are the truth.
    masks = features.load_masks(split.test, bcfg) if pixel_level else None
    test.masks = masks
    for part, what in ((train, "training pool"), (test, "test set")):
        part.check_finite(what)  # NaN/inf features name their images here, not as NaN scores later
    feature_s = time.perf_counter() - t0

    method = create_method(cfg.method, cfg.params)
    params = method.settings.model_dump(mode="json")

    def evaluate(m: Any) -> dict[str, float]:
        """Oracle-only test evaluation (image/pixel AUROC); never feeds the headline."""
        s = m.score(test, ctx)
        out = {"image_auroc": auroc(test.labels, s.image)}
        if pixel_level and s.maps is not None and masks is not None:
            out["pixel_auroc"] = auroc(masks.ravel(), np.asarray(s.maps, dtype=np.float32).ravel())
        return {k: v for k, v in out.items() if v is not None}

    ctx = FitContext(
        seed=cfg.seed,
        device=device,
        map_size=int(bcfg.crop),
        report=report,
        evaluate=evaluate if cfg.eval_every > 0 else None,
        eval_every=int(cfg.eval_every),
    )
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    method.fit(train, ctx)
    fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = method.score(test, ctx)
    image_scores = np.asarray(result.image, dtype=np.float64)
    maps = None if result.maps is None else np.asarray(result.maps, dtype=np.float32)
    px_masks, px_maps = (masks, maps) if pixel_level else (None, None)
    metrics = compute_metrics(test.labels, image_scores, px_masks, px_maps)
    notes = metric_notes(test.labels, px_masks, px_maps, image_ids=test.image_ids)
    eval_s = time.perf_counter() - t0

    scores = [
        {
            "image_id": r.image_id,
            "label": int(r.label),
            "score": float(s),
            "defect_type": r.defect_type,
        }
        for r, s in zip(split.test, image_scores, strict=True)
    ]
    examples = _map_examples(split.test, image_scores, test.labels, maps, masks, bcfg, cfg.n_map_examples)
    return CellOutcome(
        metrics={k: metrics.get(k) for k in METRIC_KEYS},
        oracle=dict(method.oracle),
        split=split,
        scores=scores,
        history=[dict(h) for h in method.history],
        diagnostics={k: float(v) for k, v in method.diagnostics.items()},
        params=params,
        timings={"feature_s": feature_s, "fit_s": fit_s, "eval_s": eval_s},
        device=device,
        map_examples=examples,
        pixel_level=pixel_level,
        n_train_pool=len(split.train),
        split_source=split_source,
        metric_notes=notes,
    )


def _map_examples(
    records: list[Any],
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    bcfg: Any,
    n: int,
) -> list[dict[str, Any]]:
    """A few test images with their maps for the gallery; empty when the method gives no maps."""
    if maps is None:
        return []
    lo, hi = float(np.min(maps)), float(np.max(maps))
    out = []
    for i, pick in pick_examples(scores, np.asarray(labels), n):
        out.append(
            {
                "image_id": records[i].image_id,
                "pick": pick,
                "label": int(labels[i]),
                "score": float(scores[i]),
                "image": load_crop(records[i], bcfg),
                "map": np.asarray(maps[i], dtype=np.float32),
                "mask": None if masks is None else np.asarray(masks[i], dtype=bool),
                "map_min": lo,
                "map_max": hi,
            }
        )
    return out
