"""Heads on a backbone's pooled features: linear, MLP, temporal (over the frames of a clip), and
a gradient-reversal identity head for identity-adversarial fine-tuning (FMAE-IAT)."""

from __future__ import annotations

import torch
from torch import nn


def make_head(kind: str, in_features: int, outputs: int, hidden: int = 256) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, outputs)
    if kind == "mlp":
        return nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(),
                             nn.Linear(hidden, outputs))  # fmt: skip
    if kind == "temporal":
        return TemporalHead(in_features, outputs, hidden)
    raise ValueError(f"head must be linear, mlp or temporal, got {kind!r}")


class TemporalHead(nn.Module):
    """Per-frame outputs from a clip's features [B, T, F] through a small temporal convolution
    (Sanchez et al.): the loss is taken only at the frames that have labels."""

    def __init__(self, in_features: int, outputs: int, hidden: int = 256):
        super().__init__()
        self.proj = nn.Linear(in_features, hidden)
        self.conv = nn.Sequential(nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU())  # fmt: skip
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # single frames: a clip of one
            return self.forward(x[:, None])[:, 0]
        h = self.proj(x)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.out(h)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class IdentityAdversary(nn.Module):
    """Predicts identity from features through a gradient reversal: the head learns identity while
    the backbone is pushed to drop it."""

    def __init__(self, in_features: int, identities: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.classifier = nn.Sequential(nn.Linear(in_features, 256), nn.GELU(), nn.Linear(256, identities))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(_ReverseGrad.apply(features, self.scale))
