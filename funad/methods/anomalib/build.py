"""Constructing one anomalib model from our settings: its constructor arguments, its pre-processor, and
where its pretrained parts come from (imports anomalib; called inside `runner.scratch`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import timm

from funad.features.backbone import BackboneConfig, feature_dim, is_vit, resolved_mean_std
from funad.methods.anomalib.backbone import (
    WeightsSource,
    check_cnn,
    feature_channels,
    layer_indices,
    layer_names,
    pretrained_weights,
)
from funad.methods.anomalib.catalogue import AnomalibError, facts, model_class, signature
from funad.methods.anomalib.method import AnomalibSettings, own_backbone, protocol_backbone

#: a model's default layers where its constructor's default is None (Glass picks these itself)
_DEFAULT_LAYERS = {"Glass": ("layer2", "layer3")}
#: backbones for which anomalib's PaDiM has the paper's n_features
_PADIM_N_FEATURES = ("resnet18", "wide_resnet50_2")


def _refusal(model: str):
    def refuse(what: str) -> str:
        return (f"anomalib model {model} asked for {what}, which is not here (nothing is downloaded): "
                "use backbone: protocol where the model takes any timm CNN, or give weights: a local "
                "weights file of its backbone")
    return refuse


def protocol_args(model: str, cfg: BackboneConfig, model_args: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that put the cell's backbone into the model: `backbone`, and `layers` (or
    `layer`): the cell's layers if it sets them, else the model's own default layers at the same
    feature_info indices of our backbone. Sizes that follow from the backbone (PaDiM's n_features,
    FRE's input_dim) are derived unless model_args gives them (model_args win over these)."""
    check_cnn(cfg, model)
    kind, sig = facts(model).backbone, signature(model)
    args: dict[str, Any] = {"backbone": cfg.name}
    if "pre_trained" in sig:
        args["pre_trained"] = True
    if kind == "cnn0":
        return args
    key = "layers" if kind == "cnn" else "layer"
    if cfg.layers is not None:
        indices = tuple(cfg.layers)
    else:
        default = sig.get(key)
        if default is None:
            own = _DEFAULT_LAYERS.get(model)
        else:
            own = (default,) if kind == "cnn1" else tuple(default)
        indices = layer_indices(str(sig["backbone"]), list(own or ()))
    if kind == "cnn1" and len(indices) != 1:
        raise AnomalibError(f"anomalib model {model} takes one feature layer; the backbone setting gives "
                            f"layers {list(indices)} (set one layer, e.g. layers: [{indices[-1]}])")
    names = layer_names(cfg, indices)
    args[key] = names if kind == "cnn" else names[0]
    if model == "Padim" and cfg.name not in _PADIM_N_FEATURES:
        # PaDiM keeps a random subset of n_features channels; anomalib knows the paper's counts only for
        # resnet18 (100) and wide_resnet50_2 (550): on another backbone every channel is kept
        args["n_features"] = feature_channels(cfg.name, names)
    if model == "Fre":
        # FRE's autoencoder takes the pooled map flattened: its input_dim (65536 = resnet50 layer3 at
        # 256 px) follows from our backbone, layer and crop
        gh, gw, chs = feature_dim(cfg.model_copy(update={"layers": indices}))
        k = int(model_args.get("pooling_kernel_size", sig["pooling_kernel_size"]))
        args["input_dim"] = chs * (gh // k) * (gw // k)
    return args


def _sources(model: str, s: AnomalibSettings, cfg: BackboneConfig) -> list[WeightsSource]:
    if protocol_backbone(model, s):
        return [WeightsSource(cfg.name, cfg)]
    if s.weights is None or facts(model).pretrained != "timm":
        return []
    name = own_backbone(model, s).split(".", 1)[0]
    if is_vit(name):  # built at its native size, as anomalib builds it (the same position embeddings)
        side = int(timm.get_pretrained_cfg(name).input_size[-1])
        return [WeightsSource(name, BackboneConfig(name=name, weights=s.weights, resize=side, crop=side))]
    return [WeightsSource(name, BackboneConfig(name=name, weights=s.weights))]


@contextmanager
def offline(model: str, s: AnomalibSettings, cfg: BackboneConfig, root: Path) -> Iterator[None]:
    """Pretrained requests served from our weights (or refused), and `pretrained_dir` as anomalib's
    pre_trained cache (a link inside the scratch folder `root`, whose XDG_CACHE_HOME is root/cache)."""
    if s.pretrained_dir is not None:
        cache = root / "cache" / "anomalib"
        cache.mkdir(parents=True, exist_ok=True)
        target = Path(s.pretrained_dir).expanduser().resolve()
        (cache / "pre_trained").symlink_to(target, target_is_directory=True)
    torchvision_file = facts(model).pretrained == "torchvision" and s.weights not in (None, "hub")
    url_file = s.weights if torchvision_file else None
    with pretrained_weights(_sources(model, s, cfg), _refusal(model), url_file=url_file):
        yield


def _pre_processor(model: str, cls: type, s: AnomalibSettings, cfg: BackboneConfig) -> Any:
    """The model's own pre-processor at our crop size; our backbone's mean/std where it is ours."""
    from torchvision.transforms.v2 import CenterCrop, Compose, Normalize

    try:
        pre = cls.configure_pre_processor(image_size=(cfg.crop, cfg.crop))
    except TypeError:  # a model whose pre-processor has a size of its own
        pre = cls.configure_pre_processor()
    except ValueError as e:  # MH-PatchCore: a fixed 224 px centre crop
        raise AnomalibError(f"anomalib model {model} cannot take the protocol's {cfg.crop} px crops: "
                            f"{e}") from e
    steps = list(pre.transform.transforms) if pre is not None and isinstance(pre.transform, Compose) else []
    for step in steps:
        if isinstance(step, CenterCrop) and tuple(step.size) != (cfg.crop, cfg.crop):
            # its maps would cover only the middle of our crop, not the region our masks cover
            raise AnomalibError(f"anomalib model {model} centre-crops {tuple(step.size)} px out of the "
                                f"protocol's {cfg.crop} px crops; set the protocol's crop to {step.size[0]}")
    if protocol_backbone(model, s) and pre is not None and isinstance(pre.transform, Compose):
        mean, std = resolved_mean_std(cfg)
        pre.transform = Compose([Normalize(mean=list(mean), std=list(std)) if isinstance(t, Normalize) else t
                                 for t in pre.transform.transforms])
        from anomalib.pre_processing.utils.transform import get_exportable_transform

        pre.export_transform = get_exportable_transform(pre.transform)
    return pre


def construct(model: str, s: AnomalibSettings, cfg: BackboneConfig, seed: int) -> Any:
    """The anomalib LightningModule, seeded (its random layers are the same for a seed)."""
    cls = model_class(model)
    args = dict(s.model_args)
    if protocol_backbone(model, s):
        args = {**protocol_args(model, cfg, s.model_args), **s.model_args}
    pl.seed_everything(seed, workers=True, verbose=False)
    return cls(**args, pre_processor=_pre_processor(model, cls, s, cfg), post_processor=False,
               evaluator=False, visualizer=False)
