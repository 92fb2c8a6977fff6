"""FUN-AD (Im, Son, Hong, WACV 2025): fully unsupervised AD trained with IRMB pseudo-labels.

Clean-room implementation from docs/funad-method.md (not from the authors' code).
A point-wise Local-Net (`localnet.py`) is trained on the contaminated pool with patch pseudo-labels
that come from a memory bank rebuilt from the current model every iteration (`irmb.py`, with the
searches of `funad.search`):

per iteration (bank rebuilt every `bank_every` iterations), one private step each in `FunAD._iteration`:
  1. pool pass + bank: no-grad pass over the whole pool -> image scores and adapted features z (one
     pass, kept in a reused buffer; the bank and the batch queries are gathered from it, never
     recomputed); candidates C = {min-max(score) < eta}; R = floor(keep_ratio*|C|) of them
     uniformly; bank = z of R;
  2. batch search: each batch patch's k nearest bank distances, and the mutual nearest pairs among
     the clean adapted batch features (one symmetric pass for both while the bank is current);
  3. pseudo-labels: eps0 self-match rule (or own-image exclusion); batch min-max -> labels
     y = d̃ > tau_n; uncertain band tau_n < d̃ < tau_c;
  4. band noise: Gaussian noise on the band patches' raw descriptors;
  5. losses + step: L = balanced BCE (noised inputs) + lam * L_MS (clean inputs), one RMSprop step.

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
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from funad import search
from funad.features import FeatureSet, TensorRows, float32_on
from funad.maps import grid_to_maps
from funad.methods import irmb, register
from funad.methods.base import FitContext, Method, MethodSettings, ReleasedSettings, Scores
from funad.methods.localnet import LocalNet
from funad.search import Backend, SearchOptions

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


class FunADSettings(ReleasedSettings):
    """Every FUN-AD hyper-parameter; defaults = the paper's README run (1500 epochs). reference_quirks
    turns on the reference code's quirk flags (docs/funad-method.md section 5)."""

    RELEASED: ClassVar[dict[str, Any]] = {"noise_aliasing": True, "unseeded_init": True}

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
    # compute
    precision: Literal["fp32", "bf16", "tf32"] = Field(
        "fp32", description="pool scoring and the bank/pair search (candidates re-ranked in exact fp32)"
    )
    train_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="training step: bf16 autocast of forward/backward (weights, losses fp32)"
    )
    knn_backend: Backend = "auto"
    rerank: int = Field(8, ge=1, description="approximate candidates re-scored exactly per query (>= k)")
    knn_chunk: int = Field(2048, ge=1, description="query rows per bank-search block")
    pair_chunk: int = Field(2048, ge=1, description="rows per mutual-pair search block")
    pool_chunk: int = Field(16, ge=1, description="images per no-grad pool / test forward")
    log_every: int = Field(0, ge=0, description="log the loss every this many iterations (0 = never)")

    @model_validator(mode="after")
    def _check_ranges(self) -> FunADSettings:
        if not self.tau_n < self.tau_c:
            raise ValueError(f"need tau_n < tau_c, got tau_n={self.tau_n}, tau_c={self.tau_c}")
        search_options(self)  # the search settings are checked where the searches check them
        return self


@dataclass(frozen=True)
class Searches:
    """FUN-AD's searches as `funad.search` options, built once per fit from the settings."""

    bank: SearchOptions  # the bank search on its own (knn_chunk query rows per block)
    pairs: SearchOptions  # the mutual-pair search, and the fused bank + pair pass (pair_chunk)


def search_options(s: FunADSettings) -> Searches:
    """The options of FUN-AD's searches; ValueError where the settings do not make valid ones (k > rerank)."""
    bank = SearchOptions(rerank=s.rerank, chunk=s.knn_chunk, precision=s.precision, backend=s.knn_backend)
    bank.check_k(s.k, "funad")
    return Searches(bank=bank, pairs=replace(bank, chunk=s.pair_chunk))


