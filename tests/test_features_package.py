"""funad.features as a package: its modules import only downward, its public names resolve, and its
cache keys are the ones the caches on disk were written under."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm / huggingface_hub are imported

import pytest

import funad.features as package
from funad.data.records import ImageRecord

PACKAGE = "funad.features"
PACKAGE_DIR = Path(package.__file__).parent
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Layering


def package_imports(source: str, module: str) -> set[str]:
    """The package modules that `source` (the module `module` of funad.features) imports anywhere in
    it (function bodies too); the package itself, which re-exports every layer, counts as "__init__"."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to funad.features.<module>
                parts = PACKAGE.split(".")
                base = ".".join(parts[: len(parts) + 1 - node.level] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [(base, a.name) for a in node.names]
        else:
            continue
        for base, alias in names:
            if alias is not None and f"{base}.{alias}" == PACKAGE:  # from funad import features
                found.add("__init__")
            elif base == PACKAGE:  # a submodule, or a name the package re-exports
                found.add(alias if alias in package.LAYERS else "__init__")
            elif base.startswith(PACKAGE + "."):
                found.add(base[len(PACKAGE) + 1 :].split(".")[0])
    found.discard(module)
    return found


def upward_imports(source: str, module: str) -> set[str]:
    """The imports of `source` that break the layering: a module at or above `module` in LAYERS."""
    rank = {m: i for i, m in enumerate(package.LAYERS)} | {"__init__": len(package.LAYERS)}
    return {m for m in package_imports(source, module) if rank.get(m, len(rank)) >= rank[module]}


def test_every_module_has_a_layer_and_imports_only_below_it() -> None:
    modules = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(package.LAYERS), "a module of funad.features is missing from LAYERS"
    broken = {m: upward_imports((PACKAGE_DIR / f"{m}.py").read_text(), m) for m in modules}
    assert {m: up for m, up in broken.items() if up} == {}
    # featureset is the output type: it imports nothing of the package at all
    assert package_imports((PACKAGE_DIR / "featureset.py").read_text(), "featureset") == set()


@pytest.mark.parametrize(
    ("module", "source", "upward"),
    [
        ("backbone", "from funad.features.extract import extract_features", {"extract"}),
        ("backbone", "def f():\n    from funad.features.cache import entry_key\n", {"cache"}),
        ("cache", "import funad.features.extract as e", {"extract"}),
        ("cache", "from funad.features import FeatureSet", {"__init__"}),
        ("cache", "from funad import features", {"__init__"}),
        ("preprocessing", "from . import cache", {"cache"}),
        ("preprocessing", "from .extract import forward_count", {"extract"}),
        ("featureset", "from funad.features.backbone import BackboneConfig", {"backbone"}),
        ("cache", "from funad.features.backbone import feature_dim\nfrom .featureset import PackRows", set()),
        ("extract", "from funad.features import cache, preprocessing\nimport numpy", set()),
        ("preprocessing", "from funad.data.images import load_rgb\nfrom funad.search import nearest", set()),
    ],
)
def test_the_layering_check_flags_upward_imports(module: str, source: str, upward: set[str]) -> None:
    assert upward_imports(source, module) == upward


def test_public_names_resolve_to_their_modules() -> None:
    for name, module in package._EXPORTS.items():
        assert module in package.LAYERS
        assert getattr(package, name) is getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
    assert sorted(package.__all__) == sorted(package._EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_the_output_type_comes_without_torch() -> None:
    """Methods import FeatureSet from the package: that must not load the backbone layer (torch, timm)."""
    code = (
        "import sys; import funad.methods; from funad.features import FeatureSet, PackRows; "
        "print(sorted(m for m in ('torch', 'timm', 'funad.features.backbone') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Cache keys: pinned


#: a fixed 4x4 binary PPM: its bytes are spelled out here, so no image library's encoder is involved
PIN_IMAGE = b"P6\n4 4\n255\n" + bytes((i * 37) % 256 for i in range(48))
PIN_WEIGHTS = b"funad-bench cache key pin: not a real weights file\n"


def test_cache_keys_are_the_ones_existing_caches_were_written_under(tmp_path: Path) -> None:
    """The expected strings were computed by the OLD modules (funad/backbones.py backbone_key and
    key_description, funad/feature_cache.py entry_key and FeatureCache.pack_key, funad/features.py
    extract_features) at commit 7759d20, before they were replaced by this package, on exactly these
    configs and these bytes. A change here orphans every feature cache on disk: bump
    cache.FORMAT_VERSION on purpose instead, and update the strings."""
    from funad.features import BackboneConfig, backbone_key, entry_key, extract_features, forward_count
    from funad.features.cache import key_description, pack_key

    image, weights = tmp_path / "pin.ppm", tmp_path / "pin_weights.pth"
    image.write_bytes(PIN_IMAGE)
    weights.write_bytes(PIN_WEIGHTS)
    small = BackboneConfig(weights="random", seed=3, resize=72, crop=64)
    configs = {
        "tf_efficientnet_lite0-bundled-719d46e8c07d3557": BackboneConfig(),
        "tf_efficientnet_lite0-random-f038c41baeff902c": small,
        "tf_efficientnet_lite0-random-ceca469c079ebdcc": BackboneConfig(
            weights="random", resize=80, crop=64, layers=(3, 1), border_context=True),
        "tf_efficientnet_lite0-random-1b67c5f9207aad57": BackboneConfig(
            weights="random", mean=(0.1, 0.2, 0.3), std=(0.9, 0.8, 0.7)),
        "vit_tiny_patch16_224-random-8ef60694785426ae": BackboneConfig(
            name="vit_tiny_patch16_224", weights="random", resize=72, crop=64),
        "vit_small_patch16_224.dino-hub-9f406f392682982c": BackboneConfig(
            name="vit_small_patch16_224.dino", weights="hub"),
        "tf_efficientnet_lite0-file-359743a5e329ce11": BackboneConfig(weights=str(weights)),
    }
    assert {key: backbone_key(cfg) for key, cfg in configs.items()} == {key: key for key in configs}

    plain = "566d5e326a9bf3062425057c22af6d1729fa70f8867371bbed62c427c18c29ad"
    augmented = "bb2acfd7a3771dd76cb2b8c11df6e47aac11a40ce92a286104fe32907f92e82a"
    assert (entry_key(image, None), entry_key(image, 7)) == (plain, augmented)
    assert pack_key([plain, augmented]) == "8f251a2ff36fb32e5790cfbdb2552dc1609fda199eaaaddcb46f6ddfdebcfa9f"
    assert key_description(small) == {
        "config": {"border_context": False, "crop": 64, "layers": None, "mean": None, "name":
                   "tf_efficientnet_lite0", "resize": 72, "seed": 3, "std": None, "weights": "random"},
        "feature_dim": [8, 8, 152], "format": 1, "layers": [2, 3], "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "weights_identity": "random:3",
    }

    # where extract_features puts one image's entry and pack: the old code wrote exactly these files
    before = forward_count()
    record = ImageRecord("pin.ppm", image, 0, "test", "c")
    extract_features([record], small, tmp_path / "cache", progress=False)
    assert forward_count() == before + 1
    written = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*")
                     if p.is_file())
    d = "tf_efficientnet_lite0-random-f038c41baeff902c"
    pack = "3ff2d53310bad028f64c298e4790bd3a01c37eed862b73ea021daba7f7db69f2"
    assert written == [
        f"{d}/.lock", f"{d}/backbone.json",
        f"{d}/entries/56/{plain}.json", f"{d}/entries/56/{plain}.npy",
        f"{d}/packs/{pack}.json", f"{d}/packs/{pack}.npy",
    ]
