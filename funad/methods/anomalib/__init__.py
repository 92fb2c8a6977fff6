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

from typing import Any

from funad.methods.anomalib.catalogue import FACTS, AnomalibError, Facts, facts, installed_models
from funad.methods.anomalib.method import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    METHODS,
    AnomalibMethod,
    AnomalibSettings,
    method_name,
)

#: the sweep file's entry for anomalib's models: `anomalib: {model: [Padim, Stfpm], epochs: 10, ...}`
FAMILY = "anomalib"
#: how to get the models
EXTRA_HINT = "pip install 'funad-bench[anomalib]' (anomalib>=2.7,<2.8)"


def expand_family(settings: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The family entry -> one (method name, settings) per listed model, in the order given.

    `model` names anomalib's classes (case-insensitive: `Padim`, `padim`); the other settings go to
    every member, except `epochs` for a model that does not train (one pass: the setting is for the
    trained members of the list). FamilyError (key "model") names what is wrong and what is allowed."""
    from funad.methods import FamilyError

    installed = installed_models()
    if not installed:
        raise FamilyError("model", f"anomalib's models need the optional extra: {EXTRA_HINT}")
    given = settings.pop("model", None)
    if given is None:
        raise FamilyError("model", f"name the model(s) (allowed: {', '.join(installed)})")
    models = given if isinstance(given, list) else [given]
    by_lower = {m.lower(): m for m in installed}
    out: list[tuple[str, dict[str, Any]]] = []
    for m in models:
        model = by_lower.get(str(m).lower())
        if model is None:
            raise FamilyError("model", f"unknown anomalib model {m!r} (allowed: {', '.join(installed)})")
        name = method_name(model)
        if any(name == n for n, _ in out):
            raise FamilyError("model", f"{model} is listed twice (allowed: each model once)")
        member = dict(settings)
        if not facts(model).trains:
            member.pop("epochs", None)
        out.append((name, member))
    return out


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
    "EXTRA_HINT",
    "FAMILY",
    "Facts",
    "expand_family",
    "installed_models",
    "method_name",
    "register_installed",
]
