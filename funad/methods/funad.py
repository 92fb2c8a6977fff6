"""FUN-AD (Im, Son, Hong, WACV 2025): fully unsupervised AD trained with IRMB pseudo-labels.

Clean-room implementation from /work/shared/spec/funad-method.md (not from the authors' code).
A point-wise Local-Net (`localnet.py`) is trained on the contaminated pool with patch pseudo-labels
that come from a memory bank rebuilt from the current model every iteration (`irmb.py`):

per iteration (bank rebuilt every `bank_every` iterations):
  1. no-grad pass over the whole pool -> image scores and adapted features z (one pass, kept in a
     reused buffer; the bank and the batch queries are gathered from it, never recomputed);
  2. candidates C = {min-max(score) < eta}; R = floor(keep_ratio*|C|) of them uniformly; bank = z of R;
  3. batch patches: k nearest bank distances, eps0 self-match rule (or own-image exclusion);
     batch min-max -> labels y = d̃ > tau_n; uncertain band tau_n < d̃ < tau_c;
  4. Gaussian noise on the band patches' raw descriptors; mutual nearest pairs among the clean
     adapted batch features;
  5. L = balanced BCE (noised inputs) + lam * L_MS (clean inputs), one RMSprop step.

Our choices where the spec is silent (all settings or documented here):
  * A pool smaller than batch_size is used whole as one batch per epoch.
  * bank_every > 1: on iterations without a rebuild the bank is the last one built, and the batch
    queries use the current weights (the bank is stale, the query is not).
  * The weights are initialised on the CPU from the seed (same weights on any device); training
    randomness (shuffling, bank draw, noise) uses a generator on ctx.device.
  * With ctx.evaluate, an image-level dataset (pixel_auroc None) selects the oracle by image AUROC.
  * Test scoring always runs in fp32, whatever `precision` says.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from funad.featureset import FeatureSet, PackRows
from funad.maps import grid_to_maps
from funad.methods import irmb, register
from funad.methods.base import FitContext, Method, MethodSettings, Scores
from funad.methods.localnet import LocalNet

logger = logging.getLogger(__name__)

#: offset between the init seed and the training generator's seed, so the streams are independent
_TRAIN_SEED_OFFSET = 104_729

DIAG_KEYS = (
    "candidates",
    "bank_images",
    "bank_size",
    "pos_frac",
    "band_frac",
    "mutual_pairs",
    "cand_injected_frac",
    "pl_precision",
    "pl_recall",
)

_QUIRK_FLAGS = ("noise_aliasing", "unseeded_init")


class FunADSettings(MethodSettings):
    """Every FUN-AD hyper-parameter; defaults = the paper's README run (1500 epochs)."""

    # IRMB pseudo-labels
    tau_n: float = Field(0.5, ge=0.0, le=1.0, description="label cut on the batch-normalised distance")
    tau_c: float = Field(0.9, ge=0.0, le=1.0, description="upper end of the uncertain (noised) band")
    eta: float = Field(0.5, gt=0.0, le=1.0, description="candidate cut on the pool-normalised image score")
    keep_ratio: float = Field(0.5, gt=0.0, description="share of candidates in the bank (>= 1: all)")
    k: int = Field(2, ge=1, description="neighbours searched; d = first nonzero of δ1..δk")
    eps0: float = Field(0.01, ge=0.0, description="squared distances below this count as a self-match")
    bank_every: int = Field(1, ge=1, description="rebuild the bank every this many iterations")
    exclude_own_image: bool = Field(False, description="search other images only, instead of the eps0 rule")
    # noise
    sigma_mode: Literal["batch_std", "fixed"] = "batch_std"
    sigma: float = Field(0.1, ge=0.0, description="noise std when sigma_mode = fixed")
    # losses and optimiser
    lam: float = Field(2.5, ge=0.0, description="weight of the mutual smoothness loss")
    ms_loss: Literal["l1", "l2"] = "l1"
    lr: float = Field(2e-5, gt=0.0)
    momentum: float = Field(0.2, ge=0.0)
    batch_size: int = Field(32, ge=1, description="images per batch (a smaller pool is one batch)")
    epochs: int = Field(1500, ge=1)
    drop_last: bool = True
    # reference quirks
    noise_aliasing: bool = Field(False, description="quirk 1: L_MS also on the noised inputs")
    unseeded_init: bool = Field(False, description="quirk 2: init from OS entropy (differs every run)")
    reference_quirks: bool = Field(False, description="turn on every reference quirk flag")
    # compute
    precision: Literal["fp32", "bf16", "tf32"] = Field(
        "fp32", description="pool scoring and the bank/pair search (candidates re-ranked in exact fp32)"
    )
    train_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="training step: bf16 autocast of forward/backward (weights, losses fp32)"
    )
    knn_backend: Literal["auto", "torch", "faiss"] = "auto"
    rerank: int = Field(8, ge=1, description="approximate candidates re-scored exactly per query (>= k)")
    knn_chunk: int = Field(2048, ge=1, description="query rows per bank-search block")
    pair_chunk: int = Field(2048, ge=1, description="rows per mutual-pair search block")
    pool_chunk: int = Field(16, ge=1, description="images per no-grad pool / test forward")
    log_every: int = Field(0, ge=0, description="log the loss every this many iterations (0 = never)")

    @model_validator(mode="before")
    @classmethod
    def _apply_reference_quirks(cls, data: Any) -> Any:
        """reference_quirks=True switches every quirk flag on (an explicit False contradicts it)."""
        if isinstance(data, dict) and data.get("reference_quirks"):
            data = dict(data)
            for flag in _QUIRK_FLAGS:
                if data.get(flag) is False:
                    raise ValueError(f"reference_quirks=True contradicts {flag}=False")
                data[flag] = True
        return data

    @model_validator(mode="after")
    def _check_ranges(self) -> FunADSettings:
        if not self.tau_n < self.tau_c:
            raise ValueError(f"need tau_n < tau_c, got tau_n={self.tau_n}, tau_c={self.tau_c}")
        if self.rerank < self.k:
            raise ValueError(f"need rerank >= k, got rerank={self.rerank}, k={self.k}")
        return self


