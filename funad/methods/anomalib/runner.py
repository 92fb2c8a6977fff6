"""Train and predict one anomalib model on in-memory ImageSets, with Lightning kept inside a scratch folder.

A plain Lightning `Trainer` runs the model (not anomalib's Engine, which adds checkpointing, a versioned
results folder and its progress bar). The data come from a small LightningDataModule over the
ImageSet's crops (some models read `trainer.datamodule`). Every call runs in its own temporary folder:
the working directory, XDG_CACHE_HOME (anomalib's cache) and TORCH_HOME point there while it runs, so
nothing anomalib or Lightning writes (logs, caches, a relative default path) lands in the user's folders,
and the folder is removed in `finally`. Loggers, checkpointing, the progress bar and the model summary are
off. The training pool's labels never reach the model: every training item is labelled normal.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from anomalib.data import ImageBatch, ImageItem
from torch.utils.data import DataLoader, Dataset

from funad.imageset import ImageSet

#: Lightning's advice that does not apply to these runs (no logger on purpose, frozen backbones in eval
#: mode, memory-bank models without an optimiser, the batch size of an ImageBatch)
_NOISE = (r"You called `self\.log", r"Found \d+ module\(s\) in eval mode",
          r"Trying to infer the `batch_size`", r"`LightningModule\.configure_optimizers` returned `None`",
          r".*does not have many workers",
          r"`isinstance\(treespec, LeafSpec\)` is deprecated")

#: Trainer arguments of a model's `trainer_arguments` that the adapter decides itself (epochs, devices,
#: validation: a cell has no validation split; the models that need one get the training pool, below)
_OURS = {"max_epochs", "max_steps", "devices", "accelerator", "val_check_interval", "check_val_every_n_epoch",
         "num_sanity_val_steps", "limit_val_batches", "callbacks", "logger", "default_root_dir"}


@contextmanager
def scratch() -> Iterator[Path]:
    """A temporary working folder for one anomalib call: cwd, XDG_CACHE_HOME and TORCH_HOME point into
    it while it runs; everything in it is removed afterwards, whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="funad-anomalib-"))
    old_cwd = os.getcwd()
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "TORCH_HOME")}
    quiet = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric", "anomalib")]
    levels = [lg.level for lg in quiet]
    try:
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")
        os.environ["TORCH_HOME"] = str(root / "torch")
        for lg in quiet:
            lg.setLevel(logging.WARNING)
        os.chdir(root)
        with warnings.catch_warnings():
            for message in _NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield root
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
        shutil.rmtree(root, ignore_errors=True)


def absolute(images: ImageSet) -> ImageSet:
    """The same ImageSet with absolute paths (the runner changes the working directory)."""
    records = [replace(r, path=Path(r.path).resolve(),
                       mask_path=None if r.mask_path is None else Path(r.mask_path).resolve())
               for r in images.records]
    return replace(images, records=records)


class _Items(Dataset):
    """ImageSet -> anomalib ImageItems: float [3, crop, crop] in [0, 1], the model's pre-processor
    normalises. No label and no mask: the training pool is unlabelled, and prediction needs neither."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> ImageItem:
        crop = self.images.crops(i, i + 1)[0]
        image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)
        return ImageItem(image=image, gt_label=torch.tensor(0), image_path=self.images.records[i].image_id)


class _Data(pl.LightningDataModule):
    """Train = the pool, shuffled with a seeded generator; val = the pool, in order (EfficientAD's map
    quantiles; anomalib would take a validation split of normal images); predict = the test images."""

    def __init__(self, train: ImageSet | None, test: ImageSet | None, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train, self.test, self.seed = train, test, seed
        self.train_batch_size = self.eval_batch_size = batch_size

    def _loader(self, images: ImageSet | None, shuffle: bool) -> DataLoader:
        if images is None:
            raise RuntimeError("no images for this stage")
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(_Items(images), batch_size=self.train_batch_size, shuffle=shuffle, generator=gen,
                          num_workers=0, collate_fn=ImageBatch.collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test, shuffle=False)


class EpochReport(pl.Callback):
    """One `report({"epoch": k, ...})` per finished epoch (the live status line's epoch k/E), with the
    numbers the model logged (its losses); the same dicts are the method's history."""

    def __init__(self, report: Callable[[dict[str, Any]], None] | None) -> None:
        self.report = report
        self.history: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        k = trainer.current_epoch + 1
        row: dict[str, Any] = {"epoch": k, "iteration": int(trainer.global_step)}
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1 and torch.isfinite(value):
                row[str(key)] = float(value)
        self.history.append(row)
        if self.report is not None:
            self.report(dict(row))


def _trainer(device: str, epochs: int, model: Any, root: Path, callbacks: list[pl.Callback],
             validate: bool) -> pl.Trainer:
    dev = torch.device(device)
    args = {k: v for k, v in dict(getattr(model, "trainer_arguments", {}) or {}).items() if k not in _OURS}
    return pl.Trainer(
        **args,
        max_epochs=epochs,
        max_steps=-1,
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=[dev.index or 0] if dev.type == "cuda" else 1,
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        check_val_every_n_epoch=epochs,
        callbacks=callbacks,
    )


def train(model: Any, images: ImageSet, *, epochs: int, batch_size: int, seed: int, device: str,
          report: Callable[[dict[str, Any]], None] | None, validate: bool,
          root: Path) -> list[dict[str, Any]]:
    """Fit `model` (an AnomalibModule) on the pool for `epochs` epochs; returns the per-epoch history.
    `validate`: run the validation hooks once after the last epoch, on the pool (EfficientAD)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    epoch_report = EpochReport(report)
    data = _Data(images, None, batch_size, seed)
    trainer = _trainer(device, epochs, model, root, [epoch_report], validate)
    trainer.fit(model, datamodule=data)
    return epoch_report.history


def predict(model: Any, images: ImageSet, *, batch_size: int, seed: int, device: str,
            root: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw image scores [N] and anomaly maps [N, h, w] (None if the model gives none), in image order."""
    pl.seed_everything(seed, workers=True, verbose=False)
    trainer = _trainer(device, 1, model, root, [], validate=False)
    batches = trainer.predict(model, datamodule=_Data(None, images, batch_size, seed))
    scores, maps = [], []
    for batch in batches or []:
        amap = getattr(batch, "anomaly_map", None)
        score = getattr(batch, "pred_score", None)
        if score is None and amap is not None:  # a model with maps only: the image score is the map's max
            score = amap.reshape(amap.shape[0], -1).amax(dim=1)
        if score is None:
            raise RuntimeError(f"anomalib model {type(model).__name__} gave neither pred_score nor "
                               "anomaly_map")
        scores.append(score.detach().float().reshape(-1).cpu())
        if amap is not None:
            amap = amap.detach().float().cpu()
            maps.append(amap.reshape(amap.shape[0], *amap.shape[-2:]))
    image = torch.cat(scores).numpy().astype(np.float32) if scores else np.zeros(0, np.float32)
    return image, (torch.cat(maps).numpy().astype(np.float32) if maps else None)
