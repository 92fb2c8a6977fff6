"""The checks every registered method must pass, built-in or plugin (the way timm tests every model).

`check_method(name)` fits and scores the method on tiny features made here (pixel-level data with
masks, and image-level data without), and checks what the harness relies on: the shapes, dtypes and
finiteness of `Scores`, anomalies scored above normals on an easy planted case, determinism for a fixed
seed, the declared diagnostics present and floats, a history of dicts, settings that round-trip through
their model, and a positive cost. A failure raises `ConformanceError` with the method's name and what broke
(explicit checks, not `assert`: they hold under `python -O` too).

A method whose defaults are expensive (FUN-AD trains 1500 epochs) declares `smoke_settings`: small
values for exactly this kind of run.

An image method (`input_kind == "images"`) gets the same checks on a tiny image problem instead
(`tiny_images`: small PNG files written to a temporary folder, read back through the protocol's
preprocessing as an ImageSet).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
#: the tiny image problem: image side on disk, and the protocol's resize and crop for it
IMAGE_SIDE, IMAGE_RESIZE, IMAGE_CROP = 72, 72, 64


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


@dataclass(frozen=True)
class TinyImages:
    """The image methods' counterpart of Tiny (duck-typed: `.train`, `.test`, `.test.labels`).
    `folder`, when set, is the temporary folder holding the files: removed when this is dropped."""

    train: Any  # funad.imageset.ImageSet
    test: Any
    folder: tempfile.TemporaryDirectory | None = None


def texture_folder(root: Path) -> Path:
    """A DTD-like folder (images/<class>/*.jpg: three random textures in one class) for a tiny run of a
    model that draws its synthetic anomalies from texture images (anomalib's DRAEM, `model_args.dtd_dir`)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images" / "noise").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)).save(
            root / "images" / "noise" / f"t{i}.jpg")
    return root


def tiny_images(root: Path | None = None, seed: int = 0, pixel_level: bool = True, contaminated: bool = True,
                preprocessing: Any = None) -> TinyImages:
    """PNG files under `root` read back as ImageSets: normal images are one smooth colour pattern plus
    noise; anomalous test images (and the pool's one injected image when `contaminated`) carry a bright
    off-pattern square, which is their mask. `preprocessing`: a BackboneConfig (default: the bundled
    backbone at resize IMAGE_RESIZE, crop IMAGE_CROP). root None: a temporary folder, removed with the
    returned TinyImages."""
    from PIL import Image

    from funad.data.records import ImageRecord
    from funad.features import BackboneConfig, load_masks
    from funad.imageset import ImageSet

    folder = tempfile.TemporaryDirectory(prefix="funad-tiny-images-") if root is None else None
    root = Path(folder.name) if folder is not None else Path(root)
    cfg = preprocessing or BackboneConfig(resize=IMAGE_RESIZE, crop=IMAGE_CROP)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE] / IMAGE_SIDE
    base = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.5 + 0.3 * np.cos(5 * yy),
                     0.5 + 0.2 * np.sin(4 * (xx + yy))], axis=-1)

    def write(split: str, i: int, anomalous: bool) -> ImageRecord:
        img = base + rng.normal(0.0, 0.03, size=base.shape)
        mask_path = None
        if anomalous:
            side = IMAGE_SIDE // 4
            r, c = rng.integers(IMAGE_SIDE // 8, IMAGE_SIDE - side - IMAGE_SIDE // 8, size=2)
            img[r : r + side, c : c + side] = rng.uniform(0.0, 1.0, size=(side, side, 3))
            mask = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
            mask[r : r + side, c : c + side] = 255
            mask_path = root / split / f"{i:03d}_mask.png"
            Image.fromarray(mask).save(mask_path)
        path = root / split / f"{i:03d}.png"
        Image.fromarray(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)).save(path)
        return ImageRecord(image_id=f"{split}/{i:03d}.png", path=path, label=int(anomalous), split=split,
                           category="tiny", defect_type="blob" if anomalous else "good",
                           mask_path=mask_path if pixel_level else None)

    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    pool = [write("train", i, contaminated and i == N_TRAIN - 1) for i in range(N_TRAIN)]
    test = [write("test", i, i >= N_NORMAL_TEST) for i in range(N_NORMAL_TEST + N_ANOMALOUS_TEST)]

    def labels(records: list[ImageRecord]) -> np.ndarray:
        return np.array([r.label for r in records], dtype=np.int8)

    return TinyImages(
        train=ImageSet(records=pool, preprocessing=cfg, labels=labels(pool)),
        test=ImageSet(records=test, preprocessing=cfg, labels=labels(test),
                      masks=load_masks(test, cfg) if pixel_level else None),
        folder=folder,
    )


def _tiny(cls: type[Method], pixel_level: bool, preprocessing: Any = None) -> Tiny | TinyImages:
    """The tiny problem of the method's input kind."""
    if cls.input_kind == "images":
        return tiny_images(seed=1, pixel_level=pixel_level, preprocessing=preprocessing)
    return tiny_features(seed=1, pixel_level=pixel_level)


def _fit_score(name: str, data: Tiny | TinyImages, seed: int,
               settings: dict[str, Any]) -> tuple[Method, np.ndarray, np.ndarray | None]:
    method = create_method(name, settings)
    ctx = FitContext(seed=seed, device="cpu", map_size=MAP_SIZE)
    method.fit(data.train, ctx)
    scores = method.score(data.test, ctx)
    return method, np.asarray(scores.image), None if scores.maps is None else np.asarray(scores.maps)


def check_method(name: str, with_settings: dict[str, Any] | None = None, preprocessing: Any = None) -> None:
    """Run every check on the method registered as `name` (see the module docstring), with its
    smoke_settings, or `with_settings` (e.g. for a model that needs a local folder); image methods on
    tiny images under `preprocessing` (a BackboneConfig; default: tiny_images's)."""
    cls = method_class(name)
    where = f"method {name!r}"
    given = dict(getattr(cls, "smoke_settings", {}) or {}) if with_settings is None else dict(with_settings)
    settings = cls.Settings(**given)
    _check(cls.Settings(**settings.model_dump()) == settings, f"{where}: settings do not round-trip")
    cost = cls.cost(settings)
    _check(isinstance(cost, float) and cost > 0 and math.isfinite(cost), f"{where}: cost() gave {cost!r}")

    for pixel_level in (True, False):
        data = _tiny(cls, pixel_level, preprocessing)
        n = data.test.n
        method, image, maps = _fit_score(name, data, seed=3, settings=given)
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
        _, again, maps_again = _fit_score(name, data, seed=3, settings=given)
        _check(np.array_equal(image, again), f"{where}: not deterministic for a fixed seed")
        _check((maps is None) == (maps_again is None) and (maps is None or np.array_equal(maps, maps_again)),
               f"{where}: maps not deterministic for a fixed seed")
