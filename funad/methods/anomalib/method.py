"""anomalib's image models as funad methods: one method name per model (`anomalib.padim`, ...).

Each installed model gets a Method subclass and a Settings subclass made here at import (without
importing anomalib), with module-level names so they pickle into Ray workers. The model itself is
built inside `fit`:

- raw scores: the constructor gets post_processor=False (anomalib's PostProcessor would normalise
  scores and maps with thresholds fitted on validation data and threshold them), evaluator=False and
  visualizer=False; pred_score and anomaly_map come straight from the model's torch module.
- pre-processing: the model's own `configure_pre_processor` at the protocol's crop size (the crops are
  already that size, so its resize is the identity where the model allows our size); where our backbone
  replaces the model's, its Normalize takes our backbone's mean/std.
- backbone (setting `backbone`): "protocol" puts the cell's backbone (name, weights, layers) into the
  models that take any timm CNN; "model" keeps the model's own backbone, whose pretrained weights come
  from `weights` (a local file, or "hub").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from funad.methods.anomalib.catalogue import (
    PROTOCOL_KINDS,
    AnomalibError,
    check_args,
    facts,
    installed_models,
)
from funad.methods.base import FitContext, Method, MethodSettings, Scores

#: epochs of a trained model when the setting is not given (anomalib's examples use 10-200 and the papers
#: more: set `epochs` for a faithful run; 10 keeps a CPU cell in minutes)
DEFAULT_EPOCHS = 10
#: batch size when the setting is not given (anomalib's datamodules' default) and the model demands none
DEFAULT_BATCH_SIZE = 32
#: prefix of every anomalib method name
PREFIX = "anomalib."


def method_name(model: str) -> str:
    """The funad method name of an anomalib model: `Padim` -> `anomalib.padim`."""
    return PREFIX + model.lower()


class AnomalibSettings(MethodSettings):
    """Settings of every anomalib method (each model's subclass checks them against that model)."""

    anomalib_model: ClassVar[str] = ""

    epochs: int | None = Field(None, ge=1, description="trained models: epochs (None = DEFAULT_EPOCHS); "
                               "one-pass models: 1 or None")
    batch_size: int | None = Field(None, ge=1, description="None = the model's demand (EfficientAD: 1) or "
                                   "DEFAULT_BATCH_SIZE")
    model_args: dict[str, Any] = Field(default_factory=dict, description="passed to the model's constructor")
    backbone: Literal["protocol", "model"] = Field(
        "protocol", description="protocol: the cell's backbone in the models that take any timm CNN; "
        "model: the model's own backbone (model_args), pretrained from `weights`")
    weights: str | None = Field(None, description="backbone: model: a local weights file of the model's "
                                "pretrained network, or 'hub' (its hub cache)")
    pretrained_dir: str | None = Field(None, description="a local folder laid out like anomalib's "
                                       "pre_trained cache (EfficientAD's teacher, DSR's VQ model)")

    @model_validator(mode="after")
    def _check(self) -> AnomalibSettings:
        if self.anomalib_model:
            check_settings(self.anomalib_model, self)
        return self


def effective_epochs(model: str, settings: AnomalibSettings) -> int:
    """Epochs the Trainer runs: the setting (or DEFAULT_EPOCHS) for trained models, the model's own
    number of passes for the others."""
    if not facts(model).trains:
        return facts(model).passes
    return settings.epochs if settings.epochs is not None else DEFAULT_EPOCHS


def effective_batch_size(model: str, settings: AnomalibSettings) -> int:
    demand = facts(model).batch_size
    return settings.batch_size or demand or DEFAULT_BATCH_SIZE


def _refuse(model: str, what: str, how: str) -> AnomalibError:
    return AnomalibError(f"anomalib model {model} needs {what}, which is not here: {how}")


def protocol_backbone(model: str, settings: AnomalibSettings) -> bool:
    """True when the cell's backbone replaces the model's."""
    return settings.backbone == "protocol" and facts(model).backbone in PROTOCOL_KINDS


def check_settings(model: str, s: AnomalibSettings) -> None:
    """Everything checkable before a cell runs; raises AnomalibError with one sentence."""
    f = facts(model)
    if f.unsupported:
        raise AnomalibError(f"anomalib model {model} cannot run in this benchmark: {f.unsupported}")
    if not f.trains and s.epochs not in (None, 1):
        raise AnomalibError(f"anomalib model {model} makes one pass over the training pool (no optimiser); "
                            f"epochs must be 1 or left out, not {s.epochs}")
    if f.batch_size is not None and s.batch_size not in (None, f.batch_size):
        raise AnomalibError(f"anomalib model {model} demands batch_size {f.batch_size}, not {s.batch_size}")
    if s.model_args:
        check_args(model, s.model_args)
    own = {"backbone", "layers", "layer"} & set(s.model_args)
    if protocol_backbone(model, s) and own:
        raise AnomalibError(f"anomalib model {model}: model_args {sorted(own)} choose the model's own "
                            "backbone, but backbone is 'protocol' (the cell's backbone); set backbone: model "
                            "to use them")
    for need in f.needs:
        given = s.model_args.get(need.arg) if need.arg else getattr(s, need.setting or "")
        where = f"model_args.{need.arg}" if need.arg else str(need.setting)
        if given is None:
            raise _refuse(model, need.what, f"set {where} to {need.how}")
        if not Path(str(given)).expanduser().is_dir():
            raise AnomalibError(f"{given}: {where} of anomalib model {model} is not a folder ({need.what})")
    if s.weights is not None and protocol_backbone(model, s):
        raise AnomalibError(f"anomalib model {model}: weights is for backbone: model (the model's own "
                            "network); with backbone: protocol the cell's backbone brings its weights")
    if s.weights not in (None, "hub") and not Path(s.weights).expanduser().is_file():
        raise AnomalibError(f"{s.weights}: weights file of anomalib model {model} does not exist")
    wants_pretrained = f.pretrained in ("timm", "torchvision") and s.model_args.get("pre_trained", True)
    if wants_pretrained and not protocol_backbone(model, s) and s.weights is None:
        name = own_backbone(model, s)
        alt = " or backbone: protocol (the cell's backbone)" if f.backbone in PROTOCOL_KINDS else ""
        kind = f"torchvision {name!r}" if f.pretrained == "torchvision" else f"timm {name!r}"
        raise _refuse(model, f"pretrained {kind} weights from the hub",
                      f"set weights to a local weights file of {name} (a state dict, .pth or .safetensors), "
                      f"or weights: hub where its hub cache is present{alt}")


def own_backbone(model: str, s: AnomalibSettings) -> str:
    """The name of the model's own pretrained network (model_args or the constructor's default)."""
    f = facts(model)
    if f.backbone == "own":
        return {"Csflow": "efficientnet_b5"}.get(model, model)
    for arg in ("backbone", "encoder_name", "student_backbone", "rgb_backbone"):
        if arg in s.model_args:
            return str(s.model_args[arg])
    from funad.methods.anomalib.catalogue import signature

    sig = signature(model)
    for arg in ("backbone", "encoder_name", "student_backbone", "rgb_backbone"):
        if arg in sig:
            return str(sig[arg])
    return model


@dataclass
class AnomalibMethod(Method):
    """Base of the per-model methods (`anomalib_model` names the anomalib class)."""

    anomalib_model: ClassVar[str] = ""
    input_kind: ClassVar[str] = "images"
    Settings: ClassVar[type[MethodSettings]] = AnomalibSettings

    module: Any = field(default=None, init=False, repr=False)

    @classmethod
    def epochs(cls, settings: MethodSettings) -> int | None:
        assert isinstance(settings, AnomalibSettings)
        return effective_epochs(cls.anomalib_model, settings) if facts(cls.anomalib_model).trains else None

    @classmethod
    def cost(cls, settings: MethodSettings) -> float:
        assert isinstance(settings, AnomalibSettings)
        return float(effective_epochs(cls.anomalib_model, settings))

    def fit(self, train: Any, ctx: FitContext) -> None:
        from funad.features import BackboneError
        from funad.methods.anomalib import build, runner

        model, s = self.anomalib_model, self.settings
        assert isinstance(s, AnomalibSettings)
        with runner.scratch() as root, build.offline(model, s, train.preprocessing, root):
            try:
                self.module = build.construct(model, s, train.preprocessing, ctx.seed)
                self.history = runner.train(
                    self.module, runner.absolute(train), epochs=effective_epochs(model, s),
                    batch_size=effective_batch_size(model, s), seed=ctx.seed, device=ctx.device,
                    report=ctx.report if facts(model).trains else None, validate=facts(model).validate,
                    root=root)
            except (AnomalibError, BackboneError):  # our own refusals, as they are
                raise
            except Exception as e:
                raise RuntimeError(f"anomalib model {model} failed in fit: {type(e).__name__}: {e}") from e
        if not self.history:
            self.history = [{"epoch": 1, "iteration": 0}]

    def score(self, test: Any, ctx: FitContext) -> Scores:
        from funad.methods.anomalib import build, runner

        model, s = self.anomalib_model, self.settings
        assert isinstance(s, AnomalibSettings)
        if self.module is None:
            raise RuntimeError(f"anomalib model {model}: score() before fit()")
        with runner.scratch() as root, build.offline(model, s, test.preprocessing, root):
            try:
                image, maps = runner.predict(self.module, runner.absolute(test),
                                             batch_size=effective_batch_size(model, s), seed=ctx.seed,
                                             device=ctx.device, root=root)
            except Exception as e:
                raise RuntimeError(f"anomalib model {model} failed in score: {type(e).__name__}: {e}") from e
        if image.shape != (len(test),):
            raise RuntimeError(f"anomalib model {model} gave {image.shape[0]} image scores for "
                               f"{len(test)} images")
        return Scores(image=image, maps=None if maps is None else resize_maps(maps, ctx.map_size))


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """[N, h, w] -> [N, size, size] float32, bilinear (the model's map covers the whole crop)."""
    if maps.shape[1:] == (size, size):
        return np.ascontiguousarray(maps, dtype=np.float32)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].numpy().astype(np.float32)


