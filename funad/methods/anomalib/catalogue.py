"""anomalib's image models: which are installed, what each needs, and which of our backbones it takes.

Nothing here imports anomalib: the installed models are read from the installed package's
`anomalib/models/image/__init__.py` (its `__all__`), so `funad.methods.available()` stays cheap. Only
`signature` imports the model class (to check `model_args` against its constructor).

`FACTS` holds what the source of anomalib 2.7 says about each model (docs/methods.md has the table):
- trains: a model trained for epochs (an optimiser), or one pass (memory bank / statistics, epochs 1).
- backbone: how our backbone setting enters it:
  "cnn"    the constructor's `backbone` is any timm CNN and `layers` a list of its module names;
  "cnn1"   the same with one `layer`;
  "cnn0"   any timm CNN, the model picks its layers itself;
  "named"  only a fixed list of backbones (by name), so only the model's own, with a weights file;
  "vit"    a timm ViT encoder (DINOv2 / DINOv3 / DINO): the model's own, with a weights file;
  "own"    a network of its own (no exchangeable backbone);
  "external" encoders outside timm (CLIP, a vision-language model, the hub).
- pretrained: what pretrained network the model's own configuration asks for ("timm", "torchvision",
  "file" (a file in anomalib's pre_trained cache), or None).
- needs: other inputs that are not here (a folder of images), with the model_args key or setting
  that provides them.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

#: constructor arguments the adapter sets itself (raw scores: no post-processing; no evaluator or
#: visualizer; the pre-processor is the model's own at our crop size)
RESERVED_ARGS: tuple[str, ...] = ("pre_processor", "post_processor", "evaluator", "visualizer")

#: kinds of backbone into which our backbone setting (the cell's `backbone`) goes
PROTOCOL_KINDS: tuple[str, ...] = ("cnn", "cnn1", "cnn0")


class AnomalibError(ValueError):
    """An anomalib model or setting that cannot be used here; the message says what to change."""


@dataclass(frozen=True)
class Need:
    """An input the model cannot run without: `what` it is, the `model_args` key (`arg`) or the
    setting (`setting`) that provides it, and `how` (what to put there)."""

    what: str
    how: str
    arg: str | None = None
    setting: str | None = None


@dataclass(frozen=True)
class Facts:
    trains: bool
    backbone: str
    pretrained: str | None = None
    needs: tuple[Need, ...] = ()
    #: run the validation hooks once on the pool after training (EfficientAD's map quantiles)
    validate: bool = False
    #: passes over the pool of a model that does not train (MH-PatchCore: PCA, covariance, memory bank)
    passes: int = 1
    #: a batch size the model demands (EfficientAD: 1), else None
    batch_size: int | None = None
    #: why the model cannot run in this benchmark at all (even with every setting given), else None
    unsupported: str | None = None


_DTD = Need("DTD texture images (its synthetic anomalies' source)",
            "a local folder of the Describable Textures Dataset's images (dtd/images/<class>/*.jpg)",
            arg="dtd_dir")
_PRETRAINED_DIR = ("a local folder laid out like anomalib's pre_trained cache (the setting pretrained_dir; "
                   "anomalib downloads it from its GitHub releases)")

FACTS: dict[str, Facts] = {
    "Padim": Facts(trains=False, backbone="cnn", pretrained="timm"),
    "Patchcore": Facts(trains=False, backbone="cnn", pretrained="timm"),
    "MHPatchcore": Facts(trains=False, backbone="cnn", pretrained="timm", passes=3),
    "Dfkde": Facts(trains=False, backbone="cnn", pretrained="timm"),
    "Dfm": Facts(trains=False, backbone="cnn1", pretrained="timm"),
    "Stfpm": Facts(trains=True, backbone="cnn", pretrained="timm"),
    # its decoder mirrors a ResNet (resnet18/34/50, wide_resnet50_2, ...): no other backbone
    "ReverseDistillation": Facts(trains=True, backbone="named", pretrained="timm"),
    "Cflow": Facts(trains=True, backbone="cnn", pretrained="timm"),
    "Supersimplenet": Facts(trains=True, backbone="cnn", pretrained="timm"),
    "Glass": Facts(trains=True, backbone="cnn", pretrained="timm"),
    "Fre": Facts(trains=True, backbone="cnn1", pretrained="timm"),
    "Patchflow": Facts(trains=True, backbone="cnn0", pretrained="timm"),
    "Fastflow": Facts(trains=True, backbone="named", pretrained="timm"),
    "Uflow": Facts(trains=True, backbone="named", pretrained="timm"),
    "Cfa": Facts(trains=True, backbone="named", pretrained="torchvision"),
    "UniNet": Facts(trains=True, backbone="named", pretrained="torchvision"),
    "Csflow": Facts(trains=True, backbone="own", pretrained="torchvision"),
    "Draem": Facts(trains=True, backbone="own", needs=(_DTD,)),
    "Ganomaly": Facts(trains=True, backbone="own"),
    "Dsr": Facts(trains=True, backbone="own", pretrained="file",
                 needs=(Need("its pretrained VQ model (dsr/vq_model_pretrained_128_4096.pckl)",
                             _PRETRAINED_DIR, setting="pretrained_dir"),)),
    "EfficientAd": Facts(
        trains=True, backbone="own", pretrained="file", validate=True, batch_size=1,
        needs=(Need("its pretrained teacher (efficientad_pretrained_weights/pretrained_teacher_<size>.pth)",
                    _PRETRAINED_DIR, setting="pretrained_dir"),
               Need("ImageNet images for its penalty loss (anomalib uses imagenette2)",
                    "a local folder of ImageNet or imagenette images in class subfolders (torchvision "
                    "ImageFolder layout)", arg="imagenet_dir"))),
    "AnomalyDINO": Facts(trains=False, backbone="vit", pretrained="timm"),
    "Rad": Facts(trains=False, backbone="vit", pretrained="timm"),
    "SuperADD": Facts(trains=False, backbone="vit", pretrained="timm"),
    "Dinomaly": Facts(trains=True, backbone="vit", pretrained="timm"),
    "InpFormer": Facts(trains=True, backbone="vit", pretrained="timm"),
    "FoundAD": Facts(trains=True, backbone="vit", pretrained="timm"),
    "GeneralAD": Facts(trains=True, backbone="vit", pretrained="timm"),
    "L2BT": Facts(trains=True, backbone="vit", pretrained="timm"),
    "CFM": Facts(trains=True, backbone="vit", pretrained="timm",
                 unsupported="CFM maps between RGB and 3D point-cloud features (MVTec 3D); our datasets "
                             "are images"),
    "WinClip": Facts(trains=False, backbone="external",
                     unsupported="WinCLIP is zero-/few-shot and needs open_clip (not installed) with CLIP "
                                 "weights from the hub, and a class name prompt"),
    "VlmAd": Facts(trains=False, backbone="external",
                   unsupported="VLM-AD asks a vision-language model (Ollama, OpenAI or a hub LLaVA) per "
                               "image: a server or hub weights, no training, no anomaly maps"),
    "AnomalyVFM": Facts(trains=False, backbone="external",
                        unsupported="AnomalyVFM is zero-shot and loads its weights with hf_hub_download"),
}


def _package_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("anomalib")  # finds the package without importing it
    except (ImportError, ValueError):  # an import hook that blocks it: as not installed
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def installed_models() -> tuple[str, ...]:
    """The image models of the installed anomalib (its models/image `__all__`), () when not installed."""
    root = _package_dir()
    if root is None:
        return ()
    init = root / "models" / "image" / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"), filename=str(init))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return tuple(sorted(str(name) for name in ast.literal_eval(node.value)))
    raise AnomalibError(f"{init}: no __all__ listing anomalib's image models (an anomalib this adapter "
                        "does not know; install the anomalib extra: anomalib>=2.7,<2.8)")


def facts(model: str) -> Facts:
    """The model's facts; a model of a newer anomalib that FACTS does not know runs as trained, with its
    own backbone, and is refused if it asks for pretrained weights (the timm guard)."""
    if model not in installed_models():
        raise AnomalibError(f"unknown anomalib model {model!r} (allowed: {', '.join(installed_models())})")
    return FACTS.get(model, Facts(trains=True, backbone="own"))


def model_class(model: str) -> type:
    """The anomalib class (imports anomalib: seconds)."""
    facts(model)
    import warnings

    with warnings.catch_warnings():  # its own deprecations (timm.models.layers, its dinov2 copy): not ours
        warnings.simplefilter("ignore", FutureWarning)
        import anomalib.models.image as image_models

    return getattr(image_models, model)


@lru_cache(maxsize=64)
def signature(model: str) -> dict[str, Any]:
    """Constructor argument -> default (inspect.Parameter.empty when required)."""
    params = list(inspect.signature(model_class(model).__init__).parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_args(model: str, model_args: dict[str, Any]) -> None:
    """Every key a constructor argument of the model, and none the adapter sets itself."""
    reserved = sorted(set(model_args) & set(RESERVED_ARGS))
    if reserved:
        raise AnomalibError(f"anomalib model {model}: model_args {reserved} are set by the adapter (raw "
                            "scores: no post-processing, no evaluator or visualizer; the model's own "
                            "pre-processor at the protocol's crop size); remove them")
    known = signature(model)
    unknown = sorted(set(model_args) - set(known))
    if unknown:
        allowed = ", ".join(k for k in known if k not in RESERVED_ARGS)
        raise AnomalibError(f"anomalib model {model}: model_args {unknown} are not arguments of "
                            f"{model}.__init__ (allowed: {allowed})")
