"""Two augmented temporal views of each clip, made on the device in one batched pass.

A view is a random window of `length` consecutive sampled frames, then a random resized crop,
a horizontal flip, colour jitter and a blur, drawn per clip and shared by the clip's frames (AUs
keep their place over time). All randomness comes from one generator seeded by (seed, step,
rank, micro-step), so a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.views import View


def step_generator(seed: int, step: int, rank: int, micro: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 1009 + rank) * 31 + micro)
    return g


def _rand(g: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def temporal_windows(n_frames: int, length: int, batch: int, g, device) -> torch.Tensor:
    """Start indices [B] of windows of `length` frames."""
    return torch.randint(0, n_frames - length + 1, (batch,), generator=g, device=device)


def augment(frames: torch.Tensor, g: torch.Generator, strength: float = 1.0, frame_jitter: float = 0.0) -> torch.Tensor:
    """frames float [B, L, 3, H, W] in 0..1 -> augmented, same shape; one draw per clip, and with
    `frame_jitter` > 0 a small shift, rotation and scaling of every frame on its own (up to
    frame_jitter of the side, 1.5 * frame_jitter rad), so that head motion, which drifts with
    time like expressions do, stops being a reliable cue of time."""
    b, length, c, h, w = frames.shape
    dev = frames.device
    # random resized crop (scale 0.7..1 of the side, aspect 0.9..1.1) and flip, as one affine map
    scale = _rand(g, b, 1 - 0.3 * strength, 1.0, dev)
    aspect = _rand(g, b, 1 - 0.1 * strength, 1 + 0.1 * strength, dev)
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    tx, ty = (1 - sx) * _rand(g, b, -1, 1, dev), (1 - sy) * _rand(g, b, -1, 1, dev)
    flip = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    theta = theta.repeat_interleave(length, dim=0)
    if frame_jitter > 0:
        n = b * length
        angle = _rand(g, n, -1.5 * frame_jitter, 1.5 * frame_jitter, dev)
        zoom = _rand(g, n, 1 - frame_jitter, 1 + frame_jitter, dev)
        jitter = torch.zeros(n, 3, 3, device=dev)
        jitter[:, 0, 0], jitter[:, 0, 1] = zoom * angle.cos(), -zoom * angle.sin()
        jitter[:, 1, 0], jitter[:, 1, 1] = zoom * angle.sin(), zoom * angle.cos()
        jitter[:, 0, 2], jitter[:, 1, 2] = _rand(g, n, -2 * frame_jitter, 2 * frame_jitter, dev), _rand(
            g, n, -2 * frame_jitter, 2 * frame_jitter, dev)  # fmt: skip
        jitter[:, 2, 2] = 1
        theta = theta @ jitter
    x = frames.flatten(0, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = x.view(b, length, c, h, w)
    # colour jitter: brightness, contrast, saturation
    bright = _rand(g, b, 1 - 0.3 * strength, 1 + 0.3 * strength, dev).view(b, 1, 1, 1, 1)
    contrast = _rand(g, b, 1 - 0.3 * strength, 1 + 0.3 * strength, dev).view(b, 1, 1, 1, 1)
    sat = _rand(g, b, 1 - 0.3 * strength, 1 + 0.3 * strength, dev).view(b, 1, 1, 1, 1)
    x = x * bright
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = x.mean(dim=2, keepdim=True)
    x = (x - grey) * sat + grey
    # blur a third of the clips with a 3x3 binomial kernel
    blur = (torch.rand(b, generator=g, device=dev) < 0.3 * strength).view(b, 1, 1, 1, 1)
    k = torch.tensor([1.0, 2.0, 1.0], device=dev)
    kernel = (k[:, None] * k[None, :] / 16).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(x.flatten(0, 1), (1, 1, 1, 1), mode="replicate"), kernel, groups=c).view_as(x)
    x = torch.where(blur, blurred, x)
    return x.clamp_(0, 1)


def make_views(frames_u8: torch.Tensor, frame_index: torch.Tensor, mean, std, g: torch.Generator,
               length: int, augmented: bool = True, frame_jitter: float = 0.0, strength: float = 1.0,
               landmarks: torch.Tensor | None = None) -> list[View]:  # fmt: skip
    """Two views of every clip: `input` normalised float [B, L, 3, H, W], `time` [B, L], `frames`
    (the view's uint8 frames before augmentation), and with
    `landmarks` [B, T, P, 2] their rows for the view's frames (as they were before augmentation:
    objectives predict the aligned face, not the crop)."""
    b, t = frames_u8.shape[:2]
    dev = frames_u8.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(1, 1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=dev).view(1, 1, 3, 1, 1)
    offsets = torch.arange(length, device=dev)
    views = []
    for _ in range(2):
        idx = temporal_windows(t, length, b, g, dev)[:, None] + offsets  # [B, L]
        gather = idx.view(b, length, 1, 1, 1).expand(-1, -1, *frames_u8.shape[2:])
        raw = torch.gather(frames_u8, 1, gather)
        x = raw.float() / 255.0
        if augmented:
            x = augment(x, g, strength=strength, frame_jitter=frame_jitter)
        time = torch.gather(frame_index.to(dev), 1, idx).float()
        rows = None if landmarks is None else idx.view(b, length, 1, 1).expand(-1, -1, *landmarks.shape[2:])
        views.append(View(input=(x - mean_t) / std_t, time=time - time[:, :1], frames=raw,
                          landmarks=None if landmarks is None else torch.gather(landmarks, 1, rows)))  # fmt: skip
    return views
