"""Motion objectives: what a clip's own pixels say about how the face moves, with no landmark and
no label (WSRTL's single-image optical flow, Yan et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.flow import dense_flow
from pretrain.objectives.geometry import Whitening
from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded
from shards.geometry import face_mask


@register("flow")
class MotionFlow(Objective):
    """Dense optical flow between consecutive frames of each view (OpenCV DIS on the aligned frames
    before augmentation), pooled to a `grid` x `grid` field over the face (background cells masked
    out by `shards.geometry.face_mask`, which reads no landmarks), predicted by a linear read-out
    of the pooled backbone features.

    `source` says from what: `"frame"`, frame t alone predicts the flow from t to t+1 (WSRTL's
    single-image flow: the motion its muscles are making); `"pair"`, the change of features
    f(t+1) - f(t) predicts it (the person and the light cancel in the difference, so the features
    must hold the face's state linearly, as a linear probe reads it). The target is whitened
    (running PCA, `components` axes, unit variance, as `landmark_geometry` does): raw flow is mostly
    head motion, and whitening makes the small modes that AUs move weigh as much. With y the
    whitened flow field and W the read-out,

        L = mean over pairs || W x - y ||^2 / components

    Logged beside it: `flow_epe`, the mean end-point error (pixels at the frame's size) of the
    read-out's field mapped back from the whitened axes, over the face's cells.
    """

    def __init__(self, feature_dim: int, grid: int = 8, components: int = 24, momentum: float = 0.01,
                 source: str = "pair"):  # fmt: skip
        super().__init__()
        if source not in ("frame", "pair"):
            raise ValueError(f"flow source must be 'frame' or 'pair', got {source!r}")
        self.grid, self.source = grid, source
        self.register_buffer("cells", face_mask(grid).flatten(), persistent=False)
        dim = 2 * int(self.cells.sum())
        self.whitening = Whitening(dim, min(components, dim), momentum)
        self.head = nn.Linear(feature_dim, self.whitening.components)

    def field(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, L, 3, H, W] -> flow between consecutive frames over the face's cells,
        [B, L-1, 2 * cells], in pixels."""
        b, length = frames.shape[:2]
        flow = dense_flow(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1))  # [N, 2, H, W]
        pooled = F.adaptive_avg_pool2d(flow, self.grid).flatten(2)[:, :, self.cells]  # [N, 2, cells]
        return pooled.flatten(1).view(b, length - 1, -1)

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        views = [v for v in encoded.views if v.frames is not None]
        if not views:
            raise ValueError("flow needs the views' frames (pretrain.augment.make_views gives them)")
        target = torch.cat([self.field(v.frames).flatten(0, 1) for v in views])
        features = torch.cat([self._inputs(v.features.float()).flatten(0, 1) for v in views])
        if self.training:
            self.whitening.update(target)
        prediction = self.head(features)
        loss = (prediction - self.whitening(target)).pow(2).mean()
        with torch.no_grad():  # the read-out back in pixels: pinv of the whitening map
            back = prediction.detach() @ torch.linalg.pinv(self.whitening.map) + self.whitening.mean
            epe = (back - target).view(len(target), 2, -1).norm(dim=1).mean()
        return {self.name: loss, f"{self.name}_epe": epe}

    def _inputs(self, features: torch.Tensor) -> torch.Tensor:  # [B, L, F] -> [B, L-1, F]
        return features[:, 1:] - features[:, :-1] if self.source == "pair" else features[:, :-1]
