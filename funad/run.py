"""One cell of the benchmark, end to end, with no Ray and no harness: split -> features -> fit ->
score -> metrics. The harness's trials call this; so can a notebook:

    from funad.run import CellConfig, run_cell
    cfg = CellConfig.build(dataset={"kind": "synthetic"}, category="brick",
                           backbone={"name": "tf_efficientnet_lite0", "weights": "bundled"},
                           method="patchcore", split={"ratio": 0.1})
    out = run_cell(cfg, feature_cache=Path("/tmp/feats"))
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

from funad.data.contamination import SplitRule
from funad.features import BackboneConfig
from funad.methods.base import MethodSettings, unmet_split_needs
from rundir import METRIC_KEYS

PICKS = ("best", "median", "worst")


@dataclass(frozen=True)
class CellConfig:
    """One cell, typed and validated: everything that can change its result, plus two run knobs.

    dataset:  {"kind": ..., "root": str | None, **loader options}
    backbone: the backbone and its preprocessing (funad.features.BackboneConfig)
    method / settings: the method's name and its validated Settings instance (defaults filled)
    split:    the contamination rule (funad.data.contamination.SplitRule)
    eval_every, n_map_examples: run knobs that do not change results (not part of the cell id)

    `CellConfig.build` makes one from plain values (a notebook, a script); the harness builds them
    from the sweep file, each part validated once by its own type.
    """

    dataset: dict[str, Any]
    category: str
    backbone: BackboneConfig
    method: str
    settings: MethodSettings
    split: SplitRule = field(default_factory=lambda: SplitRule(ratio=0.0))
    seed: int = 0
    eval_every: int = 0
    n_map_examples: int = 2

    def __post_init__(self) -> None:
        unmet = unmet_split_needs(self.settings, self.split)
        if unmet:
            need, got = unmet[0]
            raise ValueError(
                f"{self.method}: {need.because} needs the split's {need.field}={need.value!r}, got {got!r}"
            )

    @classmethod
    def build(
        cls,
        *,
        dataset: dict[str, Any],
        category: str,
        backbone: BackboneConfig | dict[str, Any],
        method: str,
        settings: MethodSettings | dict[str, Any] | None = None,
        split: SplitRule | dict[str, Any] | None = None,
        seed: int = 0,
        eval_every: int = 0,
        n_map_examples: int = 2,
    ) -> CellConfig:
        """From plain values: a backbone dict (None values = the backbone's defaults), the method's
        settings as given (its Settings model fills and checks them), the split rule's fields."""
        from funad.methods import method_class

        if not isinstance(backbone, BackboneConfig):
            backbone = BackboneConfig(**{k: v for k, v in backbone.items() if v is not None})
        if not isinstance(settings, MethodSettings):
            settings = method_class(method).Settings(**(settings or {}))
        if not isinstance(split, SplitRule):
            split = SplitRule(**({"ratio": 0.0} if split is None else split))
        return cls(dataset=dict(dataset), category=category, backbone=backbone, method=method,
                   settings=settings, split=split, seed=int(seed), eval_every=int(eval_every),
                   n_map_examples=int(n_map_examples))


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


def _labels(records: list[Any]) -> np.ndarray:
    return np.asarray([r.label for r in records], dtype=np.int8)


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
    from funad.methods import FitContext, method_class
    from funad.metrics import auroc, compute_metrics, metric_notes

    native.reset_usage()  # the row's funad_native names what THIS cell's searches used
    device = resolve_device(device)
    seed_everything(cfg.seed)
    dataset = open_dataset(cfg.dataset, data_cache)
    records = dataset.records(cfg.category)
    split, split_source = cfg.split.split(records, seed=cfg.seed, kind=cfg.dataset["kind"],
                                          category=cfg.category)
    pixel_level = bool(dataset.pixel_level)
    bcfg = cfg.backbone
    cache = Path(feature_cache)

    cls = method_class(cfg.method)
    t0 = time.perf_counter()
    masks = features.load_masks(split.test, bcfg) if pixel_level else None
    if cls.input_kind == "images":
        # the same split as every other method of the cell, as the protocol's crops (no backbone here)
        from funad.imageset import ImageSet

        train: Any = ImageSet(split.train, bcfg, _labels(split.train))
        test: Any = ImageSet(split.test, bcfg, _labels(split.test), masks)
    else:
        # both splits read the category's one pack (the features stage builds it from the same records)
        train = features.extract_features(split.train, bcfg, cache, within=records, device=device,
                                          progress=False)
        test = features.extract_features(split.test, bcfg, cache, within=records, device=device,
                                         progress=False)
        test.masks = masks
        for part, what in ((train, "training pool"), (test, "test set")):
            part.check_finite(what)  # NaN/inf features name their images here, not as NaN scores later
    # the labels come from the records: the pool's mark the injected images (diagnostics only), the test
    # labels are the truth
    feature_s = time.perf_counter() - t0

    method = cls(settings=cfg.settings)
    params = cfg.settings.model_dump(mode="json")

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
