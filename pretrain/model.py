"""`ClipEncoder`: a timm frame backbone, an AU projection head and a temporal module over clips.

Only the backbone is published (its state dict has exactly timm's keys); the heads serve the
objectives. The temporal module mixes frame embeddings along time:

* `conv` (default): two residual temporal convolutions (kernel 3) over the frame embeddings:
  local in time like AU dynamics (onsets and offsets last a few frames), cheap, and any clip
  length works;
* `gru`: a bidirectional GRU, for longer-range order;
* `transformer`: two pre-norm self-attention layers with learned time offsets;
* `none`: the clip embedding is the mean of its frames.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from finetune.backbone import backbone_args
from shards.batch import normalize


class TemporalConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv1d(dim, dim, 3, padding=1), nn.GroupNorm(1, dim), nn.GELU()) for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        h = x.transpose(1, 2)
        for layer in self.layers:
            h = h + layer(h)
        return h.transpose(1, 2)


class TemporalGRU(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gru = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gru(x)[0]


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int, max_frames: int = 64):
        super().__init__()
        self.time = nn.Parameter(torch.zeros(max_frames, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x + self.time[: x.shape[1]])


TEMPORAL = {"conv": TemporalConv, "gru": TemporalGRU, "transformer": TemporalTransformer, "none": None}


class ClipEncoder(nn.Module):
    """Frames [B, T, 3, H, W] (normalised) -> frame features, AU embeddings, clip embedding."""

    def __init__(self, arch: str, embed_dim: int = 128, temporal: str = "conv", image_size: int | None = None,
                 drop_path: float = 0.0, channels_last: bool = True, args: dict | None = None):  # fmt: skip
        super().__init__()
        if temporal not in TEMPORAL:
            raise ValueError(f"temporal module must be one of {sorted(TEMPORAL)}, got {temporal!r}")
        extra = {"drop_path_rate": drop_path} if drop_path else {}
        self.arch, self.model_args = arch, {**backbone_args(arch, image_size), **(args or {})}
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, **self.model_args, **extra)
        self.num_features = self.backbone.num_features
        self.au_head = nn.Sequential(
            nn.Linear(self.num_features, self.num_features), nn.GELU(), nn.Linear(self.num_features, embed_dim)
        )
        self.temporal = TEMPORAL[temporal](embed_dim) if TEMPORAL[temporal] else None
        self.channels_last = channels_last

    @property
    def patch_size(self) -> int:
        """A ViT's patch side (timm's `patch_embed`), 0 for backbones without patches."""
        embed = getattr(self.backbone, "patch_embed", None)
        return int(embed.patch_size[0]) if embed is not None and hasattr(embed, "patch_size") else 0

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [..., 3, H, W] -> float, normalised by the backbone's mean and std (as
        `make_views` normalises the views): for objectives that encode frames of their own."""
        cfg = self.backbone.pretrained_cfg
        return normalize(frames, cfg["mean"], cfg["std"])

    def frame_features(self, frames: torch.Tensor, maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled backbone features [B, T, F] and, with `maps`, the last stage's feature map
        [B, T, C, h, w] (timm's `forward_intermediates`, NCHW for every family: a ResNet's last
        stage, a ViT's patch tokens laid out on their grid, a Swin's last stage)."""
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not maps:
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True).view(b, t, -1), None
        final, (grid,) = self.backbone.forward_intermediates(x, indices=1, output_fmt="NCHW")
        pooled = self.backbone.forward_head(final, pre_logits=True).view(b, t, -1)
        return pooled, grid.unflatten(0, (b, t))

    def embed_clip(self, au: torch.Tensor) -> torch.Tensor:
        """Clip embedding [B, D] from AU embeddings [B, T, D] through the temporal module."""
        h = self.temporal(au) if self.temporal is not None else au
        return h.mean(dim=1)

    def forward(self, frames: torch.Tensor, maps: bool = False) -> dict[str, torch.Tensor]:
        features, grid = self.frame_features(frames, maps)
        au = self.au_head(features)
        out = {"features": features, "au": au, "clip": self.embed_clip(au)}
        return out if grid is None else {**out, "maps": grid}


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
