"""Regional objectives: what the places where AUs act look like and how they relate, from pixels
(RoI inpainting, WSRTL, Yan et al.; AU attention regions with optimal-transport relations,
Song & Liu). AU places come from `shards.geometry`'s mean face on the aligned crop, never from a
frame's landmarks or labels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import gather_with_grad
from pretrain.model import l2n
from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded
from shards.geometry import MEAN_FACE, au_centres


def region_centres() -> torch.Tensor:
    """The distinct AU centres of the mean face [K, 2] in the aligned crop's unit square (AUs that
    share a place, such as AU12, 14 and 15 at the lip corners, count once)."""
    centres = torch.as_tensor(au_centres(MEAN_FACE)).reshape(-1, 2)
    return torch.unique(centres.mul(1000).round(), dim=0) / 1000


def patch_masks(centres: torch.Tensor, chosen: torch.Tensor, size: int, side: float) -> torch.Tensor:
    """bool [N, 1, size, size]: squares of `side` (a share of the crop's side) around the centres
    [K, 2] that `chosen` [N, R] (indices) picks for each image."""
    pixel = (torch.arange(size, device=chosen.device) + 0.5) / size
    picked = centres.to(chosen.device)[chosen]  # [N, R, 2]
    inside_x = (pixel[None, None, None, :] - picked[..., 0, None, None]).abs() <= side / 2
    inside_y = (pixel[None, None, :, None] - picked[..., 1, None, None]).abs() <= side / 2
    return (inside_x & inside_y).any(1, keepdim=True)


class Upsampler(nn.Module):
    """A light decoder from a backbone's feature map [N, C, h, w] to an image [N, out, S, S]: a
    1x1 projection, then two 3x3 convolutions at S/4 and S/2 and one at S, each after a bilinear
    resize, whatever the map's size (training-only: never published)."""

    def __init__(self, channels: int, width: int = 64, out: int = 3):
        super().__init__()
        self.project = nn.Conv2d(channels, width, 1)
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU()) for _ in range(2))
        self.out = nn.Conv2d(width, out, 3, padding=1)

    def forward(self, maps: torch.Tensor, size: int) -> torch.Tensor:
        x = self.project(maps)
        for stage, side in zip(self.stages, (max(1, size // 4), max(1, size // 2))):
            x = stage(F.interpolate(x, size=side, mode="bilinear", align_corners=False))
        return self.out(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


@register("roi_inpaint")
class RoiInpaint(Objective):
    """Random AU patches masked out and rebuilt from the backbone's feature map (WSRTL's RoI
    inpainting). For the first `frames` frames of view 0 (aligned, before augmentation, so the
    mean face's AU centres are where the AUs are), `regions` of the mean face's distinct AU
    centres are drawn per image, squares of `patch` of the side around them set to the mean colour,
    the masked frames encoded (one extra backbone pass over those frames), and a light decoder
    (`Upsampler`) rebuilds the frame from the last feature map. With M the mask, x the normalised
    frame and x^ the decoder's output:

        L = sum |x^ - x| * M / (3 * sum M)        (L1 on the masked pixels only)

    To fill a brow or a lip corner the features must say what the rest of the face implies about
    it: AUs co-occur (6 with 12, 1 with 2) and a person's regions share shape and texture.
    """

    def __init__(self, feature_dim: int, regions: int = 3, patch: float = 0.2, frames: int = 1, width: int = 64):
        super().__init__()
        self.regions, self.patch, self.frames = regions, patch, frames
        self.register_buffer("centres", region_centres(), persistent=False)
        self.decoder = Upsampler(feature_dim, width)

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        view, encoder = encoded.views[0], encoded.encoder
        if view.frames is None or encoder is None:
            raise ValueError("roi_inpaint needs the views' frames and the encoder (PretrainModel.encode gives both)")
        frames = view.frames[:, : self.frames]
        b, t, _, size, _ = frames.shape
        x = encoder.normalize(frames.flatten(0, 1))  # [N, 3, S, S]
        draws = torch.rand(len(x), len(self.centres), generator=encoded.generator, device=x.device)
        chosen = draws.argsort(1)[:, : self.regions]
        mask = patch_masks(self.centres, chosen, size, self.patch).float()
        _, maps = encoder.frame_features((x * (1 - mask))[:, None], maps=True)
        rebuilt = self.decoder(maps[:, 0].float(), size)
        loss = ((rebuilt - x).abs() * mask).sum() / (3 * mask.sum()).clamp_min(1)
        return {self.name: loss}


def sinkhorn(cost: torch.Tensor, epsilon: float, iterations: int, rows: torch.Tensor | None = None,
             cols: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Entropic optimal transport plans [..., R, S] for a batch of costs [..., R, S], by Sinkhorn's
    iterations in the log domain (stable at small `epsilon`, differentiable, batched on the
    device). Marginals `rows` [R] and `cols` [S] default to uniform; the plan's columns sum to
    `cols` exactly and its rows to `rows` up to the iterations' convergence."""
    r, s = cost.shape[-2:]
    log_a = (rows if rows is not None else cost.new_full((r,), 1 / r)).log()
    log_b = (cols if cols is not None else cost.new_full((s,), 1 / s)).log()
    f = cost.new_zeros(cost.shape[:-1])
    g = cost.new_zeros((*cost.shape[:-2], s))
    for _ in range(iterations):
        f = epsilon * (log_a - torch.logsumexp((g[..., None, :] - cost) / epsilon, dim=-1))
        g = epsilon * (log_b - torch.logsumexp((f[..., :, None] - cost) / epsilon, dim=-2))
    return torch.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)


@register("au_relation")
class AURelation(Objective):
    """AU attention regions compared as sets by optimal transport (after Song & Liu).

    A 1x1 convolution turns the last feature map into `regions` attention maps (softmax over
    space); each region's feature is the attention-weighted mean of the map, projected to `dim`
    and L2-normalised. Two frames are compared as sets of regions: the cost of matching region i
    of one to region j of the other is 1 - cos(r_i, r'_j), and their distance is the entropic
    optimal transport between the sets (`sinkhorn`, uniform marginals), so a region may be
    matched to whichever region of the other frame plays its part, and how AUs co-occur
    (relations between regions) decides the match, not a fixed slot. Frame t of view 0 and frame
    t of view 1 (the same clip, other crop, colour and time window) are positives; every frame of
    the other clips of the global batch is a negative (the clip's own other frames are left out):

        L = CE(-D(a, .) / tau, positive)   over anchors a of view 0, D the OT distance.

    Cost: the transport runs for every pair of this rank's frames and the global batch's, N x M
    plans of R x R (a few MB on the CPU bed; at 8 ranks of 32 clips x 12 frames, hundreds of MB a
    Sinkhorn iteration: fewer `regions` or shorter views there).
    """

    maps = True

    def __init__(self, feature_dim: int, regions: int = 12, dim: int = 64, temperature: float = 0.1,
                 epsilon: float = 0.05, iterations: int = 10):  # fmt: skip
        super().__init__()
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations
        self.attention = nn.Conv2d(feature_dim, regions, 1)
        self.project = nn.Linear(feature_dim, dim)

    def region_features(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """maps [N, C, h, w] -> region features [N, R, dim] (unit length) and attention [N, R, h, w]."""
        attention = self.attention(maps).flatten(2).softmax(-1)  # [N, R, hw]
        pooled = attention @ maps.flatten(2).transpose(1, 2)  # [N, R, C]
        return l2n(self.project(pooled)), attention.view(*attention.shape[:2], *maps.shape[-2:])

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        first, second = encoded.views[:2]
        if first.maps is None:
            raise ValueError("au_relation needs feature maps (PretrainModel asks the encoder for them)")
        b, length = first.maps.shape[:2]
        sets = [self.region_features(v.maps.flatten(0, 1).float())[0] for v in (first, second)]  # [N, R, dim]
        theirs, offset = gather_with_grad(sets[1])  # every rank's view-1 frames, this rank's from `offset`
        cost = 1 - torch.einsum("nrd,msd->nmrs", sets[0], theirs)  # [N, M, R, R]
        distance = (sinkhorn(cost, self.epsilon, self.iterations) * cost).sum((-1, -2))  # [N, M]
        rows = torch.arange(theirs.shape[0], device=cost.device)
        positive = torch.arange(b * length, device=cost.device) + offset
        # the clip's own other frames are neither positives nor negatives
        others_of_clip = (positive[:, None] // length == rows // length) & (positive[:, None] != rows)
        logits = (-distance / self.temperature).masked_fill(others_of_clip, -math.inf)
        return {self.name: F.cross_entropy(logits, positive)}
