"""Our backbone setting inside anomalib's models, with no hub.

anomalib's models build their pretrained networks with `timm.create_model(name, pretrained=True, ...)`
(through its TimmFeatureExtractor or directly). While a model is constructed, `pretrained_weights`
replaces that one function: a request for pretrained weights is served from OUR weights (the bundled
EfficientNet-Lite0 ImageNet weights, a local weights file, or the hub only where the setting says
"hub"), loaded into the very module anomalib built, strictly on that module's keys. A request for any
other pretrained network is refused with a sentence that says what to provide. Requests with
pretrained=False (STFPM's student, a model's own random layers) pass through untouched, so each model
keeps its own split into pretrained and trained parts. torchvision's and torch.hub's URL downloads are
refused the same way.

Layers: our `layers` are timm feature_info indices (funad.features.backbone); anomalib names layers by module
("layer2"). The model's own default layers map to the same indices of our backbone (a ResNet's
"layer2" is index 2), so a model keeps its depth of features on any backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from funad.features.backbone import BackboneConfig, BackboneError, build_model, is_vit

#: classifier-head prefixes a full timm model has and a backbone-only weights file may lack
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_drop.")


@dataclass(frozen=True)
class WeightsSource:
    """Where a pretrained network comes from: `backbone` is the timm name it serves (its architecture
    part, before any '.tag'); `config` our backbone setting (weights: bundled, a file, hub or random)."""

    backbone: str
    config: BackboneConfig


def arch(name: str) -> str:
    return name.split(".", 1)[0]


@lru_cache(maxsize=32)
def _feature_info(name: str) -> tuple[tuple[str, int], ...]:
    try:
        with torch.device("meta"):
            model = timm.create_model(arch(name), pretrained=False, features_only=True)
    except Exception as e:  # noqa: BLE001 - timm: unknown model, or no features_only support
        raise BackboneError(f"backbone {name!r}: timm cannot build its feature levels: {e}") from e
    return tuple((info["module"], int(info["num_chs"])) for info in model.feature_info.info)


def feature_modules(name: str) -> tuple[str, ...]:
    """Module names of a timm CNN's feature levels (feature_info order), from a meta-device model."""
    return tuple(module for module, _ in _feature_info(name))


def feature_channels(name: str, modules: list[str]) -> int:
    """Channels of those feature levels together."""
    chs = dict(_feature_info(name))
    return sum(chs[m] for m in modules)


def layer_indices(backbone: str, layers: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """The feature_info indices of `layers` (module names) in timm's `backbone`."""
    names = feature_modules(backbone)
    missing = [lay for lay in layers if lay not in names]
    if missing:
        raise BackboneError(f"backbone {backbone}: layers {missing} are not feature levels "
                            f"(allowed: {', '.join(names)})")
    return tuple(names.index(lay) for lay in layers)


def layer_names(cfg: BackboneConfig, indices: tuple[int, ...]) -> list[str]:
    """Our backbone's module names at feature_info `indices` (refused with the allowed range)."""
    names = feature_modules(cfg.name)
    if not indices or max(indices) >= len(names):
        raise BackboneError(f"backbone {cfg.name}: layers {list(indices)} out of range; it has "
                            f"{len(names)} feature levels (0..{len(names) - 1}: {', '.join(names)})")
    return [names[i] for i in indices]


def check_cnn(cfg: BackboneConfig, model: str) -> None:
    if is_vit(cfg.name):
        raise BackboneError(f"anomalib model {model} takes a CNN backbone (timm features_only); "
                            f"{cfg.name} is a ViT")


def _source_state(cfg: BackboneConfig) -> dict[str, torch.Tensor]:
    """Our weights for cfg as a timm state dict without the classifier (backbone.build_model)."""
    return build_model(cfg).state_dict()


def load_into(module: nn.Module, cfg: BackboneConfig) -> None:
    """Load our weights into the timm module anomalib built (features_only or full), strictly on the
    module's keys: every key must be in our weights with its shape, except a classifier head (unused by
    a feature extractor, left as built). Our extra keys (layers past the deepest feature level, the
    head) are not needed."""
    source = _source_state(cfg)
    want = module.state_dict()
    missing = [k for k in want if k not in source and not k.startswith(_HEAD_PREFIXES)]
    shapes = [f"{k}: ours {tuple(source[k].shape)} vs model {tuple(v.shape)}"
              for k, v in want.items() if k in source and tuple(source[k].shape) != tuple(v.shape)]
    if missing or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing (first: {', '.join(missing[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
        raise BackboneError(f"weights {cfg.weights!r} of backbone {cfg.name} do not fit the network "
                            f"anomalib built: {'; '.join(parts)}")
    module.load_state_dict({k: source[k] for k in want if k in source}, strict=False)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A local weights file as the state dict torchvision asks its URL for (torch.load weights_only, or
    .safetensors)."""
    file = Path(path).expanduser()
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise BackboneError(f"{file}: cannot read as a weights file: {e}") from e


@contextmanager
def pretrained_weights(sources: list[WeightsSource], refuse: Callable[[str], str],
                       url_file: str | None = None) -> Iterator[None]:
    """While an anomalib model is built and run: timm's pretrained=True requests for a `sources`
    backbone load our weights; torchvision's URL requests get `url_file` when given; any other request
    raises BackboneError(refuse(what)). Not thread-safe (it swaps module attributes): one model runs at
    a time in a trial's process."""
    by_arch = {arch(s.backbone): s.config for s in sources}
    original = timm.create_model

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if not pretrained:
            return original(model_name, pretrained=False, **kwargs)
        cfg = by_arch.get(arch(model_name))
        if cfg is None:
            raise BackboneError(refuse(f"pretrained timm weights for {model_name!r}"))
        if cfg.weights_kind == "hub":  # the user asked for the hub (or its local cache) by name
            return original(model_name, pretrained=True, **kwargs)
        kwargs.pop("pretrained_cfg", None)
        module = original(model_name, pretrained=False, **kwargs)
        load_into(module, cfg)
        return module

    def no_url(url: str, *args: Any, **kwargs: Any) -> Any:
        if url_file is not None:
            return read_state_dict(url_file)
        raise BackboneError(refuse(f"weights from {url}"))

    import torch.hub

    saved_hub = torch.hub.load_state_dict_from_url
    timm.create_model = create_model
    torch.hub.load_state_dict_from_url = no_url
    patched_tv = _patch_torchvision(no_url)
    try:
        yield
    finally:
        timm.create_model = original
        torch.hub.load_state_dict_from_url = saved_hub
        for owner, value in patched_tv:
            owner.load_state_dict_from_url = value


def _patch_torchvision(replacement: Callable[..., Any]) -> list[tuple[Any, Any]]:
    """torchvision's weight enums import load_state_dict_from_url by name: swap it there too."""
    import torchvision.models._api as tv_api

    saved = [(tv_api, tv_api.load_state_dict_from_url)]
    tv_api.load_state_dict_from_url = replacement
    return saved
