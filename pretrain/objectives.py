"""Self-supervised objectives, registered by name. Each is an `nn.Module` whose
`forward(batch, encoded) -> {name: loss}`; the config gives each a weight, and the training loss
is the weighted sum. `encoded["views"]` holds, per augmented view of the clips, the encoder's
outputs ("features" [B, L, F], "au" [B, L, D], "clip" [B, D]) and "time" [B, L] (frames since
the view's first frame). An objective owns its heads; heads are never published.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.bank import clip_ids
from pretrain.model import l2n

OBJECTIVES: dict[str, type[nn.Module]] = {}


def register(name: str):
    def wrap(cls):
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return wrap


def check_inputs(names, carried: set[str], where: str) -> None:
    """Refuse, before training starts, an objective that reads what the data does not carry (an
    objective's `needs`: batch fields such as "landmarks"), naming what runs on such data instead."""
    from pretrain.config import ConfigError

    for name in names:
        missing = sorted(set(getattr(OBJECTIVES.get(name), "needs", ())) - carried)
        if missing:
            runnable = sorted(n for n, cls in OBJECTIVES.items() if set(getattr(cls, "needs", ())) <= carried)
            raise ConfigError(f"objective {name} needs {' and '.join(missing)}, which {where} does not give; "
                              f"objectives that run on it: {', '.join(runnable)} (e.g. objective=temporal)")  # fmt: skip


def build_objectives(spec: dict, embed_dim: int, feature_dim: int = 0) -> tuple[nn.ModuleDict, dict[str, float]]:
    """Objectives and their weights from the config: {name: {weight: w, ...arguments}}. Each
    gets the sizes it asks for by name: `embed_dim` (AU embedding), `feature_dim` (backbone)."""
    modules, weights = nn.ModuleDict(), {}
    for name, args in spec.items():
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
        args = dict(args or {})
        weights[name] = float(args.pop("weight", 1.0))
        sizes = {"embed_dim": embed_dim, "feature_dim": feature_dim}
        wanted = inspect.signature(OBJECTIVES[name]).parameters
        try:
            modules[name] = OBJECTIVES[name](**{k: v for k, v in sizes.items() if k in wanted}, **args)
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


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


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
class LandmarkGeometry(nn.Module):
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
        points = 68 * 2
        self.head = nn.Linear(feature_dim, 2 * components)
        self.shape = Whitening(points, components, momentum)
        self.motion = Whitening(points, components, momentum)

    def forward(self, batch, encoded) -> dict[str, torch.Tensor]:
        views = encoded["views"]
        if "landmarks" not in views[0]:
            raise ValueError("landmark_geometry needs aligned landmarks: shards with landmarks and train.align=true")
        shape = torch.cat([v["landmarks"].flatten(2).float() for v in views])  # [2B, L, 136]
        motion = shape - shape.mean(1, keepdim=True)
        known = torch.isfinite(motion).all(-1)  # a clip with any unknown frame gives no motion
        known &= known.all(1, keepdim=True)
        if self.training:
            self.shape.update(shape[known])
            self.motion.update(motion[known])
        target = torch.cat([self.shape(shape[known]), self.motion(motion[known])], -1)
        features = torch.cat([v["features"] for v in views]).float()[known]
        loss = (self.head(features) - target).pow(2).mean() if len(target) else features.sum() * 0
        return {self.name: loss}


class PretrainModel(nn.Module):
    """The encoder and its objectives as one module, so DeepSpeed holds every trained weight.

    With a memory `bank` (an objective that mines: `mines = True`), each step first mines every
    anchor frame's cross-identity positives and identity-hard negatives from the bank, hands them
    to the objectives as `encoded["mining"]`, and after the losses adds the step's embeddings to
    the bank (so the bank holds earlier steps only; see `pretrain.bank`)."""

    def __init__(self, encoder: nn.Module, objectives: nn.ModuleDict, weights: dict[str, float], bank=None):
        super().__init__()
        self.encoder, self.objectives, self.weights, self.bank = encoder, objectives, weights, bank

    @property
    def mines(self) -> bool:
        return any(getattr(o, "mines", False) for o in self.objectives.values())

    def encode(self, views: list[dict]) -> dict:
        # Both views in one backbone pass: half the kernel launches and better batching.
        frames = torch.cat([v["frames"] for v in views], dim=0)
        out = self.encoder(frames)
        n = views[0]["frames"].shape[0]
        return {"views": [{**{k: t[i * n : (i + 1) * n] for k, t in out.items()}, "input": v["frames"],
                           **{k: t for k, t in v.items() if k != "frames"}} for i, v in enumerate(views)]}  # fmt: skip

    def objectives_loss(self, batch, encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.bank is not None:
            anchors, clips = cross_identity.anchor_embeddings(encoded), clip_ids(batch.keys)
            encoded["mining"] = self.bank.mine(anchors, batch.identity, video=batch.video, clip=clips)
        losses = {}
        for objective in self.objectives.values():
            losses.update(objective(batch, encoded))
        total = sum(self.weights[name] * loss for name, loss in losses.items() if name in self.weights)
        if self.bank is not None and self.training:
            self.bank.add(anchors, batch.identity, video=batch.video, clip=clips, valid=batch.valid)
        return total, losses

    def forward(self, views: list[dict], batch=None):
        return self.objectives_loss(batch, self.encode(views))


from pretrain import cross_identity  # noqa: E402,F401 - registers the cross-identity objectives
