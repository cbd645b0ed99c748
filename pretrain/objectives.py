"""Self-supervised objectives, registered by name. Each is an `nn.Module` whose
`forward(batch, encoded) -> {name: loss}`; the config gives each a weight, and the training loss
is the weighted sum. `encoded["views"]` holds, per augmented view of the clips, the encoder's
outputs ("features" [B, L, F], "au" [B, L, D], "clip" [B, D]) and "time" [B, L] (frames since
the view's first frame). An objective owns its heads; heads are never published.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.model import l2n

OBJECTIVES: dict[str, type[nn.Module]] = {}


def register(name: str):
    def wrap(cls):
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return wrap


def build_objectives(spec: dict, embed_dim: int) -> tuple[nn.ModuleDict, dict[str, float]]:
    """Objectives and their weights from the config: {name: {weight: w, ...arguments}}."""
    modules, weights = nn.ModuleDict(), {}
    for name, args in spec.items():
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
        args = dict(args or {})
        weights[name] = float(args.pop("weight", 1.0))
        try:
            modules[name] = OBJECTIVES[name](embed_dim=embed_dim, **args)
        except TypeError as e:
            raise ValueError(f"objective {name!r}: {e}") from None
    if not modules:
        raise ValueError("no objectives configured")
    return modules, weights


@register("temporal_margin")
class TemporalMargin(nn.Module):
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

    def forward(self, batch, encoded) -> dict[str, torch.Tensor]:
        losses = [self.view_loss(l2n(v["au"]), v["time"]) for v in encoded["views"]]
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


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of x (this rank's keep their gradient) and the offset of this rank's rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


@register("clip_contrastive")
class ClipContrastive(nn.Module):
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

    def forward(self, batch, encoded) -> dict[str, torch.Tensor]:
        # logits in fp32: under bf16 autocast they would be rounded to ~0.06 at tau = 0.1
        first, second = (l2n(self.head(v["clip"]).float()) for v in encoded["views"][:2])
        all_first, offset = gather_with_grad(first)
        all_second, _ = gather_with_grad(second)
        targets = torch.arange(first.shape[0], device=first.device) + offset
        loss = 0.5 * (
            F.cross_entropy(first @ all_second.T / self.temperature, targets)
            + F.cross_entropy(second @ all_first.T / self.temperature, targets)
        )
        return {self.name: loss}


class PretrainModel(nn.Module):
    """The encoder and its objectives as one module, so DeepSpeed holds every trained weight."""

    def __init__(self, encoder: nn.Module, objectives: nn.ModuleDict, weights: dict[str, float]):
        super().__init__()
        self.encoder, self.objectives, self.weights = encoder, objectives, weights

    def encode(self, views: list[dict]) -> dict:
        # Both views in one backbone pass: half the kernel launches and better batching.
        frames = torch.cat([v["frames"] for v in views], dim=0)
        out = self.encoder(frames)
        n = views[0]["frames"].shape[0]
        return {"views": [{**{k: t[i * n : (i + 1) * n] for k, t in out.items()}, "time": v["time"]}
                          for i, v in enumerate(views)]}  # fmt: skip

    def objectives_loss(self, batch, encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = {}
        for objective in self.objectives.values():
            losses.update(objective(batch, encoded))
        total = sum(self.weights[name] * loss for name, loss in losses.items() if name in self.weights)
        return total, losses

    def forward(self, views: list[dict], batch=None):
        return self.objectives_loss(batch, self.encode(views))
