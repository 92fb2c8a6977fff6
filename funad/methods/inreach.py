"""InReaCh (McIntosh & Albu, "Inter-Realization Channels: Unsupervised Anomaly Detection Beyond One-Class
Classification", ICCV 2023): a nominal memory built from patches that recur across training images.

Nominal patches recur in many training images ("realizations"); defects rarely do. No training (Sec. 3):
fit:   PatchCore's locally aware patch features (`embed_patches`) -> optional positional columns
       -> association: each patch of a later image is linked to its nearest patch in the closest seed
       image, only when the two are mutual nearest neighbours -> channels = a seed patch with its
       linked patches (a star, at most one member per image, no transitive chaining; a seed patch may
       also be a member of an earlier seed's channel) -> channels spanning too few images dropped
       -> spread trim of far members, span checked again -> every surviving member is the memory.
score: squared L2 to the nearest memory patch, exact -> grid -> map (shared bilinear `grid_to_maps`,
       Gaussian sigma in pixels at 224) -> image score = max of the smoothed map.

Our choices where the paper leaves room:
- Seeds are the first `assoc_depth` images of a permutation of the pool drawn from ctx.seed
  (`seed_order="random"`); `"pool"` keeps the FeatureSet's order (the paper puts clean images first).
- Members are the matched compare patches, keyed by the seed patch they matched.
- Spread trim: keep r <= tau * sigma (`reference`; <= so identical members, sigma = 0, stay) or
  r <= mean(r) + tau * sigma (`mean_plus`), r = distance to the channel mean, sigma = the radii's
  population std. The reference rule bounds r / sigma only: when radii concentrate (isotropic noise in
  high dimension) it drops whole channels, which `mean_plus` avoids.
- Positional columns ("auto"): the paper tests the mean training image against its transpose in
  pixels; we have features only, so auto compares the pool's mean feature map with its transpose,
  relative to the features' spread around it (`transpose_score`), against `transpose_threshold`
  (None, the default until calibrated: auto means off). The score is logged for calibration.
- The memory holds every kept patch once (a seed patch kept both as a root and as a member is one row);
  `max_memory` optionally keeps a seeded uniform subset.
- Features are centred on the pool mean before the association (distances unchanged, less rounding).

The authors' released code departs from the paper in four places; each is a flag (default off = the
paper), and `reference_quirks` turns all four on with `seed_order="pool"` (docs/inreach-method.md 5):
- `swapped_filing`: a link from compare patch (c, x) to its best seed's patch (s, m) is filed under
  the channel rooted at (s, x), with member (c, m) (the paper: channel (s, m), member (c, x));
- `nearest_upsampling`: grid cells repeated over their stride before the Gaussian (not bilinear);
- `strict_trim`: the spread trim keeps r < bound (ours r <= bound);
- `keep_duplicates`: a patch kept in several channels (or as a root and a member) is a memory row
  each time.
The released seed order is the pool's own with the clean training images first, which needs the
contamination's `pool_order: appended`: with reference_quirks, `split_needs` asks for it, so a sweep
(or a CellConfig) with another pool order is refused at validation.

`train.labels` is read for the `memory_injected_frac` diagnostic only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, field_validator

from funad.features import FeatureSet
from funad.maps import grid_to_maps
from funad.methods import register
from funad.methods.base import FitContext, Method, MethodSettings, ReleasedSettings, Scores, SplitNeed
from funad.methods.patchcore import PatchCoreSettings, embed_patches
from funad.search import Backend, SearchOptions, nearest
from funad.search.pairs import AUGMENT, compare_rows, cross_nearest, seed_columns

#: map_sigma is given in pixels of a map of this size (the paper's 224 crop); other sizes scale it
SIGMA_MAP_SIZE = 224
#: member rows per step of the spread trim's float64 passes (bounds its scratch memory)
TRIM_CHUNK = 4096
#: columns appended by the positional embedding: (x, y) of the cell
POS_DIMS = 2


class InReaChSettings(ReleasedSettings):
    """InReaCh's settings: numbers follow the authors' configuration, choices the paper; spread_rule,
    seed_order, chunk_images, knn_backend and max_memory are ours; the four flags and seed_order="pool"
    are the released code's departures (reference_quirks; see the module docstring)."""

    RELEASED: ClassVar[dict[str, Any]] = {
        "swapped_filing": True,
        "nearest_upsampling": True,
        "strict_trim": True,
        "keep_duplicates": True,
        "seed_order": "pool",
    }
    #: the released code's settings came after the first cells (issue 24): hashed away from defaults only
    ADDED_LATER: ClassVar[tuple[str, ...]] = (
        "reference_quirks", "swapped_filing", "nearest_upsampling", "strict_trim", "keep_duplicates")

    assoc_depth: int = Field(10, ge=1)
    min_channel_length: int = Field(3, ge=0)
    max_channel_std: float = Field(5.0, gt=0.0)
    spread_rule: Literal["reference", "mean_plus"] = "reference"
    positional: Literal["auto", "on", "off"] = "auto"
    transpose_threshold: float | None = Field(None, ge=0.0)
    pos_embed_weight: float = Field(5.0, ge=0.0)
    aggregation_kernel: int = Field(3, ge=1)
    embed_dim: int | None = Field(1024, ge=1)
    map_sigma: float = Field(13.0, ge=0.0)
    squared_distance: bool = True
    seed_order: Literal["random", "pool"] = "random"
    chunk_images: int = Field(64, ge=1)
    knn_backend: Backend = "auto"
    max_memory: int | None = Field(None, ge=1)
    # the released code's departures from the paper (reference_quirks turns them all on)
    swapped_filing: bool = Field(False, description="file a link under the seed patch at the compare cell")
    nearest_upsampling: bool = Field(False, description="maps: each cell repeated over its stride")
    strict_trim: bool = Field(False, description="spread trim keeps r < bound, not r <= bound")
    keep_duplicates: bool = Field(False, description="a patch in several channels is a row each time")

    @field_validator("aggregation_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        return PatchCoreSettings._odd_kernel(v)

    def split_needs(self) -> tuple[SplitNeed, ...]:
        """The released seed order (the first training images, clean) needs the clean images first in
        the pool: seed_order "pool" alone may run on any pool order, reference_quirks may not."""
        return (SplitNeed("pool_order", "appended", "reference_quirks"),) if self.reference_quirks else ()


# ---- positional columns --------------------------------------------------------------
def positional_columns(h: int, w: int, weight: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[H*W, POS_DIMS] (weight * j / W, weight * i / H) of cell (row i, col j), row-major like the grid."""
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cols = torch.stack([weight * j.reshape(-1) / w, weight * i.reshape(-1) / h], dim=1)
    return cols.to(device=device, dtype=torch.float32)


def image_mean(feats: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Mean over the first (image) axis in float64, chunk by chunk (no float64 copy of the pool)."""
    total = torch.zeros(feats.shape[1:], dtype=torch.float64, device=feats.device)
    for s in range(0, feats.shape[0], chunk):
        total += feats[s : s + chunk].sum(dim=0, dtype=torch.float64)
    return total / max(feats.shape[0], 1)


def transpose_score(feats: torch.Tensor, chunk: int = 64) -> float:
    """A = mean ||M(i,j) - M(j,i)||^2 / mean ||f - M||^2 of [N, H, W, D] features, M = the pool mean map.

    The feature-space stand-in for the paper's mean-image-vs-transpose test: large when the class has a
    fixed layout (the mean map is not symmetric), relative to how much images vary around it. NaN on a
    non-square grid (no transpose); 0 / 0 is 0, x / 0 is inf.
    """
    n, h, w, _ = feats.shape
    if h != w or n == 0:
        return float("nan")
    mean = image_mean(feats, chunk)
    num = float((mean - mean.transpose(0, 1)).square().sum(-1).mean())
    centre = mean.to(feats.dtype)
    spread = 0.0
    for s in range(0, n, chunk):
        spread += float((feats[s : s + chunk] - centre).square().sum(dtype=torch.float64))
    den = spread / (n * h * w)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


# ---- association --------------------------------------------------------------------
class Association(NamedTuple):
    """Running best-seed arrays [N, P] over images in association order (position 0 is the first seed).

    dist: squared distance to the nearest patch of the best seed (inf: no earlier seed); seed: that
    seed's position (-1: none); patch: its nearest patch there; mutual: whether the link is mutual.
    """

    dist: torch.Tensor
    seed: torch.Tensor
    patch: torch.Tensor
    mutual: torch.Tensor


def associate(rows: torch.Tensor, k: int, chunk_images: int) -> Association:
    """Best-seed association of every patch: rows [N, P, D + 2] from `compare_rows`, images in order.

    For each seed s < min(k, N) and each block of up to `chunk_images` later images, one distance block
    [B, P, P] gives both directions (`cross_nearest`); the running arrays keep, per patch, the seed with
    the smallest distance (strict <, seeds ascending: ties go to the lowest seed). Memory beyond the
    pool: one block of B * P * P values.
    """
    n, p, _ = rows.shape
    dev = rows.device
    dist = torch.full((n, p), float("inf"), dtype=rows.dtype, device=dev)
    seed = torch.full((n, p), -1, dtype=torch.int64, device=dev)
    patch = torch.full((n, p), -1, dtype=torch.int64, device=dev)
    mutual = torch.zeros((n, p), dtype=torch.bool, device=dev)
    if n < 2:
        return Association(dist, seed, patch, mutual)
    buf = torch.empty(min(chunk_images, n - 1) * p * p, dtype=rows.dtype, device=dev)
    for s in range(min(k, n)):
        cols = seed_columns(rows[s])
        for c0 in range(s + 1, n, chunk_images):
            c1 = min(n, c0 + chunk_images)
            r = cross_nearest(cols, rows[c0:c1], out=buf)
            better = r.dist < dist[c0:c1]
            dist[c0:c1] = torch.where(better, r.dist, dist[c0:c1])
            seed[c0:c1] = torch.where(better, s, seed[c0:c1])
            patch[c0:c1] = torch.where(better, r.index, patch[c0:c1])
            mutual[c0:c1] = torch.where(better, r.mutual, mutual[c0:c1])
    return Association(dist, seed, patch, mutual)


# ---- channels: span filter and spread trim ---------------------------------------
@dataclass
class Channels:
    """Every channel entry [E] (roots first, then members): channel id = the root's flat position
    (seed position * P + seed patch), the entry's flat position (image position * P + patch), and
    which entries survive the span filter (`spanned`), the spread trim (`trimmed`, within spanned)
    and the second span filter (`kept`)."""

    chan: torch.Tensor
    flat: torch.Tensor
    spanned: torch.Tensor
    trimmed: torch.Tensor
    kept: torch.Tensor

    @property
    def n_kept(self) -> int:
        return int(torch.unique(self.chan[self.kept]).numel())

    @property
    def trim_frac(self) -> float:
        """Share of the span-passing entries that the spread trim removed (NaN when none passed)."""
        n = int(self.spanned.sum())
        return float("nan") if n == 0 else 1.0 - int(self.trimmed.sum()) / n


def channel_entries(
    assoc: Association, k: int, *, swapped: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel id [E], flat position [E]): every seed patch as its channel's root, then each mutual
    best-seed link as a member.

    A link from compare patch (c, x) to seed patch (s, m): the paper files member (c, x) under the
    channel rooted at (s, m); `swapped` (the released code) files member (c, m), the compare image's
    patch at the matched cell, under the channel rooted at (s, x). The two agree where x = m.
    """
    n, p = assoc.seed.shape
    dev = assoc.seed.device
    roots = torch.arange(min(k, n) * p, device=dev)
    member = torch.nonzero(assoc.mutual.reshape(-1), as_tuple=True)[0]
    if swapped:
        matched = assoc.patch.reshape(-1)[member]
        chan_m = assoc.seed.reshape(-1)[member] * p + member % p
        member = member - member % p + matched
    else:
        chan_m = assoc.seed.reshape(-1)[member] * p + assoc.patch.reshape(-1)[member]
    return torch.cat([roots, chan_m]), torch.cat([roots, member])


def _span_ok(chan: torch.Tensor, mask: torch.Tensor, min_len: int) -> torch.Tensor:
    """Entries of `mask` whose channel has more than min_len entries within `mask` (span = images)."""
    if chan.numel() == 0:
        return mask.clone()
    span = torch.bincount(chan[mask], minlength=int(chan.max()) + 1)
    return mask & (span[chan] > min_len)


def spread_keep(
    x: torch.Tensor,
    rows: torch.Tensor,
    chan: torch.Tensor,
    *,
    rule: str,
    tau: float,
    strict: bool = False,
    chunk: int = TRIM_CHUNK,
) -> torch.Tensor:
    """Which entries the spread trim keeps: x [R, D] features, entry e is row rows[e] of channel chan[e].

    r = distance to the channel mean, sigma = population std of the channel's r; reference keeps
    r <= tau * sigma, mean_plus keeps r <= mean(r) + tau * sigma (`strict`: r < the bound, as the
    released code does; then identical members, sigma = 0, are all trimmed). Computed around each
    channel's first entry (mean = first + mean of the differences, in x's dtype; sigma in float64 from
    the radii minus the first radius), so identical members give r = 0 and sigma = 0 exactly, and
    equal radii sigma = 0.
    """
    if rule not in ("reference", "mean_plus"):
        raise ValueError(f"spread_keep: unknown rule {rule!r}; use reference or mean_plus")
    e = chan.numel()
    if e == 0:
        return torch.zeros(0, dtype=torch.bool, device=chan.device)
    uniq, cid = torch.unique(chan, return_inverse=True)
    c, d = uniq.numel(), x.shape[1]
    dev = x.device
    idx = torch.arange(e, device=dev)
    first = torch.full((c,), e, dtype=torch.int64, device=dev).scatter_reduce_(0, cid, idx, "amin")
    count = torch.bincount(cid, minlength=c).to(torch.float64)
    ref_row = rows[first]

    def diffs(s: int, t: int) -> torch.Tensor:
        return x[rows[s:t]] - x[ref_row[cid[s:t]]]

    mean_diff = torch.zeros((c, d), dtype=x.dtype, device=dev)
    for s in range(0, e, chunk):
        mean_diff.index_add_(0, cid[s : s + chunk], diffs(s, s + chunk))
    mean_diff /= count[:, None].to(x.dtype)
    r = torch.empty(e, dtype=torch.float64, device=dev)
    for s in range(0, e, chunk):
        r[s : s + chunk] = torch.linalg.vector_norm(
            diffs(s, s + chunk) - mean_diff[cid[s : s + chunk]], dim=1
        )
    r_first = r[first]
    dr = r - r_first[cid]
    m = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, cid, dr) / count
    var = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, cid, (dr - m[cid]).square()) / count
    sigma = var.sqrt()
    bound = tau * sigma if rule == "reference" else r_first + m + tau * sigma
    return r < bound[cid] if strict else r <= bound[cid]


def build_channels(
    assoc: Association,
    x: torch.Tensor,
    k: int,
    *,
    min_channel_length: int,
    rule: str,
    tau: float,
    swapped: bool = False,
    strict: bool = False,
    chunk: int = TRIM_CHUNK,
) -> Channels:
    """Entries, span filter, spread trim, span filter again; x [N * P, D] the features by flat position.
    swapped / strict: the released code's channel filing and trim (channel_entries, spread_keep)."""
    chan, flat = channel_entries(assoc, k, swapped=swapped)
    spanned = _span_ok(chan, torch.ones_like(chan, dtype=torch.bool), min_channel_length)
    trimmed = torch.zeros_like(spanned)
    trimmed[spanned] = spread_keep(
        x, flat[spanned], chan[spanned], rule=rule, tau=tau, strict=strict, chunk=chunk
    )
    kept = _span_ok(chan, trimmed, min_channel_length)
    return Channels(chan, flat, spanned, trimmed, kept)


def seed_permutation(n: int, seed_order: str, seed: int) -> torch.Tensor:
    """Association order: position -> pool index (the first assoc_depth positions are the seeds)."""
    if seed_order == "pool":
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


# ---- the method --------------------------------------------------------------------------------
@register
@dataclass
class InReaCh(Method):
    """InReaCh on cached patch tokens; see the module docstring for the pipeline."""

    name: ClassVar[str] = "inreach"
    Settings: ClassVar[type[MethodSettings]] = InReaChSettings
    diagnostic_names: ClassVar[tuple[str, ...]] = (
        "memory_size",
        "channels_kept",
        "trim_frac",
        "memory_injected_frac",
        "positional",
        "transpose_score",
    )

    #: [M, D'] memory patches, centred (D' = D + 2 with positional columns)
    memory: torch.Tensor | None = field(default=None, init=False, repr=False)
    #: [M] pool flat index (image * P + patch) of each memory row, in the FeatureSet's order
    memory_index: torch.Tensor | None = field(default=None, init=False, repr=False)
    #: [N] association order: position -> index in the training FeatureSet (seeds first)
    order: torch.Tensor | None = field(default=None, init=False, repr=False)
    #: [D'] the pool mean that train and test features are centred on
    centre: torch.Tensor | None = field(default=None, init=False, repr=False)
    use_positional: bool = field(default=False, init=False)
    grid: tuple[int, int] | None = field(default=None, init=False)
    #: the scoring search's options, from the settings (set by fit)
    search_options: SearchOptions | None = field(default=None, init=False, repr=False)

    @property
    def cfg(self) -> InReaChSettings:
        assert isinstance(self.settings, InReaChSettings)
        return self.settings

    def _embed(self, fs: FeatureSet, device: str) -> torch.Tensor:
        return embed_patches(fs.patches, self.cfg.aggregation_kernel, self.cfg.embed_dim, device)

    def _positional_on(self, feats: torch.Tensor) -> tuple[bool, float]:
        score = transpose_score(feats)
        if self.cfg.positional != "auto":
            return self.cfg.positional == "on", score
        th = self.cfg.transpose_threshold
        return (th is not None and not math.isnan(score) and score >= th), score

    def _features(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, H, W, D] -> [N, P, D'] with the positional columns when on (not yet centred)."""
        n, h, w, d = feats.shape
        x = feats.reshape(n, h * w, d)
        if not self.use_positional:
            return x
        pos = positional_columns(h, w, self.cfg.pos_embed_weight, feats.device)
        return torch.cat([x, pos.expand(n, -1, -1)], dim=2)

    def work_rows(self, train: FeatureSet, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Pool -> (association rows [N, P, D' + 2] in association order, order [N], transpose score).

        Sets the positional decision, the grid and the centre; the one pool-sized working copy.
        """
        feats = self._embed(train, ctx.device)
        n, h, w, d = feats.shape
        self.grid = (h, w)
        self.use_positional, t_score = self._positional_on(feats)
        width = d + (POS_DIMS if self.use_positional else 0)
        centre = torch.zeros(width, dtype=torch.float32, device=feats.device)
        centre[:d] = image_mean(feats).reshape(h * w, d).mean(dim=0).float()
        if self.use_positional:
            centre[d:] = positional_columns(h, w, self.cfg.pos_embed_weight, feats.device).mean(dim=0)
        self.centre = centre
        order = seed_permutation(n, self.cfg.seed_order, ctx.seed).to(feats.device)
        rows = torch.empty((n, h * w, width + AUGMENT), dtype=torch.float32, device=feats.device)
        step = self.cfg.chunk_images
        for s in range(0, n, step):
            rows[s : s + step] = compare_rows(self._features(feats[order[s : s + step]]), centre)
        return rows, order, t_score

    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        """Memory = the members of the channels that span enough images and survive the spread trim."""
        if train.n == 0:
            raise ValueError(f"{self.name}: empty training pool")
        cfg = self.cfg
        self.diagnostics = {}
        self.search_options = SearchOptions(backend=cfg.knn_backend)
        with torch.no_grad():
            rows, order, t_score = self.work_rows(train, ctx)
            n, p, wide = rows.shape
            k = min(cfg.assoc_depth, n)
            assoc = associate(rows, k, cfg.chunk_images)
            x = rows.reshape(n * p, wide)[:, : wide - AUGMENT]
            ch = build_channels(
                assoc,
                x,
                k,
                min_channel_length=cfg.min_channel_length,
                rule=cfg.spread_rule,
                tau=cfg.max_channel_std,
                swapped=cfg.swapped_filing,
                strict=cfg.strict_trim,
            )
            kept = ch.flat[ch.kept]
            flat = torch.sort(kept).values if cfg.keep_duplicates else torch.unique(kept)
            if flat.numel() == 0:
                raise ValueError(
                    f"{self.name}: empty memory: no channel spans more than min_channel_length="
                    f"{cfg.min_channel_length} images after the '{cfg.spread_rule}' spread trim "
                    f"(pool of {n} images, {k} seeds, {ch.n_kept} channels kept, "
                    f"trim_frac {ch.trim_frac:.3f}); "
                    "a larger pool, a smaller min_channel_length or spread_rule='mean_plus' may help"
                )
            if cfg.max_memory is not None and flat.numel() > cfg.max_memory:
                g = torch.Generator().manual_seed(ctx.seed)
                pick = torch.randperm(flat.numel(), generator=g)[: cfg.max_memory].to(flat.device)
                flat = torch.sort(flat[pick]).values
            self.memory = x[flat].contiguous()
            self.memory_index = order[flat // p] * p + flat % p
            self.order = order
        image_of = (self.memory_index // p).cpu().numpy()
        injected = np.asarray(train.labels)[image_of] == 1  # diagnostics only
        self.diagnostics.update(
            {
                "memory_size": float(flat.numel()),
                "channels_kept": float(ch.n_kept),
                "trim_frac": ch.trim_frac,
                "memory_injected_frac": float(injected.mean()),
                "positional": float(self.use_positional),
                "transpose_score": t_score,
            }
        )
        self._record_history()

    def _record_history(self) -> None:
        row: dict[str, Any] = {"epoch": 0, "iteration": 0}
        row.update({f"diag_{k}": float(v) for k, v in self.diagnostics.items()})
        self.history.append(row)

    # -------------------------------------------------------------- score
    def patch_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, H, W, D] test features -> [N, H, W] distance to the nearest memory patch (exact)."""
        if self.memory is None or self.centre is None or self.search_options is None:
            raise RuntimeError(f"{self.name}: score() before fit()")
        n, h, w, _ = feats.shape
        if (h, w) != self.grid:
            raise ValueError(f"{self.name}: test grid {h}x{w} differs from the training grid {self.grid}")
        q = (self._features(feats) - self.centre).reshape(n * h * w, -1)
        sqd, _ = nearest(q, self.memory, 1, self.search_options)
        d = sqd[:, 0].clamp(min=0.0)
        return (d if self.cfg.squared_distance else d.sqrt()).reshape(n, h, w)

    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        """Maps at ctx.map_size (sigma scaled from 224 px); image score = the maximum of its map."""
        if self.memory is None:
            raise RuntimeError(f"{self.name}: score() before fit()")
        s = ctx.map_size
        if test.n == 0:
            return Scores(np.zeros(0, np.float32), np.zeros((0, s, s), np.float32))
        with torch.no_grad():
            grid = self.patch_scores(self._embed(test, ctx.device))
        maps = grid_to_maps(
            grid,
            size=s,
            sigma=self.cfg.map_sigma * s / SIGMA_MAP_SIZE,
            upsample="nearest" if self.cfg.nearest_upsampling else "bilinear",
        )
        image = maps.reshape(maps.shape[0], -1).max(axis=1)
        return Scores(image=image.astype(np.float32), maps=maps)
