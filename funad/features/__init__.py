"""Frozen-backbone features: images in, a FeatureSet of cached fp16 backbone features out.

Layering: the modules form one stack, listed bottom to top in LAYERS, and each imports only modules
below it (tests/test_features_package.py parses the imports and fails on one that reaches up):

    featureset     FeatureSet and its row views (PackRows, TensorRows): the output type; imports nothing
                   from the package
    backbone       BackboneConfig (the one home of the backbone defaults), weights, timm models,
                   FeatureExtractor
    preprocessing  image and mask loading, seeded augmentation, resize and centre crop, normalisation
    cache          the on-disk cache (entries, packs, locks, prune) and every cache key
    extract        extract_features: preprocessing + backbone + cache -> FeatureSet; forward_count

This file re-exports the public names (below) and imports a module only when one of its names is
first used: `from funad.features import FeatureSet` (what every method does) stays free of torch and
timm, which `backbone` needs.
"""

from __future__ import annotations

import importlib
from typing import Any

#: the package's modules, bottom to top: a module may import only those before it
LAYERS: tuple[str, ...] = ("featureset", "backbone", "preprocessing", "cache", "extract")

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "FeatureSet": "featureset",
    "PackRows": "featureset",
    "TensorRows": "featureset",
    "float32_on": "featureset",
    "BUNDLED_BACKBONE": "backbone",
    "WEIGHT_KINDS": "backbone",
    "BackboneConfig": "backbone",
    "BackboneError": "backbone",
    "feature_dim": "backbone",
    "augment_params": "preprocessing",
    "load_crop": "preprocessing",
    "load_masks": "preprocessing",
    "preprocess": "preprocessing",
    "backbone_key": "cache",
    "entry_key": "cache",
    "prune_packs": "cache",
    "extract_features": "extract",
    "forward_count": "extract",
    "reset_forward_count": "extract",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