class _Rows:
    """The torch side of a `PackRows` pool: rows `rows` of `base`, gathered on indexing.

    Supports what score_pool and _iteration use (shape, [slice], [index tensor]); every read is a
    gather into a new tensor, so the shared memory-mapped pack is never copied whole.
    """

    def __init__(self, base: torch.Tensor, rows: torch.Tensor) -> None:
        self.base, self.rows = base, rows

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.rows.shape[0], *self.base.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.base.device

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        return self.base[self.rows[key]]


def _pool_tensor(a: np.ndarray | PackRows, dev: torch.device) -> torch.Tensor | _Rows:
    """The pool's features for training: a shared view on the CPU (see `_read_only_tensor`)."""
    if isinstance(a, PackRows):
        if dev.type == "cpu":
            return _Rows(_read_only_tensor(a.base, dev), torch.from_numpy(a.rows))
        return torch.from_numpy(np.asarray(a)).to(dev)  # the one host->device copy
    return _read_only_tensor(a, dev)


def _bucket_rows(x: torch.Tensor) -> torch.Tensor:
    """x [n, D] padded with zero rows to one of at most 4 sizes per power of two (< n/2 extra).

    The band's row count changes every iteration; under bf16 autocast on the CPU, oneDNN keeps a
    kernel (with a bf16 copy of the weights, ~8 MB here) per input shape, which grew the process
    by ~10 MB per iteration (measured). Padding to buckets bounds the number of shapes (the band
    is a small part of the batch, so the padded FLOPs are too); the padded rows' outputs are
    dropped, so they get no gradient and change nothing.
    """
    n = x.shape[0]
    step = max(1, (1 << (n - 1).bit_length()) // 4)
    size = -(-n // step) * step
    return x if size == n else torch.cat([x, x.new_zeros((size - n, x.shape[1]))])


def _read_only_tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    """The pool's features as a tensor: on the CPU a view of the (memory-mapped, read-only) array.

    Concurrent trials of one category then share the page-cached pack instead of each holding a
    private copy. Nothing in fit writes into these tensors (every use is a gather or a cast into a
    new tensor; a write into a read-only map would fault). On a GPU this is the one host->device copy.
    """
    if dev.type == "cpu":
        with warnings.catch_warnings():  # torch warns that the array is not writable: we never write
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dev)


def _descriptors(cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """[B, C], [B, P, C] -> raw descriptors [B, P, 2C] fp32 (CLS half first)."""
    b, p, c = patches.shape
    return torch.cat([cls.float()[:, None, :].expand(b, p, c), patches.float()], dim=2)


def _descriptor_rows(cls: torch.Tensor, patches: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Raw descriptors [cls ; t] of the flat batch rows `rows` only: [len(rows), 2C] fp32."""
    n_patch, c = patches.shape[1], patches.shape[2]
    return torch.cat([cls[rows // n_patch].float(), patches.reshape(-1, c)[rows].float()], dim=1)


def _descriptor_sigma(cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """irmb.noise_sigma of the batch descriptors without building them: the CLS half is the same
    at every grid position, so its max-over-positions std is the std of cls across the batch."""
    if patches.shape[0] < 2:
        return torch.zeros(2 * patches.shape[2], dtype=torch.float32, device=patches.device)
    return torch.cat([irmb.noise_sigma(cls.float()[:, None, :]), irmb.noise_sigma(patches)])


def _nanmean(values: list[float]) -> float:
    """Mean of the defined values (NaN = undefined at that iteration); NaN when none is defined."""
    arr = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(arr)
    return float(arr[ok].mean()) if ok.any() else float("nan")


def _epoch_means(stats: list[dict[str, torch.Tensor | float]]) -> dict[str, float]:
    """Per-key NaN-aware means over an epoch's iterations, with ONE device->host copy for all tensors."""
    keys = list(stats[0])
    tensor_keys = [k for k in keys if isinstance(stats[0][k], torch.Tensor)]
    table = np.zeros((len(stats), 0))
    if tensor_keys:
        stacked = torch.stack([torch.stack([st[k].float() for k in tensor_keys]) for st in stats])  # type: ignore[union-attr]
        table = stacked.cpu().numpy()
    out = {}
    for key in keys:
        if key in tensor_keys:
            out[key] = _nanmean(table[:, tensor_keys.index(key)].tolist())
        else:
            out[key] = _nanmean([float(st[key]) for st in stats])
    return out


@register
class FunAD(Method):
    """FUN-AD: Local-Net trained on IRMB pseudo-labels; scores = max patch probability."""

    name: ClassVar[str] = "funad"
    Settings: ClassVar[type[MethodSettings]] = FunADSettings
    diagnostic_names: ClassVar[tuple[str, ...]] = DIAG_KEYS

    _net: LocalNet | None = None
    #: seconds per training iteration of the last fit (mean), for benchmarks
    iter_seconds: float = float("nan")

    @property
    def cfg(self) -> FunADSettings:
        """The settings with their concrete type."""
        assert isinstance(self.settings, FunADSettings)
        return self.settings

    @property
    def net(self) -> LocalNet:
        """The fitted Local-Net (raises before fit)."""
        if self._net is None:
            raise RuntimeError("FunAD: call fit() before score()")
        return self._net

    # ---- training -----------------------------------------------------------------------
    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        """Train Local-Net on the unlabelled pool; train.labels feed diagnostics only."""
        s = self.cfg
        dev = torch.device(ctx.device)
        n = train.n
        if n < 1:
            raise ValueError("FunAD.fit: empty training pool")
        h, w = train.grid
        n_patch, c = h * w, train.channels
        dim = 2 * c
        self.history, self.diagnostics, self.oracle = [], {}, {}

        # Quirk 2: the reference builds Local-Net before seeding, so its init differs on every run. Our
        # runner seeds the global RNG before fit, so drawing from it would NOT reproduce that: draw from
        # fresh OS entropy instead (non-deterministic on purpose).
        init_gen = torch.Generator()
        if s.unseeded_init:
            init_gen.seed()
        else:
            init_gen.manual_seed(ctx.seed)
        net = LocalNet(dim, init_gen).to(dev)
        self._net = net
        gen = torch.Generator(device=dev).manual_seed(ctx.seed + _TRAIN_SEED_OFFSET)
        cls = _pool_tensor(train.cls, dev)
        patches = _pool_tensor(train.patches.reshape(n, n_patch, c), dev)
        injected = torch.from_numpy(np.asarray(train.labels) > 0).to(dev)  # diagnostics ONLY
        opt = torch.optim.RMSprop(net.parameters(), lr=s.lr, momentum=s.momentum)

        bs = min(s.batch_size, n)  # a pool smaller than batch_size is one whole-pool batch
        n_batches = n // bs if s.drop_last else math.ceil(n / bs)
        z_buf = torch.empty((n, n_patch, dim), dtype=irmb.search_dtype(s.precision), device=dev)
        bank_state: dict[str, Any] = {}
        best = -math.inf
        it = 0
        t_train = 0.0
        for epoch in range(1, s.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen, device=dev)
            stats: list[dict[str, torch.Tensor | float]] = []
            for b in range(n_batches):
                idx = perm[b * bs : (b + 1) * bs]
                stats.append(
                    self._iteration(net, opt, gen, cls, patches, injected, idx, z_buf, bank_state, it)
                )
                it += 1
                if s.log_every and it % s.log_every == 0:
                    logger.info("funad epoch %d iteration %d loss %.6f", epoch, it, float(stats[-1]["loss"]))
            row: dict[str, Any] = {"epoch": epoch, "iteration": it}
            for key, values in _epoch_means(stats).items():
                row[key if key.startswith("loss") else f"diag_{key}"] = values
            t_train += time.perf_counter() - t0
            if ctx.evaluate is not None and ctx.eval_every > 0 and epoch % ctx.eval_every == 0:
                best = self._evaluate(ctx, row, epoch, best)
            self.history.append(row)
            if ctx.report is not None:
                ctx.report(dict(row))
        self.iter_seconds = t_train / max(it, 1)
        last = self.history[-1]
        self.diagnostics = {k: float(last[f"diag_{k}"]) for k in DIAG_KEYS}

    def _evaluate(self, ctx: FitContext, row: dict[str, Any], epoch: int, best: float) -> float:
        """Test-set evaluation for the oracle_* columns only (never feeds training or the headline)."""
        assert ctx.evaluate is not None
        res = ctx.evaluate(self)
        img, pix = res.get("image_auroc"), res.get("pixel_auroc")
        row["eval_image_auroc"] = None if img is None else float(img)
        row["eval_pixel_auroc"] = None if pix is None else float(pix)
        if img is None:
            return best
        crit = float(img) if pix is None else 0.5 * (float(img) + float(pix))
        if crit > best:  # strict: the earliest best epoch is kept
            self.oracle = {
                "oracle_image_auroc": float(img),
                "oracle_pixel_auroc": float("nan") if pix is None else float(pix),
                "oracle_epoch": float(epoch),
            }
            return crit
        return best

    def _iteration(
        self,
        net: LocalNet,
        opt: torch.optim.Optimizer,
        gen: torch.Generator,
        cls: torch.Tensor,
        patches: torch.Tensor,
        injected: torch.Tensor,
        idx: torch.Tensor,
        z_buf: torch.Tensor,
        bank_state: dict[str, Any],
        it: int,
    ) -> dict[str, torch.Tensor | float]:
        """One pseudo-label + optimiser step on the images `idx`; returns history values.

        Device values stay on the device (no per-iteration host copies); the epoch syncs once.
        """
        s = self.cfg
        n_patch, dim = patches.shape[1], z_buf.shape[2]
        search = {"rerank": s.rerank, "precision": s.precision, "backend": s.knn_backend}
        # 1-2. pool pass and bank (or reuse of the last bank) -> batch queries in adapted space
        rebuilt = it % s.bank_every == 0
        fused = rebuilt and not s.exclude_own_image and s.knn_backend in ("auto", "torch")
        if rebuilt:
            scores, _ = irmb.score_pool(
                net, cls, patches, chunk=s.pool_chunk, precision=s.precision, z_out=z_buf
            )
            cand = irmb.select_candidates(scores, s.eta)
            chosen = irmb.draw_bank_images(cand, s.keep_ratio, gen)
            n_cand = cand.sum()
            bank_state["chosen"] = chosen
            # a gathered copy of the bank only where a later search needs it on its own
            bank_state["bank"] = None if fused and s.bank_every == 1 else z_buf[chosen].reshape(-1, dim)
            bank_state["owner"] = chosen.repeat_interleave(n_patch) if s.exclude_own_image else None
            bank_state["diag"] = {
                "candidates": n_cand.float(),
                "bank_images": float(chosen.numel()),
                "bank_size": float(chosen.numel() * n_patch),
                "cand_injected_frac": (cand & injected).sum() / n_cand,
            }
            query = z_buf[idx].reshape(-1, dim)
        else:
            _, zq = irmb.score_pool(net, cls[idx], patches[idx], chunk=s.pool_chunk, precision=s.precision)
            query = zq.reshape(-1, dim)
        # 3-4a. distances to the bank and mutual pairs among the clean adapted batch features
        if fused:
            # the bank is current: the batch images drawn into it share the batch x batch GEMM blocks
            # of the pair search, so one symmetric pass serves both searches
            chosen = bank_state["chosen"]
            in_batch = torch.isin(chosen, idx)
            member = torch.isin(idx, chosen).repeat_interleave(n_patch)
            extra = z_buf[chosen[~in_batch]].reshape(-1, dim) if bool((~in_batch).any()) else None
            dist, u, v = irmb.batch_search(
                query, member, extra, s.k, rerank=s.rerank, chunk=s.pair_chunk, precision=s.precision
            )
        else:
            q_owner = idx.repeat_interleave(n_patch) if s.exclude_own_image else None
            dist, _ = irmb.nearest(
                query,
                bank_state["bank"],
                s.k,
                chunk=s.knn_chunk,
                query_owner=q_owner,
                bank_owner=bank_state["owner"],
                **search,
            )
            u, v = irmb.mutual_pairs(query, chunk=s.pair_chunk, **search)
        d = irmb.own_excluded_distance(dist) if s.exclude_own_image else irmb.skip_self_distance(dist, s.eps0)
        y, band, _ = irmb.pseudo_labels(d, s.tau_n, s.tau_c)
        # 4b. noise on raw descriptors of the band: only the band rows are ever built as [cls ; t]
        cls_b, pat_b = cls[idx].float(), patches[idx].float()
        n_rows = pat_b.shape[0] * n_patch
        sigma: torch.Tensor | float = (
            _descriptor_sigma(cls_b, pat_b) if s.sigma_mode == "batch_std" else s.sigma
        )
        noised = torch.nonzero(band, as_tuple=True)[0]
        x_noised = irmb.add_band_noise(
            _descriptor_rows(cls_b, pat_b, noised), torch.ones_like(noised, dtype=torch.bool), sigma, gen,
            inplace=True,
        )
        # 5. losses and one RMSprop step, in fp32 (or under bf16 autocast: train_precision).
        # Clean rows go through the split adaptor (the CLS half once per image; spec: the same
        # function), noised rows through the full one. The head runs on EVERY clean row: the band
        # rows' clean logits are what L_MS needs (it sees clean inputs), and the noised logits
        # replace them in the BCE input only, so no [rows, D] copy of z is ever built.
        autocast = (
            torch.autocast(device_type=pat_b.device.type, dtype=torch.bfloat16)
            if s.train_precision == "bf16"
            else contextlib.nullcontext()
        )
        with irmb.matmul_precision("fp32"):
            with autocast:
                z = net.adapt_split(cls_b, pat_b).reshape(n_rows, dim)
                logits_clean = net.head_logits(z)
                logits_noised = None
                if noised.numel():
                    x_in = _bucket_rows(x_noised) if s.train_precision == "bf16" else x_noised
                    logits_noised = net.head_logits(net.adapt(x_in))[: noised.numel()]
            logits_clean = logits_clean.float()
            logits_in = (
                logits_clean.index_put((noised,), logits_noised.float())
                if logits_noised is not None
                else logits_clean
            )
            loss_bce = irmb.balanced_bce(logits_in, y)
            # quirk 1 (noise_aliasing): the pairs see the noised logits of band rows, as the reference
            pair_logits = logits_in if s.noise_aliasing else logits_clean
            loss_ms = irmb.mutual_smoothness(
                torch.sigmoid(pair_logits[u]), torch.sigmoid(pair_logits[v]), s.ms_loss
            )
            loss = loss_bce + s.lam * loss_ms
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        # diagnostics: injected-image labels are read here and nowhere else
        inj = injected[idx].repeat_interleave(n_patch)
        n_pos, n_inj = y.sum(), inj.sum()
        hit = (y & inj).sum().float()
        nan = float("nan")
        return {
            "loss": loss.detach(),
            "loss_bce": loss_bce.detach(),
            "loss_ms": loss_ms.detach(),
            **bank_state["diag"],
            "pos_frac": y.float().mean(),
            "band_frac": band.float().mean(),
            "mutual_pairs": float(u.numel()),
            "pl_precision": torch.where((n_pos > 0) & injected.any(), hit / n_pos.clamp(min=1), nan),
            "pl_recall": torch.where(n_inj > 0, hit / n_inj.clamp(min=1), nan),
        }

    # ---- scoring ------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        """Max patch probability per image; maps = upsampled, blurred (σ = 4) probability grids."""
        net = self.net
        dev = next(net.parameters()).device
        h, w = test.grid
        n, c = test.n, test.channels
        grid = torch.empty((n, h * w), dtype=torch.float32)
        chunk = self.cfg.pool_chunk
        with irmb.matmul_precision("fp32"):
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                cls = torch.from_numpy(np.array(test.cls[s:e], dtype=np.float32)).to(dev)
                pat = torch.from_numpy(np.array(test.patches[s:e], dtype=np.float32).reshape(e - s, h * w, c))
                z = net.adapt_split(cls, pat.to(dev))
                grid[s:e] = torch.sigmoid(net.head_logits(z)).cpu()
        grid3 = grid.reshape(n, h, w)
        image = grid3.amax(dim=(1, 2)).numpy().astype(np.float32)
        maps = grid_to_maps(grid3, size=ctx.map_size, sigma=4.0)
        return Scores(image=image, maps=maps)
