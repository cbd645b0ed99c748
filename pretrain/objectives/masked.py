"""Masked image modelling (MAE, He et al. 2022; the family FMAE and MARLIN scale to faces): the
baseline every method here is compared with, on ViT backbones.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded


def sincos_positions(rows: int, cols: int, dim: int, device) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings [rows * cols, dim] in row-major order (MAE's
    decoder positions, computed for whatever grid the image size gives)."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    y, x = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    parts = [f(c.flatten()[:, None].float() * freq) for c in (y, x) for f in (torch.sin, torch.cos)]
    out = torch.cat(parts, 1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[1]))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/p)(W/p), p*p*C], patches in row-major order as a ViT embeds them."""
    n, c, h, w = x.shape
    return x.view(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, patch * patch * c)


@register("masked_image")
class MaskedImage(Objective):
    """MAE on the backbone's own ViT: `ratio` of each image's patches are dropped at random, the
    rest (with the class token) go through the backbone's blocks, and a light decoder (`depth`
    pre-norm transformer layers of width `width`, fixed sine-cosine positions, a learned mask
    token) predicts the pixels of the dropped patches, each normalised by its own mean and
    variance (`norm_pix`):

        L = mean over dropped patches of || decoder(...) - patch ||^2 / (p * p * 3)

    Frames: the first `frames` of view 0, aligned and before augmentation. The decoder is
    training-only. Needs a timm VisionTransformer (`patch_embed`, `blocks`): refused otherwise.
    """

    def __init__(self, feature_dim: int, patch_size: int, ratio: float = 0.75, width: int = 128, depth: int = 2,
                 frames: int = 1, norm_pix: bool = True):  # fmt: skip
        super().__init__()
        if not patch_size:
            raise ValueError("masked_image needs a ViT backbone (timm VisionTransformer, e.g. model=vit_small): "
                             "this one has no patch embedding")  # fmt: skip
        if not 0 < ratio < 1:
            raise ValueError(f"masked_image ratio must be in (0, 1), got {ratio}")
        self.ratio, self.frames, self.norm_pix = ratio, frames, norm_pix
        self.embed = nn.Linear(feature_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pixels = nn.Linear(width, patch_size * patch_size * 3)
        self.width, self.patch = width, patch_size

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        view, encoder = encoded.views[0], encoded.encoder
        vit = encoder.backbone if encoder is not None else None
        if vit is None or not hasattr(vit, "patch_embed") or not hasattr(vit, "blocks"):
            raise ValueError(f"masked_image needs a ViT backbone (timm VisionTransformer), got "
                             f"{type(vit).__name__ if vit is not None else 'none'}; e.g. model=vit_small")  # fmt: skip
        x = encoder.normalize(view.frames[:, : self.frames].flatten(0, 1))
        patch = self.patch
        tokens = vit._pos_embed(vit.patch_embed(x))  # [N, prefix + P, C]
        prefix, n, count = vit.num_prefix_tokens, len(x), tokens.shape[1] - vit.num_prefix_tokens
        keep = max(1, int(round(count * (1 - self.ratio))))
        order = torch.rand(n, count, generator=encoded.generator, device=x.device).argsort(1)
        shown = order[:, :keep]
        visible = tokens[:, prefix:].gather(1, shown[..., None].expand(-1, -1, tokens.shape[-1]))
        h = vit.norm(vit.blocks(vit.norm_pre(torch.cat([tokens[:, :prefix], visible], 1))))[:, prefix:]
        full = self.mask_token.to(h.dtype).expand(n, count, self.width).clone()
        full = full.scatter(1, shown[..., None].expand(-1, -1, self.width), self.embed(h))
        positions = sincos_positions(x.shape[-2] // patch, x.shape[-1] // patch, self.width, x.device)
        decoded = self.norm(self.decoder(full + positions))
        target = patchify(x, patch)
        if self.norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        hidden = torch.ones(n, count, dtype=torch.bool, device=x.device).scatter(1, shown, False)
        error = (self.pixels(decoded).float() - target).pow(2).mean(-1)
        return {self.name: error[hidden].mean()}
