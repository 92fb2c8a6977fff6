"""Dataset loaders behind one factory, so the harness names a dataset by kind, root and options.

`KINDS` is the one list of dataset kinds and their root rules; a new kind is one entry there.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funad.data.records import Dataset, DatasetError, ImageRecord


@dataclass(frozen=True)
class DatasetKind:
    """A kind's loader (`module:Class`, imported on first use) and how it treats `root`."""

    loader: str
    #: reads a user's tree: a root is required and must be an existing directory
    needs_root: bool = True
    #: built in: without a root it is generated under the data cache (the loader takes `data_cache`)
    builtin: bool = False
    #: a given root is where the built-in set is generated, so it need not exist yet
    generates_root: bool = False
    #: its training sets may hold anomalous images of their own (a published noisy split)
    noisy_splits: bool = False


KINDS: dict[str, DatasetKind] = {
    "synthetic": DatasetKind(
        "funad.data.synthetic:SyntheticDataset", needs_root=False, builtin=True, generates_root=True
    ),
    "mvtec": DatasetKind("funad.data.mvtec:MVTecDataset"),
    "visa": DatasetKind("funad.data.visa:VisADataset"),
    "folder": DatasetKind("funad.data.folder:FolderDataset"),
    "oneclass": DatasetKind("funad.data.oneclass:OneClassDataset", needs_root=False, builtin=True),
    "realiad": DatasetKind("funad.data.realiad:RealIADDataset", noisy_splits=True),  # the FUIAD JSONs
    "mvtec_ad2": DatasetKind("funad.data.mvtec_ad2:MVTecAD2Dataset"),
    "btad": DatasetKind("funad.data.btad:BTADDataset"),
    "mpdd": DatasetKind("funad.data.mpdd:MPDDDataset"),
}
DATASET_KINDS: tuple[str, ...] = tuple(KINDS)
#: constructor arguments that are not user options
_NOT_OPTIONS = {"root", "data_cache"}

__all__ = [
    "DATASET_KINDS",
    "KINDS",
    "Dataset",
    "DatasetError",
    "DatasetKind",
    "ImageRecord",
    "create_dataset",
]


def _loader(kind: DatasetKind) -> type[Dataset]:
    module, name = kind.loader.split(":")
    return getattr(importlib.import_module(module), name)


def create_dataset(
    kind: str, root: str | Path | None = None, *, data_cache: str | Path | None = None, **options: Any
) -> Dataset:
    """Build the loader of `kind`; bad kinds, roots and option names fail here, before any run.

    data_cache: where built-in kinds generate their data (default `funad.paths.data_cache()`).
    """
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; available kinds: {', '.join(DATASET_KINDS)}")
    spec = KINDS[kind]
    path = None if root is None else Path(root).expanduser()
    if path is None and spec.needs_root:
        raise DatasetError(f"dataset kind {kind!r} needs a root folder (root is not set)")
    if path is not None and not spec.generates_root:
        if not path.exists():
            raise DatasetError(f"{path}: {kind} dataset root does not exist")
        if not path.is_dir():
            raise DatasetError(f"{path}: {kind} dataset root is not a directory")
    cls = _loader(spec)
    if dataclasses.is_dataclass(cls):
        allowed = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_OPTIONS}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise DatasetError(
                f"dataset kind {kind!r}: unknown option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )
    if spec.builtin:
        options["data_cache"] = None if data_cache is None else Path(data_cache).expanduser()
    return cls(path, **options) if path is not None else cls(**options)
