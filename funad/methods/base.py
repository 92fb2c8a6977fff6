"""The small interface every method implements, and the context the runner hands it.

A method is fitted on the unlabelled (possibly contaminated) training pool's features and then
scores test features into image scores and anomaly maps. Nothing here knows about Ray.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from funad.features import FeatureSet

#: what a method reads: "features" (a FeatureSet from the shared cache) or "images" (a
#: funad.imageset.ImageSet: the same split part's crops, for methods that run their own network)
INPUT_KINDS: tuple[str, ...] = ("features", "images")


class SplitNeed(NamedTuple):
    """A contamination setting that some method settings only mean something with: `field` of the
    split rule (funad.data.contamination.SplitRule) must be `value`, `because` names the setting."""

    field: str
    value: Any
    because: str


class MethodSettings(BaseModel):
    """Base of every method's settings: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: settings added after the method's cells were first handed out ids: a cell id hashes them only
    #: away from their default, so every cell defined before one existed keeps its id
    ADDED_LATER: ClassVar[tuple[str, ...]] = ()

    def split_needs(self) -> tuple[SplitNeed, ...]:
        """The contamination settings these settings need (checked by the sweep's validation and by
        funad.run.CellConfig); none by default."""
        return ()


def unmet_split_needs(settings: MethodSettings, split: Any) -> list[tuple[SplitNeed, Any]]:
    """(need, the value `split` has) for each split need of `settings` that `split` does not meet;
    `split` is anything with the split rule's fields as attributes (a SplitRule, the sweep file's
    contamination section)."""
    got = [(need, getattr(split, need.field)) for need in settings.split_needs()]
    return [(need, value) for need, value in got if value != need.value]


class ReleasedSettings(MethodSettings):
    """Settings of a method whose authors' released code departs from its paper.

    The defaults follow the paper; each departure of the released code is a named setting, and
    `RELEASED` maps it to the value the released code runs with. `reference_quirks: true` sets every
    one of them to that value; an explicit other value for one of them contradicts it and is an
    error (not silently overridden).
    """

    #: setting -> the released code's value (what reference_quirks sets)
    RELEASED: ClassVar[dict[str, Any]] = {}

    reference_quirks: bool = Field(False, description="run every setting as the authors' released code does")

    @model_validator(mode="before")
    @classmethod
    def _apply_reference_quirks(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("reference_quirks"):
            data = dict(data)
            for name, released in cls.RELEASED.items():
                if name in data and data[name] != released:
                    raise ValueError(
                        f"reference_quirks=True contradicts {name}={data[name]!r} "
                        f"(the released code runs {name}={released!r})"
                    )
                data[name] = released
        return data


@dataclass
class Scores:
    """image: [N] float32 anomaly scores (higher = more anomalous).
    maps:  [N, S, S] float32 anomaly maps at the evaluation size S, or None (image-level only).
    """

    image: np.ndarray
    maps: np.ndarray | None


@dataclass
class FitContext:
    """What the runner gives a method besides the features.

    seed:      seeds every random choice, weight init included.
    device:    "cpu" or "cuda[:i]".
    map_size:  evaluation size S of anomaly maps (224 in the protocol).
    report:    called with a flat dict of numbers per epoch (live progress, e.g. tune.report).
    evaluate:  optional; called by iterative methods every `eval_every` epochs with the method
               itself, returns {"image_auroc": .., "pixel_auroc": ..} on the test set. Used ONLY for
               the oracle_* columns, never for the headline or for training decisions.
    eval_every: 0 = never.
    """

    seed: int = 0
    device: str = "cpu"
    map_size: int = 224
    report: Callable[[dict[str, Any]], None] | None = None
    evaluate: Callable[[Method], dict[str, float]] | None = None
    eval_every: int = 0


@dataclass
class Method(ABC):
    """Base class. Subclasses set `name` and `Settings`, and fill `history` / `diagnostics`."""

    settings: MethodSettings
    history: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, float] = field(default_factory=dict)
    #: best-on-test epoch values filled by iterative methods when ctx.evaluate is given
    oracle: dict[str, float] = field(default_factory=dict)

    name: ClassVar[str] = ""
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    #: names of end-of-training diagnostics this method emits (become diag_<name> columns)
    diagnostic_names: ClassVar[tuple[str, ...]] = ()
    #: settings small enough for a seconds-long check on tiny features (funad.methods.conformance)
    smoke_settings: ClassVar[dict[str, Any]] = {}
    #: one of INPUT_KINDS: fit/score get a FeatureSet ("features") or an ImageSet ("images")
    input_kind: ClassVar[str] = "features"

    @classmethod
    def cost(cls, settings: MethodSettings) -> float:
        """Relative run time of a cell with these settings (the sweep starts the costliest first)."""
        return 1.0

    @classmethod
    def epochs(cls, settings: MethodSettings) -> int | None:
        """How many per-epoch reports a fit sends (the sweep shows epoch k/E); None for one pass."""
        return None

    @abstractmethod
    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        """Fit on the training pool (an ImageSet when input_kind == "images"). train.labels may be read
        for diagnostics only."""

    @abstractmethod
    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        """Score test images: image scores and maps at ctx.map_size."""