def _smoke(model: str) -> dict[str, Any]:
    """Seconds-long settings for the conformance checks (funad.methods.conformance)."""
    out: dict[str, Any] = {"batch_size": 4}
    if facts(model).trains:
        # the fewest epochs at which the tiny problem's planted anomalies rank above its normals (measured:
        # STFPM and CFLOW 3; GANomaly and SuperSimpleNet not within 5, see tests/test_anomalib.py)
        out["epochs"] = {"Stfpm": 3, "Cflow": 3}.get(model, 1)
    if facts(model).batch_size is not None:
        out["batch_size"] = facts(model).batch_size
    # tiny-problem sizes: DFKDE's 16 PCA components need more than 12 images, CFLOW's 64-fibre batches
    # more than the 2x2 cells of a 64 px image's deepest map
    out["model_args"] = {"Dfkde": {"n_pca_components": 4}, "Cflow": {"fiber_batch_size": 8}}.get(model, {})
    return out


def _make(model: str) -> type[AnomalibMethod]:
    """The Settings and Method classes of one model, as attributes of this module (picklable)."""
    module = sys.modules[__name__]
    settings_name, method_name_ = f"{model}Settings", f"Anomalib{model}"
    settings_cls = type(settings_name, (AnomalibSettings,),
                        {"__module__": __name__, "__qualname__": settings_name, "anomalib_model": model})
    method_cls = type(method_name_, (AnomalibMethod,), {
        "__module__": __name__, "__qualname__": method_name_, "name": method_name(model),
        "anomalib_model": model, "Settings": settings_cls, "smoke_settings": _smoke(model)})
    setattr(module, settings_name, settings_cls)
    setattr(module, method_name_, method_cls)
    return method_cls


#: every installed model's method class, by method name (empty without anomalib)
METHODS: dict[str, type[AnomalibMethod]] = {method_name(m): _make(m) for m in installed_models()}
