"""Local-Net: FUN-AD's point-wise trainable head (adaptor + patch discriminator).

Every patch descriptor x = [cls ; t] (D = 2C) goes through
  adaptor:        Linear(D, D) + LeakyReLU(0.2)                       -> adapted feature z
  discriminator:  Linear(D, 1024), LeakyReLU(0.2), Linear(1024, 128), LeakyReLU(0.2),
                  Linear(128, 1), Sigmoid                             -> anomaly probability p
No spatial mixing, no normalisation, no dropout (4,066,049 parameters at D = 1536).

The discriminator returns logits; the sigmoid is applied by `forward`, and the loss uses
log-sigmoid of the logits, which equals log(Sigmoid(.)) but does not saturate to -inf in fp32.

`adapt_split` computes the adaptor on [cls ; t] without materialising the concatenation: the
first layer splits into W_cls @ cls (once per image) + W_t @ t (per patch), which halves the
adaptor FLOPs and the input traffic of the no-grad pool scoring and of test scoring.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NEG_SLOPE = 0.2
HIDDEN = (1024, 128)


def _init_linear(layer: nn.Linear, generator: torch.Generator | None) -> None:
    """PyTorch's default nn.Linear init, drawn from `generator` (None = the global RNG)."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class LocalNet(nn.Module):
    """Adaptor + discriminator, applied independently to every patch descriptor."""

    def __init__(self, dim: int, generator: torch.Generator | None = None) -> None:
        """Build on the meta device, then initialise from `generator` on the CPU.

        Building on meta avoids consuming the global RNG when a seeded generator is given; drawing on
        the CPU makes the same seed give the same weights on any device. generator=None draws from
        the global RNG (the reference's unseeded init).
        """
        super().__init__()
        if dim < 1:
            raise ValueError(f"LocalNet: descriptor width must be >= 1, got {dim}")
        self.dim = dim
        with torch.device("meta"):
            self.adaptor = nn.Linear(dim, dim)
            self.fc1 = nn.Linear(dim, HIDDEN[0])
            self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
            self.fc3 = nn.Linear(HIDDEN[1], 1)
        self.to_empty(device="cpu")
        for layer in (self.adaptor, self.fc1, self.fc2, self.fc3):
            _init_linear(layer, generator)

    # ---- pieces -------------------------------------------------------------------------
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] raw descriptors -> [..., D] adapted features z."""
        return nn.functional.leaky_relu(self.adaptor(x), NEG_SLOPE)

    def adapt_split(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Adaptor on [cls ; t] without building it: cls [n, C], patches [n, P, C] -> z [n, P, D]."""
        c = cls.shape[-1]
        w = self.adaptor.weight.to(patches.dtype)
        b = self.adaptor.bias.to(patches.dtype)
        glob = torch.addmm(b, cls.to(patches.dtype), w[:, :c].T)  # [n, D], once per image
        z = torch.matmul(patches, w[:, c:].T)
        z += glob[:, None, :]
        return nn.functional.leaky_relu(z, NEG_SLOPE, inplace=True)

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D] adapted features -> [...] discriminator logits."""
        h = nn.functional.leaky_relu(self.fc1(z), NEG_SLOPE)
        h = nn.functional.leaky_relu(self.fc2(h), NEG_SLOPE)
        return self.fc3(h).squeeze(-1)

    # ---- whole net ----------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] raw descriptors -> [...] logits."""
        return self.head_logits(self.adapt(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] raw descriptors -> [...] anomaly probabilities."""
        return torch.sigmoid(self.logits(x))


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
