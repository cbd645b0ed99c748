"""Motion objectives: what a clip's own pixels say about how the face moves, with no landmark and
no label (WSRTL's single-image optical flow, Yan et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import all_reduce_sum
from pretrain.flow import dense_flow, luma
from pretrain.objectives.geometry import Whitening
from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded
from shards.geometry import face_mask


class FlowReadout(Objective):
    """What the flow objectives share: a flow field pooled to a `grid` x `grid` field over the face
    (background cells masked out by `shards.geometry.face_mask`, which reads no landmarks),
    whitened (running PCA, `components` axes, unit variance, as `landmark_geometry` does: raw flow
    is mostly head motion, and whitening makes the small modes that AUs move weigh as much), and
    predicted by a linear read-out of the pooled backbone features. With y the whitened field and
    W the read-out of inputs x,

        L = mean over fields || W x - y ||^2 / components

    Logged beside it: `NAME_epe`, the mean end-point error (pixels) of the read-out's field mapped
    back from the whitened axes, over the face's cells.

    With `rigid: false` the field keeps only what an affine motion of the whole face cannot
    explain: the least-squares affine field over the face's cells is subtracted (a fixed linear
    projection, `rigid_residual`). Head drift, zoom and in-plane turns are affine on an aligned
    crop; the muscles' motion is not."""

    def __init__(self, feature_dim: int, grid: int, components: int, momentum: float, rigid: bool = True):
        super().__init__()
        self.grid = grid
        self.register_buffer("cells", face_mask(grid).flatten(), persistent=False)
        self.register_buffer("keep", rigid_residual(grid, self.cells) if not rigid else None, persistent=False)
        dim = 2 * int(self.cells.sum())
        self.whitening = Whitening(dim, min(components, dim), momentum)
        self.head = nn.Linear(feature_dim, self.whitening.components)

    def pool(self, flow: torch.Tensor) -> torch.Tensor:
        """Flow [N, 2, H, W] -> the face's cells [N, 2 * cells] (x components, then y)."""
        field = F.adaptive_avg_pool2d(flow, self.grid).flatten(2)[:, :, self.cells]
        if self.keep is not None:
            field = field @ self.keep
        return field.flatten(1)

    def readout(self, features: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.training:
            self.whitening.update(target)
        prediction = self.head(features)
        loss = (prediction - self.whitening(target)).pow(2).mean()
        with torch.no_grad():  # the read-out back in pixels: pinv of the whitening map
            back = prediction.detach() @ torch.linalg.pinv(self.whitening.map) + self.whitening.mean
            epe = (back - target).view(len(target), 2, -1).norm(dim=1).mean()
        return {self.name: loss, f"{self.name}_epe": epe}


def rigid_residual(grid: int, cells: torch.Tensor) -> torch.Tensor:
    """[C, C] projection of one flow component over the C face cells onto what an affine field
    (a + b x + c y, the same for x and y components) leaves: I - A pinv(A)."""
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    a = torch.stack([torch.ones_like(x), x, y], -1).flatten(0, 1)[cells]  # [C, 3]
    return (torch.eye(len(a), dtype=torch.float64) - a @ torch.linalg.pinv(a)).float()


def frames_of(encoded: Encoded, name: str) -> list:
    views = [v for v in encoded.views if v.frames is not None]
    if not views:
        raise ValueError(f"{name} needs the views' frames (pretrain.augment.make_views gives them)")
    return views


@register("flow")
class MotionFlow(FlowReadout):
    """Dense optical flow between frames of each view (OpenCV DIS on the aligned frames before
    augmentation), read out of the backbone's features (`FlowReadout`).

    `source` says from what: `"frame"`, frame i alone predicts the flow from i to j (WSRTL's
    single-image flow: the motion its muscles are making); `"pair"`, the change of features
    f(j) - f(i) predicts it (the person and the light cancel in the difference, so the features
    must hold the face's state linearly, as a linear probe reads it). `pairs` says between which
    frames: `"consecutive"` (i, i+1), or `"all"` (every i < j of the view).

    How far apart the frames are is what matters most: over wider gaps the muscles have moved
    further than DIS's noise and the head's drift. The gap is the data's window (`data.stride`);
    on the synthetic benchmark stride 5 beat stride 2 in every probe draw, and `pairs: all` added
    nothing at stride 4 or 5 (README, "Pixels-only objectives").
    """

    def __init__(self, feature_dim: int, grid: int = 8, components: int = 24, momentum: float = 0.01,
                 source: str = "pair", pairs: str = "consecutive", rigid: bool = True):  # fmt: skip
        if source not in ("frame", "pair"):
            raise ValueError(f"flow source must be 'frame' or 'pair', got {source!r}")
        if pairs not in ("consecutive", "all"):
            raise ValueError(f"flow pairs must be 'consecutive' or 'all', got {pairs!r}")
        super().__init__(feature_dim, grid, components, momentum, rigid)
        self.source, self.pairs = source, pairs

    def frame_pairs(self, length: int) -> tuple[list[int], list[int]]:
        if self.pairs == "consecutive":
            return list(range(length - 1)), list(range(1, length))
        first, second = zip(*[(i, j) for i in range(length) for j in range(i + 1, length)])
        return list(first), list(second)

    def field(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, L, 3, H, W] -> flow from frame i to frame j of each pair over the
        face's cells, [B, P, 2 * cells], in pixels."""
        b = frames.shape[0]
        first, second = self.frame_pairs(frames.shape[1])
        flow = dense_flow(frames[:, first].flatten(0, 1), frames[:, second].flatten(0, 1))  # [N, 2, H, W]
        return self.pool(flow).view(b, len(first), -1)

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        views = frames_of(encoded, self.name)
        target = torch.cat([self.field(v.frames).flatten(0, 1) for v in views])
        features = torch.cat([self._inputs(v.features.float()).flatten(0, 1) for v in views])
        return self.readout(features, target)

    def _inputs(self, features: torch.Tensor) -> torch.Tensor:  # [B, L, F] -> [B, P, F]
        first, second = self.frame_pairs(features.shape[1])
        return features[:, second] - features[:, first] if self.source == "pair" else features[:, first]


def standard_grey(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float [N, size, size] luma, each image at zero mean and unit variance
    (so that faces of another skin tone or light still match a template's brightness)."""
    grey = F.interpolate(luma(frames)[:, None], size=size, mode="bilinear", antialias=True, align_corners=False)[:, 0]
    mean, std = grey.mean((1, 2), keepdim=True), grey.std((1, 2), keepdim=True).clamp_min(1e-3)
    return (grey - mean) / std


def to_uint8(z: torch.Tensor) -> torch.Tensor:
    """Standardised grey -> uint8, 3 standard deviations each side of mid-grey."""
    return (128 + 42 * z).round().clamp(0, 255).to(torch.uint8)


@register("template_flow")
class TemplateFlow(FlowReadout):
    """Dense optical flow from the mean face to each frame, read out of that frame's features
    (`FlowReadout`): where each part of this face lies against the average aligned face, from
    pixels alone. It is the pixels' own stand-in for aligned landmarks (the person's shape and
    expression, as `landmark_geometry` reads them from a face aligner), with no aligner and no
    label: the template is a running mean (`template_momentum`) of every aligned frame seen, in
    standardised grey at `size` px (a buffer, checkpointed, the same on every rank), and the flow
    is computed at that size on frames standardised the same way.
    """

    def __init__(self, feature_dim: int, grid: int = 8, components: int = 24, momentum: float = 0.01,
                 size: int = 64, template_momentum: float = 0.01, rigid: bool = True):  # fmt: skip
        super().__init__(feature_dim, grid, components, momentum, rigid)
        self.size, self.template_momentum = size, template_momentum
        self.register_buffer("template", torch.zeros(size, size))
        self.register_buffer("template_updates", torch.zeros((), dtype=torch.long))

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        views = frames_of(encoded, self.name)
        grey = standard_grey(torch.cat([v.frames.flatten(0, 1) for v in views]), self.size)
        if self.training:
            with torch.no_grad():
                stats = all_reduce_sum(torch.cat([grey.new_tensor([len(grey)]), grey.sum(0).flatten()]))
                mean = (stats[1:] / stats[0].clamp_min(1)).view_as(self.template)
                self.template.lerp_(mean, 1.0 if self.template_updates == 0 else self.template_momentum)
                self.template_updates += 1
        flow = dense_flow(to_uint8(self.template).expand(len(grey), -1, -1), to_uint8(grey))
        features = torch.cat([v.features.float().flatten(0, 1) for v in views])
        return self.readout(features, self.pool(flow))
