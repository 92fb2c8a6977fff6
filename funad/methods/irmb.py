"""FUN-AD's pseudo-labelling steps (IRMB: the iteratively reconstructed memory bank), vectorised.

Every function here is a pure tensor function (no Python loops over patches) so that the training
loop in `funad.methods.funad` stays a short sequence of calls and each step can be tested against
a brute-force loop. See docs/funad-method.md, section 3. The nearest-neighbour searches these
steps consume (bank search, mutual pairs) live in `funad.search`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from funad.features import TensorRows
from funad.methods.localnet import LocalNet
from funad.search import matmul_precision, search_dtype


# ---- pool scoring ------------------------------------------------------------------------
@torch.no_grad()
def score_pool(
    net: LocalNet,
    cls: torch.Tensor | TensorRows,
    patches: torch.Tensor | TensorRows,
    *,
    chunk: int = 16,
    precision: str = "fp32",
    z_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One no-grad pass over images: (image score = max patch probability [N] fp32, z [N, P, D]).

    cls [N, C], patches [N, P, C] (any float dtype, e.g. fp16 on the device; or the pool's shared
    `TensorRows`: only slices are read). z is written into `z_out` when given (a buffer reused
    across iterations), so the bank and the batch queries are gathered from this one pass, never
    recomputed. In bf16 mode z is stored in bf16.
    """
    n, p, c = patches.shape
    dt = search_dtype(precision)
    if z_out is None:
        z_out = torch.empty((n, p, 2 * c), dtype=dt, device=patches.device)
    scores = torch.empty(n, dtype=torch.float32, device=patches.device)
    auto = (
        torch.autocast(device_type=patches.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    # bf16: the inputs are converted once, straight from the cache dtype (autocast would round
    # an fp32 copy to the same bf16 values)
    dt_in = torch.bfloat16 if precision == "bf16" else torch.float32
    with matmul_precision(precision), auto:
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = net.adapt_split(cls[s:e].to(dt_in), patches[s:e].to(dt_in))
            logits = net.head_logits(z)
            scores[s:e] = torch.sigmoid(logits.float()).amax(dim=1)
            z_out[s:e] = z
    return scores, z_out


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) over all elements; all zeros when max == min (no division by 0)."""
    x = x.float()
    lo, hi = x.min(), x.max()
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


def select_candidates(image_scores: torch.Tensor, eta: float) -> torch.Tensor:
    """Candidate normal images: min-max normalised pool score < eta -> bool [N]."""
    return minmax(image_scores) < eta


def draw_bank_images(candidates: torch.Tensor, keep_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """R: floor(keep_ratio*|C|) candidates uniformly without replacement (>= 1; r >= 1 keeps all).

    Returns the sorted image indices [|R|] (int64). Uniform: random keys for every image, non-candidates
    pushed to +inf, the |R| smallest kept. Consumes N uniforms from `generator` whatever |C| is.
    """
    n_cand = int(candidates.sum().item())
    if n_cand == 0:
        raise ValueError("draw_bank_images: no candidate images (eta must be > 0)")
    n_keep = n_cand if keep_ratio >= 1 else max(1, int(keep_ratio * n_cand))
    keys = torch.rand(candidates.shape[0], generator=generator, device=generator.device)
    keys = keys.to(candidates.device).masked_fill(~candidates, float("inf"))
    chosen = torch.topk(keys, n_keep, largest=False, sorted=False).indices
    return torch.sort(chosen).values


# ---- distances -> pseudo-labels ------------------------------------------------------------
def skip_self_distance(sqdist: torch.Tensor, eps0: float) -> torch.Tensor:
    """Spec step 4: zero distances < eps0, then d = the first nonzero of δ1..δk (0 if none).

    For k = 2 this is `d = δ1 if δ1 > 0 else δ2`: an exact self-match (the batch image is in the
    bank) is skipped. Missing neighbours (+inf, bank smaller than k) count as 0.
    """
    d = torch.where(torch.isinf(sqdist) | (sqdist < eps0), 0.0, sqdist)
    nonzero = d > 0
    first = nonzero.to(torch.int8).argmax(dim=1, keepdim=True)  # first True (0 if none)
    return torch.where(nonzero.any(dim=1), d.gather(1, first)[:, 0], 0.0)


def own_excluded_distance(sqdist: torch.Tensor) -> torch.Tensor:
    """exclude_own_image: d = δ1 over the other images' patches (no eps0 rule; +inf -> 0)."""
    d1 = sqdist[:, 0]
    return torch.where(torch.isinf(d1), 0.0, d1)


def pseudo_labels(
    d: torch.Tensor, tau_n: float, tau_c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch min-max d -> d̃; labels y = d̃ > tau_n (bool); uncertain band tau_n < d̃ < tau_c (bool)."""
    dn = minmax(d)
    y = dn > tau_n
    band = y & (dn < tau_c)
    return y, band, dn


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Per-channel sigma [D]: max over grid positions of the unbiased across-batch std.

    x: raw descriptors [B, P, D] of the batch. With a single image (B = 1) the unbiased std is
    undefined; we return zeros (no noise).
    """
    if x.shape[0] < 2:
        return torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
    x = x.float()
    # two-pass (mean, then squared deviations): faster than torch.std's reduction over dim 0
    dev = x - x.mean(dim=0)
    return dev.square_().sum(dim=0).div_(x.shape[0] - 1).sqrt_().amax(dim=0)


def add_band_noise(
    x: torch.Tensor,
    band: torch.Tensor,
    sigma: torch.Tensor | float,
    generator: torch.Generator,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """x with N(0, sigma_c^2) noise added to the band rows only (other rows bit-identical).

    x [P, D] raw descriptors, band [P] bool, sigma [D] or a scalar. A new tensor unless `inplace`
    (the training loop noises its own freshly built input buffer, saving a copy).
    """
    out = x if inplace else x.clone()
    rows = torch.nonzero(band, as_tuple=True)[0]
    if rows.numel() > 0:
        noise = torch.randn((rows.numel(), x.shape[1]), generator=generator, device=generator.device)
        out[rows] += noise.to(x.device, x.dtype) * sigma
    return out


# ---- losses -------------------------------------------------------------------------------
def balanced_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-mean_{y=1} log p - mean_{y=0} log(1-p), p = sigmoid(logits); an empty class term is dropped.

    Written with log-sigmoid of the logits: the same value as log(Sigmoid(.)) without saturating.
    """
    pos = y.bool()
    neg = ~pos
    lp = F.logsigmoid(logits)
    ln = F.logsigmoid(-logits)
    n_pos = pos.sum().clamp(min=1)
    n_neg = neg.sum().clamp(min=1)
    return -(lp * pos).sum() / n_pos - (ln * neg).sum() / n_neg


def mutual_smoothness(p_u: torch.Tensor, p_v: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L_MS = 0.5 * mean |p_u - p_v| ("l1") or 0.5 * mean (p_u - p_v)^2 ("l2"); 0 without pairs."""
    if p_u.numel() == 0:
        return p_u.new_zeros(())
    diff = p_u - p_v
    if kind == "l1":
        return 0.5 * diff.abs().mean()
    if kind == "l2":
        return 0.5 * diff.pow(2).mean()
    raise ValueError(f"mutual_smoothness: unknown kind {kind!r}; use l1 or l2")
