"""The checks every registered method must pass, built-in or plugin (the way timm tests every model).

`check_method(name)` fits and scores the method on tiny features made here (pixel-level data with
masks, and image-level data without), and checks what the harness relies on: the shapes, dtypes and
finiteness of `Scores`, anomalies scored above normals on an easy planted case, determinism for a fixed
seed, the declared diagnostics present and floats, a history of dicts, settings that round-trip through
their model, and a positive cost. A failure raises `ConformanceError` with the method's name and what broke
(explicit checks, not `assert`: they hold under `python -O` too).

A method whose defaults are expensive (FUN-AD trains 1500 epochs) declares `smoke_settings`: small
values for exactly this kind of run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from funad.features import FeatureSet
from funad.methods import FitContext, Method, create_method, method_class


class ConformanceError(Exception):
    """A registered method breaks one of the checks of `check_method` (the message names it and the check)."""


def _check(ok: object, message: str) -> None:
    """Raise ConformanceError(message) unless `ok` is true."""
    if not ok:
        raise ConformanceError(message)


#: the tiny problem: images, grid, channels, evaluation map size
N_TRAIN, N_NORMAL_TEST, N_ANOMALOUS_TEST, GRID, CHANNELS, MAP_SIZE = 12, 4, 4, 6, 16, 24


@dataclass(frozen=True)
class Tiny:
    train: FeatureSet
    test: FeatureSet


def tiny_features(seed: int = 0, pixel_level: bool = True, contaminated: bool = True) -> Tiny:
    """Normal patches share a few prototypes plus noise; anomalous test images have off-prototype
    patches in a 2x2 block (their mask); the pool holds one injected anomaly when `contaminated`."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0.0, 1.0, size=(4, CHANNELS))
    cells = rng.integers(0, len(protos), size=(GRID, GRID))

    def images(n: int, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
        patches = protos[cells][None] + rng.normal(0.0, 0.05, size=(n, GRID, GRID, CHANNELS))
        masks = np.zeros((n, MAP_SIZE, MAP_SIZE), dtype=bool)
        if anomalous:
            for i in range(n):
                r, c = rng.integers(0, GRID - 1, size=2)
                patches[i, r : r + 2, c : c + 2] += rng.normal(0.0, 3.0, size=(2, 2, CHANNELS))
                s = MAP_SIZE // GRID
                masks[i, r * s : (r + 2) * s, c * s : (c + 2) * s] = True
        return patches, masks

    def featureset(parts: list[tuple[np.ndarray, int]], prefix: str, masks: np.ndarray | None) -> FeatureSet:
        patches = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([np.full(len(p), lab, dtype=np.int8) for p, lab in parts])
        return FeatureSet(
            image_ids=[f"{prefix}/{i:03d}" for i in range(len(patches))],
            cls=patches.mean(axis=(1, 2)).astype(np.float16),
            patches=patches.astype(np.float16),
            labels=labels,
            masks=masks,
        )

    pool = [(images(N_TRAIN - int(contaminated), False)[0], 0)]
    if contaminated:
        pool.append((images(1, True)[0], 1))
    good, good_masks = images(N_NORMAL_TEST, False)
    bad, bad_masks = images(N_ANOMALOUS_TEST, True)
    train = featureset(pool, "train", None)
    test = featureset([(good, 0), (bad, 1)], "test",
                      np.concatenate([good_masks, bad_masks]) if pixel_level else None)
    return Tiny(train, test)


def _fit_score(name: str, data: Tiny, seed: int) -> tuple[Method, np.ndarray, np.ndarray | None]:
    cls = method_class(name)
    method = create_method(name, dict(getattr(cls, "smoke_settings", {}) or {}))
    ctx = FitContext(seed=seed, device="cpu", map_size=MAP_SIZE)
    method.fit(data.train, ctx)
    scores = method.score(data.test, ctx)
    return method, np.asarray(scores.image), None if scores.maps is None else np.asarray(scores.maps)


def check_method(name: str) -> None:
    """Run every check on the method registered as `name` (see the module docstring)."""
    cls = method_class(name)
    where = f"method {name!r}"
    settings = cls.Settings(**dict(getattr(cls, "smoke_settings", {}) or {}))
    _check(cls.Settings(**settings.model_dump()) == settings, f"{where}: settings do not round-trip")
    cost = cls.cost(settings)
    _check(isinstance(cost, float) and cost > 0 and math.isfinite(cost), f"{where}: cost() gave {cost!r}")

    for pixel_level in (True, False):
        data = tiny_features(seed=1, pixel_level=pixel_level)
        n = data.test.n
        method, image, maps = _fit_score(name, data, seed=3)
        _check(image.shape == (n,) and image.dtype == np.float32,
               f"{where}: image scores {image.shape} {image.dtype}, expected ({n},) float32")
        _check(np.isfinite(image).all(), f"{where}: non-finite image scores {image}")
        if maps is not None:
            _check(maps.shape == (n, MAP_SIZE, MAP_SIZE) and maps.dtype == np.float32,
                   f"{where}: maps {maps.shape} {maps.dtype}, expected ({n}, {MAP_SIZE}, {MAP_SIZE}) float32")
            _check(np.isfinite(maps).all(), f"{where}: non-finite maps")
        labels = data.test.labels
        _check(image[labels == 1].mean() > image[labels == 0].mean(),
               f"{where}: planted anomalies do not score above normals ({image})")
        for key in cls.diagnostic_names:
            _check(key in method.diagnostics, f"{where}: declared diagnostic {key!r} missing")
        floats = all(isinstance(v, float) for v in method.diagnostics.values())
        _check(floats, f"{where}: a diagnostic is not a float: {method.diagnostics}")
        _check(isinstance(method.history, list) and all(isinstance(h, dict) and "epoch" in h
                                                        for h in method.history), f"{where}: bad history")
        _, again, maps_again = _fit_score(name, data, seed=3)
        _check(np.array_equal(image, again), f"{where}: not deterministic for a fixed seed")
        _check((maps is None) == (maps_again is None) and (maps is None or np.array_equal(maps, maps_again)),
               f"{where}: maps not deterministic for a fixed seed")
