"""Geometry objectives: what a face aligner gives any video (landmarks), read out of the
backbone's features. No AU label enters.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.distributed import all_reduce_sum
from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded
from shards.format import N_LANDMARKS


class Whitening(nn.Module):
    """Running mean and covariance of a target (buffers: checkpointed with the model, and equal on
    every rank since each update sums the global batch), and a map onto its top `components`
    principal axes scaled to unit variance.

    The map is kept continuous from one update to the next: `eigh` returns each axis with an
    arbitrary sign, and axes of near-equal variance in an arbitrary order, so a map taken straight
    from it flips the regression target between steps (on the synthetic landmarks, the leading
    motion axes flipped dozens of times in 500 steps). After each update the new axes are rotated
    within their own span onto the previous ones (orthogonal Procrustes), which changes nothing
    about the whitening (any rotation of whitened data is white) but keeps the target's
    coordinates where they were."""

    def __init__(self, dim: int, components: int, momentum: float):
        super().__init__()
        self.components, self.momentum = components, momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("cov", torch.eye(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("axes", torch.eye(dim, components))  # orthonormal, aligned over updates
        self.register_buffer("map", torch.eye(dim, components))  # x - mean -> whitened coordinates

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:  # [N, dim], finite rows only
        stats = all_reduce_sum(torch.cat([x.new_tensor([len(x)]), x.sum(0), (x.T @ x).flatten()]).double())
        n, d = stats[0].clamp_min(1), x.shape[1]
        mean = stats[1 : 1 + d] / n
        cov = stats[1 + d :].view(d, d) / n - mean[:, None] * mean[None]
        m = 1.0 if self.updates == 0 else self.momentum
        self.mean.lerp_(mean.float(), m)
        self.cov.lerp_(cov.float(), m)
        self._refresh(first=self.updates == 0)
        self.updates += 1

    def _refresh(self, first: bool) -> None:
        values, vectors = torch.linalg.eigh(self.cov.double())  # ascending
        axes, scale = vectors[:, -self.components :], values[-self.components :].clamp_min(1e-12).rsqrt()
        if first:  # no previous axes: a fixed sign convention (largest entry of each axis positive)
            rotation = torch.diag(torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True))[0]))
        else:  # the rotation R of the new span nearest the previous axes: R = polar(axes^T previous)
            u, _, vh = torch.linalg.svd(axes.T @ self.axes.double())
            rotation = u @ vh
        self.axes.copy_(axes @ rotation)
        self.map.copy_((axes * scale) @ rotation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.map


@register("landmark_geometry")
class LandmarkGeometry(Objective):
    """A linear read-out of each frame's pooled backbone features predicts the face's geometry:
    its landmarks in the aligned crop (shape: who and how) and their offset from the mean of its
    view's frames (motion within the clip: expression and head pose; the person cancels). Landmarks
    are what a face aligner gives any video, no AU label enters.

    Both targets are whitened (running PCA, `components` axes each, unit variance): raw landmark
    variance is mostly identity shape and head pose, so without it the small modes that AUs move
    (lip corners, brows, lids) would weigh nothing. With y the whitened targets and W the head,

        L = mean over frames with landmarks of || W f - y ||^2 / (2 * components)

    The read-out is linear on purpose: it asks the features themselves to hold the geometry
    linearly, as a linear probe or a light head downstream will read it. Needs frames aligned by
    their landmarks (`train.align`).
    """

    needs = ("landmarks",)  # aligned ones: shards with landmarks and train.align=true

    def __init__(self, feature_dim: int, components: int = 24, momentum: float = 0.01):
        super().__init__()
        points = N_LANDMARKS * 2
        self.head = nn.Linear(feature_dim, 2 * components)
        self.shape = Whitening(points, components, momentum)
        self.motion = Whitening(points, components, momentum)

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        views = encoded.views
        if views[0].landmarks is None:
            raise ValueError("landmark_geometry needs aligned landmarks: shards with landmarks and train.align=true")
        shape = torch.cat([v.landmarks.flatten(2).float() for v in views])  # [2B, L, 136]
        motion = shape - shape.mean(1, keepdim=True)
        known = torch.isfinite(motion).all(-1)  # a clip with any unknown frame gives no motion
        known &= known.all(1, keepdim=True)
        if self.training:
            self.shape.update(shape[known])
            self.motion.update(motion[known])
        target = torch.cat([self.shape(shape[known]), self.motion(motion[known])], -1)
        features = torch.cat([v.features for v in views]).float()[known]
        loss = (self.head(features) - target).pow(2).mean() if len(target) else features.sum() * 0
        return {self.name: loss}
