"""anomalib's image models (Apache-2.0) as funad methods `anomalib.<model>`, for images (input kind "images").

Optional: the `anomalib` extra installs anomalib; without it nothing here imports it and no method is
registered. The modules, each with one job:

- catalogue: the installed models (read without importing anomalib), what each needs, argument checks;
- method:    the Settings and Method classes (one per model), the settings' checks;
- backbone:  our backbone setting (bundled, a local file) in anomalib's timm backbones, no hub;
- build:     one model's constructor arguments and pre-processor;
- runner:    Lightning training and prediction on in-memory ImageSets in a scratch folder.

docs/methods.md ("anomalib's models") has the table of models, their needs and backbones.
"""

from __future__ import annotations

from funad.methods.anomalib.catalogue import FACTS, AnomalibError, Facts, installed_models
from funad.methods.anomalib.method import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    METHODS,
    AnomalibMethod,
    AnomalibSettings,
    method_name,
)


def register_installed() -> list[str]:
    """Register a method per installed anomalib model (none without anomalib); their names."""
    from funad.methods import register

    for cls in METHODS.values():
        register(cls)
    return sorted(METHODS)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "FACTS",
    "METHODS",
    "AnomalibError",
    "AnomalibMethod",
    "AnomalibSettings",
    "Facts",
    "installed_models",
    "method_name",
    "register_installed",
]
