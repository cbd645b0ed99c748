"""Temporal objectives: what a clip's own time tells about its frames, with no label and no
identity: frames close in time share their AU state, and two views of one clip share its course.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import gather_with_grad
from pretrain.model import l2n
from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded


@register("temporal_margin")
class TemporalMargin(Objective):
    """Frames close in time pulled together, frames far apart pushed away, with a margin that
    grows with the time gap (temporal contrastive learning of CLP, Li & Shan 2023).

    For each view, with z_i the L2-normalised AU embedding of frame i at time t_i, and
    d_ij = ||z_i - z_j||^2, over all triplets (a, p, n) of one clip with |t_a - t_p| < |t_a - t_n|:

        L = mean relu( d_ap - d_an + margin * (|t_a - t_n| - |t_a - t_p|) / G )

    where G is the largest time gap in the view. p may be a itself (gap 0): then the term asks
    every frame n to lie at least margin * |t_a - t_n| / G from the anchor, so distances grow
    with time gaps even where the ranking already holds. The loss depends only on distances and time
    gaps, so it is invariant to rotations of the embedding space, to shifting or reversing time,
    and to the order of clips in the batch.
    """

    def __init__(self, embed_dim: int, margin: float = 0.5):
        super().__init__()
        self.margin = margin

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        losses = [self.view_loss(l2n(v.au), v.time) for v in encoded.views]
        return {self.name: torch.stack(losses).mean()}

    def view_loss(self, z: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(z, z).pow(2)  # [B, L, L]
        gap = (time[:, :, None] - time[:, None, :]).abs()  # [B, L, L]
        scale = gap.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        # [B, a, p, n]: positive p nearer in time to anchor a than negative n
        valid = gap[:, :, :, None] < gap[:, :, None, :]
        slack = self.margin * (gap[:, :, None, :] - gap[:, :, :, None]) / scale[..., None]
        hinge = F.relu(d[:, :, :, None] - d[:, :, None, :] + slack)
        return (hinge * valid).sum() / valid.sum().clamp_min(1)


@register("clip_contrastive")
class ClipContrastive(Objective):
    """InfoNCE between the two views of each clip, through the temporal module (the contrastive
    stage of Sanchez et al. 2020). With c, c' the projected, L2-normalised clip embeddings of the
    views, and the other clips of the global batch (all ranks, gathered with gradients) as
    negatives:

        L = 1/2 [ CE(c_i . C'^T / tau, i) + CE(c'_i . C^T / tau, i) ]
    """

    def __init__(self, embed_dim: int, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.head = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        # logits in fp32: under bf16 autocast they would be rounded to ~0.06 at tau = 0.1
        first, second = (l2n(self.head(v.clip).float()) for v in encoded.views[:2])
        all_first, offset = gather_with_grad(first)
        all_second, _ = gather_with_grad(second)
        targets = torch.arange(first.shape[0], device=first.device) + offset
        loss = 0.5 * (
            F.cross_entropy(first @ all_second.T / self.temperature, targets)
            + F.cross_entropy(second @ all_first.T / self.temperature, targets)
        )
        return {self.name: loss}
