"""PatchCore (Roth et al., CVPR 2022): a coreset-subsampled memory bank of locally aware patch features.

fit:   patch tokens -> 3x3 local average (neighbourhood aggregation) -> channel width fixed by adaptive
       average pooling -> greedy k-center coreset of ALL training patches (the unlabelled, possibly
       contaminated pool) -> memory bank.
score: distance of each test patch to its nearest memory feature -> grid -> anomaly map; image score
       = the largest patch score, optionally reweighted by how isolated that patch's nearest memory
       feature is (the paper's Eq. 7), which damps scores of patches that land in sparse but normal
       regions of the bank.

Only the patch tokens are used (never the CLS descriptor). The training labels are read for the
`bank_injected_frac` diagnostic only.

Defaults follow the paper. Where the released code (amazon-science/patchcore-inspection) computes
otherwise, a setting says so and `reference_quirks` turns all of them on (docs/protocol.md,
"Rivals as the paper describes them and as their authors released them"):
- `squared_distance`: a patch scores its squared nearest distance (faiss IndexFlatL2), not the distance;
- `reweight=False`: the image score is the plain maximum of the patch scores;
- `aggregation="released"`: each cell's zero-padded k x k neighbourhood, flattened channel-major, is
  adaptive-average-pooled to embed_dim ("zero_pad" keeps our channel pooling and zero-pads only);
- `coreset_start="released"`: the approximate greedy's first pick is the point with the largest mean
  distance to RELEASED_START_POINTS random points (which are not themselves picked);
- `truncate_coreset`: the coreset keeps int(ratio * N) points, not round(ratio * N).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from funad.features import FeatureSet, float32_on
from funad.maps import grid_to_maps
from funad.methods import register
from funad.methods.base import FitContext, Method, MethodSettings, ReleasedSettings, Scores
from funad.methods.coreset import RELEASED_START_POINTS, coreset_size, greedy_coreset
from funad.search import Backend, knn

#: number of memory neighbours b of m* in the image-score reweighting (the paper uses b = 3)
NUM_NEIGHBORS_REWEIGHT = 3
#: values the 3x3 aggregation (`aggregation`) may take; see aggregate_patches and unfold_pool
AGGREGATIONS = ("mean", "zero_pad", "released")
#: largest float32 scratch (values) of the released unfold-and-pool per block of images
UNFOLD_SCRATCH = 1 << 25


class PatchCoreSettings(ReleasedSettings):
    """PatchCore's settings; defaults follow the paper (1 % .. 25 % coreset, 3x3 aggregation); RELEASED
    lists what the released code runs otherwise (the module docstring)."""

    RELEASED: ClassVar[dict[str, Any]] = {
        "squared_distance": True,
        "reweight": False,
        "aggregation": "released",
        "coreset_start": "released",
        "truncate_coreset": True,
    }
    #: the released code's settings came after the first cells (issue 24): hashed away from defaults only
    ADDED_LATER: ClassVar[tuple[str, ...]] = (
        "reference_quirks", "squared_distance", "aggregation", "coreset_start", "truncate_coreset")

    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0)
    coreset_projection: int = Field(128, ge=0)
    aggregation_kernel: int = Field(3, ge=1)
    embed_dim: int | None = Field(1024, ge=1)
    reweight: bool = True
    knn_backend: Backend = "auto"
    map_sigma: float = Field(4.0, ge=0.0)
    # the released code's departures from the paper (reference_quirks turns them all on)
    squared_distance: bool = Field(False, description="patch score: the squared nearest distance")
    aggregation: Literal[AGGREGATIONS] = Field(  # type: ignore[valid-type]
        "mean", description="3x3 aggregation: mean of existing neighbours, zero-padded mean, or released"
    )
    coreset_start: Literal["random", "released"] = Field(
        "random", description="greedy's first pick: a random point, or farthest on average from random points"
    )
    truncate_coreset: bool = Field(False, description="coreset size int(ratio * N), not round(ratio * N)")

    @field_validator("aggregation_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("aggregation_kernel must be odd so the grid keeps its size")
        return v


def aggregate_patches(patches: torch.Tensor, kernel: int, zero_pad: bool = False) -> torch.Tensor:
    """Local neighbourhood aggregation: kernel x kernel mean, stride 1, same-size output.

    [N, H, W, C] -> [N, H, W, C]. Border patches average only the neighbours that exist
    (count_include_pad=False) so they are not pulled towards zero, which matters on tiny grids;
    `zero_pad` (the released code) averages over all k*k places with zeros outside the grid (a 3x3
    edge cell is scaled by 6/9 of its neighbours' mean, a corner by 4/9).
    """
    if kernel == 1:
        return patches
    x = patches.permute(0, 3, 1, 2)
    x = F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=zero_pad)
    return x.permute(0, 2, 3, 1)


def unfold_pool(patches: torch.Tensor, kernel: int, embed_dim: int | None) -> torch.Tensor:
    """The released aggregation and pooling in one: [N, H, W, C] -> [N, H, W, D].

    Each cell's kernel x kernel neighbourhood, zero-padded at the border, is flattened channel-major
    (C * k * k values: channel 0's k*k values, then channel 1's, ...) and adaptive-average-pooled to
    embed_dim values (always, also upwards); None keeps the C * k * k values. A bin spans part of one
    channel's neighbourhood, or straddles two channels, so it is not the 3x3 mean of any channel unless
    C * k * k = k * k * embed_dim. The released code pools each backbone layer so and then the layers'
    concatenation; cached features hold the layers concatenated, so they are pooled as one layer.
    """
    n, h, w, c = patches.shape
    u = F.unfold(patches.permute(0, 3, 1, 2), kernel, padding=kernel // 2)  # [N, C*k*k, H*W]
    v = u.transpose(1, 2).reshape(n * h * w, 1, c * kernel * kernel)
    if embed_dim is not None:
        v = F.adaptive_avg_pool1d(v, embed_dim)
    return v.reshape(n, h, w, -1)


def pool_channels(x: torch.Tensor, embed_dim: int | None) -> torch.Tensor:
    """Channels reduced to `embed_dim` by adaptive average pooling over the channel axis.

    [..., C] -> [..., D]; unchanged when embed_dim is None or >= C. This is the paper's
    parameter-free projection to a fixed feature width.
    """
    c = x.shape[-1]
    if embed_dim is None or embed_dim >= c:
        return x
    lead = x.shape[:-1]
    return F.adaptive_avg_pool1d(x.reshape(-1, 1, c), embed_dim).reshape(*lead, embed_dim)


def embed_patches(
    patches: np.ndarray,
    kernel: int,
    embed_dim: int | None,
    device: torch.device | str = "cpu",
    chunk_images: int = 16,
    aggregation: str = "mean",
) -> torch.Tensor:
    """[N, H, W, C] float16 (maybe a read-only memmap) -> [N, H, W, D] float32 PatchCore features.

    Works through `chunk_images` images at a time so only one small float32 copy of the raw
    features exists at once; the memmap itself is only read. aggregation: "mean" (aggregate_patches,
    then pool_channels), "zero_pad" (the same with a zero-padded mean) or "released" (unfold_pool).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"embed_patches: unknown aggregation {aggregation!r}; use {', '.join(AGGREGATIONS)}")
    n, h, w, c = patches.shape
    if aggregation == "released":
        d = c * kernel * kernel if embed_dim is None else embed_dim
        step = max(1, min(chunk_images, UNFOLD_SCRATCH // max(1, h * w * c * kernel * kernel)))
    else:
        d = c if embed_dim is None or embed_dim >= c else embed_dim
        step = chunk_images
    out = torch.empty(n, h, w, d, dtype=torch.float32, device=device)
    with torch.no_grad():
        for s in range(0, n, step):
            raw = float32_on(patches[s : s + step], device)
            if aggregation == "released":
                out[s : s + step] = unfold_pool(raw, kernel, embed_dim)
            else:
                agg = aggregate_patches(raw, kernel, zero_pad=aggregation == "zero_pad")
                out[s : s + step] = pool_channels(agg, embed_dim)
    return out


def reweight_factors(d_star: torch.Tensor, d_support: torch.Tensor) -> torch.Tensor:
    """Image-score weights w = 1 - exp(d*) / sum_j exp(d_j), computed as 1 - exp(d* - logsumexp(d)).

    d_star:    [Q] distance ||m_test - m*|| of the max-scoring test patch to its nearest memory m*.
    d_support: [Q, b] distances ||m_test - m|| to the b nearest memory features of m* (m* included).
    When m* sits in a dense part of the bank (its neighbours about as close to m_test as m*) the
    weight drops towards 1 - 1/b; when m* is itself a rare, isolated memory feature the other terms
    dominate and the weight approaches 1, so the score is damped less (the paper's Eq. 7).
    """
    return 1.0 - torch.exp(d_star - torch.logsumexp(d_support, dim=1))


def support_indices(bank: torch.Tensor, m_star: torch.Tensor, b: int, backend: str) -> torch.Tensor:
    """[Q, b] indices: m* followed by its b-1 nearest OTHER memory features.

    m* is placed first explicitly (rather than trusting it to be its own nearest neighbour), so
    duplicate memory features cannot displace it.
    """
    q = m_star.shape[0]
    k = min(b + 1, bank.shape[0])
    _, idx = knn(bank[m_star], bank, k=k, backend=backend)
    idx = idx.to(m_star.device)
    others = idx != m_star[:, None]
    order = torch.argsort((~others).to(torch.int8), dim=1, stable=True)
    rest = torch.gather(idx, 1, order)[:, : b - 1]
    return torch.cat([m_star.reshape(q, 1), rest], dim=1)


class Candidates(NamedTuple):
    """The coreset's candidate patches: flat indices [M], their weights [M] on test distances (None = 1),
    and which of them the greedy may pick ([M] bool; None = all; SoftPatch's in-greedy removal)."""

    index: torch.Tensor
    weight: torch.Tensor | None = None
    pickable: torch.Tensor | None = None


@register
@dataclass
class PatchCore(Method):
    """PatchCore on cached patch tokens; see the module docstring for the pipeline."""

    name: ClassVar[str] = "patchcore"
    Settings: ClassVar[type[MethodSettings]] = PatchCoreSettings
    diagnostic_names: ClassVar[tuple[str, ...]] = ("bank_size", "bank_injected_frac")

    bank: torch.Tensor | None = field(default=None, init=False, repr=False)
    #: per-memory-feature factor on test distances (None = 1 everywhere; SoftPatch sets it)
    bank_weight: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def cfg(self) -> PatchCoreSettings:
        assert isinstance(self.settings, PatchCoreSettings)
        return self.settings

    # ---------------------------------------------------------------- fit
    def _embed(self, fs: FeatureSet, device: str) -> torch.Tensor:
        cfg = self.cfg
        return embed_patches(
            fs.patches, cfg.aggregation_kernel, cfg.embed_dim, device, aggregation=cfg.aggregation
        )

    def _candidates(self, feats: torch.Tensor, ctx: FitContext, train: FeatureSet) -> Candidates:
        """The coreset's candidates; PatchCore keeps every patch, unweighted."""
        n, h, w, _ = feats.shape
        return Candidates(torch.arange(n * h * w, device=feats.device))

    def fit(self, train: FeatureSet, ctx: FitContext) -> None:
        """Build the memory bank from every training patch (the pool is unlabelled)."""
        if train.n == 0:
            raise ValueError(f"{self.name}: empty training pool")
        self.diagnostics = {}
        feats = self._embed(train, ctx.device)  # [N, H, W, D]
        n, h, w, d = feats.shape
        cfg = self.cfg
        cand = self._candidates(feats, ctx, train)
        flat = feats.reshape(-1, d)
        pool = flat if cand.index.numel() == flat.shape[0] else flat[cand.index]  # no copy when all are
        n_select = coreset_size(pool.shape[0], cfg.coreset_ratio, truncate=cfg.truncate_coreset)
        if n_select == pool.shape[0]:
            pick = torch.arange(n_select, device=pool.device)
        else:
            pick = greedy_coreset(
                pool,
                n_select,
                projection=cfg.coreset_projection,
                seed=ctx.seed,
                start_points=RELEASED_START_POINTS if cfg.coreset_start == "released" else 0,
                pickable=cand.pickable,
            )
        chosen = cand.index[pick]
        self.bank = flat[chosen].contiguous()
        self.bank_weight = None if cand.weight is None else cand.weight[pick].contiguous()
        image_of = (chosen // (h * w)).cpu().numpy()
        injected = np.asarray(train.labels)[image_of] == 1  # diagnostics only
        self.diagnostics.update(
            {"bank_size": float(chosen.numel()), "bank_injected_frac": float(injected.mean())}
        )
        self._record_history()

    def _record_history(self) -> None:
        row: dict[str, Any] = {"epoch": 0, "iteration": 0}
        row.update({f"diag_{k}": float(v) for k, v in self.diagnostics.items()})
        self.history.append(row)

    # -------------------------------------------------------------- score
    def patch_scores(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch scores [Q] (weighted distance, or squared distance, to the nearest memory), raw
        distances [Q], nn index [Q]."""
        if self.bank is None:
            raise RuntimeError(f"{self.name}: score() before fit()")
        sqd, idx = knn(feats, self.bank, k=1, backend=self.cfg.knn_backend)
        sq = sqd[:, 0].to(feats.device).clamp(min=0.0)
        dist = sq.sqrt()
        nn_idx = idx[:, 0].to(feats.device)
        base = sq if self.cfg.squared_distance else dist
        score = base if self.bank_weight is None else base * self.bank_weight[nn_idx]
        return score, dist, nn_idx

    def score(self, test: FeatureSet, ctx: FitContext) -> Scores:
        """Image scores (max patch score, reweighted) and maps at ctx.map_size."""
        if self.bank is None:
            raise RuntimeError(f"{self.name}: score() before fit()")
        if test.n == 0:
            s = ctx.map_size
            return Scores(np.zeros(0, np.float32), np.zeros((0, s, s), np.float32))
        feats = self._embed(test, ctx.device)
        n, h, w, d = feats.shape
        with torch.no_grad():
            score, dist, nn_idx = self.patch_scores(feats.reshape(-1, d))
            grid = score.reshape(n, h * w)
            s_max, arg = grid.max(dim=1)
            image = s_max
            b = min(NUM_NEIGHBORS_REWEIGHT, self.bank.shape[0])
            if self.cfg.reweight and b >= 2:
                flat_arg = torch.arange(n, device=grid.device) * (h * w) + arg
                m_test = feats.reshape(-1, d)[flat_arg]
                support = support_indices(self.bank, nn_idx[flat_arg], b, self.cfg.knn_backend)
                d_support = torch.linalg.vector_norm(m_test[:, None, :] - self.bank[support], dim=-1)
                image = reweight_factors(d_support[:, 0], d_support) * s_max
            maps = grid_to_maps(grid.reshape(n, h, w), size=ctx.map_size, sigma=self.cfg.map_sigma)
        return Scores(image=image.cpu().numpy().astype(np.float32), maps=maps)
