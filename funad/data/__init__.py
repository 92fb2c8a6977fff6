"""Dataset loaders behind one factory, so the harness names a dataset by kind, root and options."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from funad.data.records import Dataset, DatasetError, ImageRecord

DATASET_KINDS = ("synthetic", "mvtec", "visa", "folder", "oneclass", "realiad", "mvtec_ad2", "btad", "mpdd")
#: Kinds that read a user's tree and therefore need an existing root.
ROOT_REQUIRED = ("mvtec", "visa", "folder", "realiad", "mvtec_ad2", "btad", "mpdd")

__all__ = ["DATASET_KINDS", "Dataset", "DatasetError", "ImageRecord", "create_dataset"]


def _loader(kind: str) -> type[Dataset]:
    # Imported lazily: `synthetic` lives in another module that may pull in heavier dependencies.
    if kind == "synthetic":
        from funad.data.synthetic import SyntheticDataset

        return SyntheticDataset
    if kind == "mvtec":
        from funad.data.mvtec import MVTecDataset

        return MVTecDataset
    if kind == "visa":
        from funad.data.visa import VisADataset

        return VisADataset
    if kind == "folder":
        from funad.data.folder import FolderDataset

        return FolderDataset
    if kind == "realiad":
        from funad.data.realiad import RealIADDataset

        return RealIADDataset
    if kind == "mvtec_ad2":
        from funad.data.mvtec_ad2 import MVTecAD2Dataset

        return MVTecAD2Dataset
    if kind == "btad":
        from funad.data.btad import BTADDataset

        return BTADDataset
    if kind == "mpdd":
        from funad.data.mpdd import MPDDDataset

        return MPDDDataset
    from funad.data.oneclass import OneClassDataset

    return OneClassDataset


def create_dataset(kind: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """Build the loader of `kind`; bad kinds, roots and option names fail here, before any run."""
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; available kinds: {', '.join(DATASET_KINDS)}")
    path = None if root is None else Path(root).expanduser()
    if kind in ROOT_REQUIRED:
        if path is None:
            raise DatasetError(f"dataset kind {kind!r} needs a root folder (root is not set)")
        if not path.exists():
            raise DatasetError(f"{path}: {kind} dataset root does not exist")
        if not path.is_dir():
            raise DatasetError(f"{path}: {kind} dataset root is not a directory")
    elif kind == "oneclass" and path is not None and not path.is_dir():
        raise DatasetError(f"{path}: {kind} dataset root does not exist or is not a directory")
    # synthetic: a given root may not exist yet; the generator writes it on first use.
    cls = _loader(kind)
    if dataclasses.is_dataclass(cls):
        allowed = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "root"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise DatasetError(
                f"dataset kind {kind!r}: unknown option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )
    return cls(path, **options) if path is not None else cls(**options)