def _bucket_rows(x: torch.Tensor) -> torch.Tensor:
    """x [n, D] padded with zero rows to one of at most 4 sizes per power of two (< n/2 extra).

    The band's row count changes every iteration; under bf16 autocast on the CPU, oneDNN keeps a
    kernel (with a bf16 copy of the weights) per input shape, which grew the process every
    iteration. Padding to buckets bounds the number of shapes (the band is a small part of the
    batch, so the padded FLOPs are too); the padded rows' outputs are dropped, so they get no
    gradient and change nothing.
    """
    n = x.shape[0]
    step = max(1, (1 << (n - 1).bit_length()) // 4)
    size = -(-n // step) * step
    return x if size == n else torch.cat([x, x.new_zeros((size - n, x.shape[1]))])


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


@dataclass
class BankState:
    """The memory bank of the last rebuild, reused by the iterations until the next one (bank_every)."""

    chosen: torch.Tensor  # [R] sorted image indices drawn into the bank
    gathered: torch.Tensor | None  # [R*P, D] their z, or None where only the fused search reads the bank
    owner: torch.Tensor | None  # [R*P] image of each bank row (exclude_own_image only)
    diag: dict[str, torch.Tensor | float]  # the rebuild's diagnostics, repeated until the next one


@dataclass
class TrainState:
    """What the training iterations read and update (set up once per fit)."""

    net: LocalNet
    opt: torch.optim.Optimizer
    gen: torch.Generator  # shuffling, bank draw, noise
    cls: torch.Tensor | TensorRows  # [N, C] the pool, cache dtype (see FeatureSet.torch_pool)
    patches: torch.Tensor | TensorRows  # [N, P, C]
    injected: torch.Tensor  # [N] bool, diagnostics ONLY
    z_buf: torch.Tensor  # [N, P, D] adapted features of the last pool pass
    searches: Searches  # the search options, from the settings
    bank: BankState | None = None
    it: int = 0  # iterations done


def start_training(
    s: FunADSettings,
    net: LocalNet,
    gen: torch.Generator,
    cls: torch.Tensor | TensorRows,
    patches: torch.Tensor | TensorRows,
    injected: torch.Tensor,
) -> TrainState:
    """Optimiser and reused z buffer for training `net` on the pool (cls [N, C], patches [N, P, C])."""
    opt = torch.optim.RMSprop(net.parameters(), lr=s.lr, momentum=s.momentum)
    n, n_patch, c = patches.shape
    z_buf = torch.empty((n, n_patch, 2 * c), dtype=search.search_dtype(s.precision), device=patches.device)
    return TrainState(net, opt, gen, cls, patches, injected, z_buf, search_options(s))


@register
class FunAD(Method):
    """FUN-AD: Local-Net trained on IRMB pseudo-labels; scores = max patch probability."""

    name: ClassVar[str] = "funad"
    Settings: ClassVar[type[MethodSettings]] = FunADSettings
    diagnostic_names: ClassVar[tuple[str, ...]] = DIAG_KEYS
    smoke_settings: ClassVar[dict[str, Any]] = {"epochs": 8, "batch_size": 4}

    _net: LocalNet | None = None

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

    @classmethod
    def cost(cls, settings: MethodSettings) -> float:
        """Training dominates a cell and grows with the epochs."""
        assert isinstance(settings, FunADSettings)
        return float(settings.epochs)

    @classmethod
    def epochs(cls, settings: MethodSettings) -> int | None:
        assert isinstance(settings, FunADSettings)
        return int(settings.epochs)

    @staticmethod
    def batches(settings: FunADSettings, pool: int) -> tuple[int, int]:
        """(images per batch, batches per epoch) for a pool: a pool smaller than batch_size is one
        whole-pool batch; drop_last drops the incomplete last batch."""
        bs = min(settings.batch_size, pool)
        return bs, (pool // bs if settings.drop_last else math.ceil(pool / bs))

    # ---- training -----------------------------------------------------------------------
    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        """Train Local-Net on the unlabelled pool; train.labels feed diagnostics only."""
        s = self.cfg
        dev = torch.device(ctx.device)
        n = train.n
        if n < 1:
            raise ValueError("FunAD.fit: empty training pool")
        self.history, self.diagnostics, self.oracle = [], {}, {}

        # Quirk 2: the reference builds Local-Net before seeding, so its init differs on every run. Our
        # runner seeds the global RNG before fit, so drawing from it would NOT reproduce that: draw from
        # fresh OS entropy instead (non-deterministic on purpose).
        init_gen = torch.Generator()
        if s.unseeded_init:
            init_gen.seed()
        else:
            init_gen.manual_seed(ctx.seed)
        net = LocalNet(2 * train.channels, init_gen).to(dev)
        self._net = net
        gen = torch.Generator(device=dev).manual_seed(ctx.seed + _TRAIN_SEED_OFFSET)
        cls, patches = train.torch_pool(dev)  # [N, C], [N, P, C]: shared views on the CPU
        injected = torch.from_numpy(np.asarray(train.labels) > 0).to(dev)  # diagnostics ONLY
        st = start_training(s, net, gen, cls, patches, injected)

        bs, n_batches = self.batches(s, n)
        best = -math.inf
        for epoch in range(1, s.epochs + 1):
            perm = torch.randperm(n, generator=gen, device=dev)
            stats: list[dict[str, torch.Tensor | float]] = []
            for b in range(n_batches):
                stats.append(self._iteration(st, perm[b * bs : (b + 1) * bs]))
                if s.log_every and st.it % s.log_every == 0:
                    logger.info(
                        "funad epoch %d iteration %d loss %.6f", epoch, st.it, float(stats[-1]["loss"])
                    )
            row: dict[str, Any] = {"epoch": epoch, "iteration": st.it}
            for key, values in _epoch_means(stats).items():
                row[key if key.startswith("loss") else f"diag_{key}"] = values
            if ctx.evaluate is not None and ctx.eval_every > 0 and epoch % ctx.eval_every == 0:
                best = self._evaluate(ctx, row, epoch, best)
            self.history.append(row)
            if ctx.report is not None:
                ctx.report(dict(row))
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

    def _iteration(self, st: TrainState, idx: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """One pseudo-label + optimiser step on the images idx [B] (the module doc's five steps).

        Returns the history values; device values stay on the device (no per-iteration host copies:
        the epoch syncs once).
        """
        s = self.cfg
        rebuilt = st.it % s.bank_every == 0
        # the bank is current and searched by torch: one symmetric pass serves both searches
        torch_search = st.searches.pairs.backend_on(st.z_buf.device) == "torch"
        fused = rebuilt and not s.exclude_own_image and torch_search
        query = self._pool_pass(st, idx, rebuilt, fused)  # [B*P, D] adapted batch features
        dist, u, v = self._search(st, idx, query, fused)  # [B*P, k] bank distances; pairs [M], [M]
        y, band = self._pseudo_labels(dist)  # [B*P] bool each
        cls_b, pat_b = st.cls[idx].float(), st.patches[idx].float()  # [B, C], [B, P, C] raw features
        noised, x_noised = self._band_noise(st.gen, cls_b, pat_b, band)  # band rows [n], their [n, D]
        losses = self._step(st, cls_b, pat_b, noised, x_noised, y, u, v)  # (loss, bce, ms)
        st.it += 1
        return self._history_values(st, idx, losses, y, band, u)

    def _pool_pass(self, st: TrainState, idx: torch.Tensor, rebuilt: bool, fused: bool) -> torch.Tensor:
        """Step 1: the batch queries in adapted space [B*P, D]; on a rebuild, first the no-grad pass
        over the whole pool (into z_buf, the one pass the bank and queries are gathered from) and the
        bank. Without a rebuild the bank is the last one built and the batch is scored with the
        current weights (the bank is stale, the query is not)."""
        s = self.cfg
        n_patch, dim = st.z_buf.shape[1], st.z_buf.shape[2]
        if not rebuilt:
            _, zq = irmb.score_pool(
                st.net, st.cls[idx], st.patches[idx], chunk=s.pool_chunk, precision=s.precision
            )
            return zq.reshape(-1, dim)
        scores, _ = irmb.score_pool(
            st.net, st.cls, st.patches, chunk=s.pool_chunk, precision=s.precision, z_out=st.z_buf
        )
        cand = irmb.select_candidates(scores, s.eta)  # [N] bool
        chosen = irmb.draw_bank_images(cand, s.keep_ratio, st.gen)  # [R]
        n_cand = cand.sum()
        st.bank = BankState(
            chosen=chosen,
            # a gathered copy of the bank only where a later search needs it on its own
            gathered=None if fused and s.bank_every == 1 else st.z_buf[chosen].reshape(-1, dim),
            owner=chosen.repeat_interleave(n_patch) if s.exclude_own_image else None,
            diag={
                "candidates": n_cand.float(),
                "bank_images": float(chosen.numel()),
                "bank_size": float(chosen.numel() * n_patch),
                "cand_injected_frac": (cand & st.injected).sum() / n_cand,
            },
        )
        return st.z_buf[idx].reshape(-1, dim)

    def _search(
        self, st: TrainState, idx: torch.Tensor, query: torch.Tensor, fused: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 2: each query's k nearest bank distances [B*P, k], and the mutual pairs (u, v)
        among the clean adapted batch features."""
        s = self.cfg
        bank = st.bank
        assert bank is not None, "the first iteration always rebuilds the bank"
        n_patch, dim = st.z_buf.shape[1], st.z_buf.shape[2]
        if fused:
            # the batch images drawn into the bank share the batch x batch GEMM blocks of the pair search
            in_batch = torch.isin(bank.chosen, idx)
            member = torch.isin(idx, bank.chosen).repeat_interleave(n_patch)  # [B*P]
            extra = st.z_buf[bank.chosen[~in_batch]].reshape(-1, dim) if bool((~in_batch).any()) else None
            return search.batch_search(query, member, extra, s.k, st.searches.pairs)
        assert bank.gathered is not None
        exclude = (
            search.Exclusion(query_owner=idx.repeat_interleave(n_patch), bank_owner=bank.owner)
            if s.exclude_own_image
            else search.NO_EXCLUSION
        )
        dist, _ = search.nearest(query, bank.gathered, s.k, st.searches.bank, exclude)
        u, v = search.mutual_pairs(query, st.searches.pairs)
        return dist, u, v

    def _pseudo_labels(self, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: distances [B*P, k] -> labels y and the uncertain band, [B*P] bool each."""
        s = self.cfg
        d = irmb.own_excluded_distance(dist) if s.exclude_own_image else irmb.skip_self_distance(dist, s.eps0)
        y, band, _ = irmb.pseudo_labels(d, s.tau_n, s.tau_c)
        return y, band

    def _band_noise(
        self, gen: torch.Generator, cls_b: torch.Tensor, pat_b: torch.Tensor, band: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4: noise on the raw descriptors of the band rows; only those rows are ever built as
        [cls ; t]. Returns (band row indices [n], noised descriptors [n, D])."""
        s = self.cfg
        sigma: torch.Tensor | float = (
            _descriptor_sigma(cls_b, pat_b) if s.sigma_mode == "batch_std" else s.sigma
        )
        noised = torch.nonzero(band, as_tuple=True)[0]
        x_noised = irmb.add_band_noise(
            _descriptor_rows(cls_b, pat_b, noised),
            torch.ones_like(noised, dtype=torch.bool),
            sigma,
            gen,
            inplace=True,
        )
        return noised, x_noised

    def _step(
        self,
        st: TrainState,
        cls_b: torch.Tensor,
        pat_b: torch.Tensor,
        noised: torch.Tensor,
        x_noised: torch.Tensor,
        y: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 5: L = balanced BCE (noised inputs) + lam * L_MS (clean inputs), one RMSprop step, in
        fp32 (or under bf16 autocast: train_precision). Returns (loss, bce, ms), detached.

        Clean rows go through the split adaptor (the CLS half once per image; the same function),
        noised rows through the full one. The head runs on EVERY clean row: the band rows' clean
        logits are what L_MS needs (it sees clean inputs), and the noised logits replace them in the
        BCE input only, so no [rows, D] copy of z is ever built.
        """
        s, net = self.cfg, st.net
        n_rows, dim = pat_b.shape[0] * pat_b.shape[1], st.z_buf.shape[2]
        autocast = (
            torch.autocast(device_type=pat_b.device.type, dtype=torch.bfloat16)
            if s.train_precision == "bf16"
            else contextlib.nullcontext()
        )
        with search.matmul_precision("fp32"):
            with autocast:
                z = net.adapt_split(cls_b, pat_b).reshape(n_rows, dim)  # [B*P, D]
                logits_clean = net.head_logits(z)  # [B*P]
                logits_noised = None
                if noised.numel():
                    x_in = _bucket_rows(x_noised) if s.train_precision == "bf16" else x_noised
                    logits_noised = net.head_logits(net.adapt(x_in))[: noised.numel()]  # [n]
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
            st.opt.zero_grad(set_to_none=True)
            loss.backward()
            st.opt.step()
        return loss.detach(), loss_bce.detach(), loss_ms.detach()

    def _history_values(
        self,
        st: TrainState,
        idx: torch.Tensor,
        losses: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        y: torch.Tensor,
        band: torch.Tensor,
        u: torch.Tensor,
    ) -> dict[str, torch.Tensor | float]:
        """The iteration's losses and diagnostics; injected-image labels are read here and nowhere else."""
        assert st.bank is not None
        n_patch = st.z_buf.shape[1]
        inj = st.injected[idx].repeat_interleave(n_patch)
        n_pos, n_inj = y.sum(), inj.sum()
        hit = (y & inj).sum().float()
        nan = float("nan")
        return {
            "loss": losses[0],
            "loss_bce": losses[1],
            "loss_ms": losses[2],
            **st.bank.diag,
            "pos_frac": y.float().mean(),
            "band_frac": band.float().mean(),
            "mutual_pairs": float(u.numel()),
            "pl_precision": torch.where((n_pos > 0) & st.injected.any(), hit / n_pos.clamp(min=1), nan),
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
        with search.matmul_precision("fp32"):
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                cls = float32_on(test.cls[s:e], dev)
                pat = float32_on(test.patches[s:e], dev).reshape(e - s, h * w, c)
                z = net.adapt_split(cls, pat)
                grid[s:e] = torch.sigmoid(net.head_logits(z)).cpu()
        grid3 = grid.reshape(n, h, w)
        image = grid3.amax(dim=(1, 2)).numpy().astype(np.float32)
        maps = grid_to_maps(grid3, size=ctx.map_size, sigma=4.0)
        return Scores(image=image, maps=maps)
