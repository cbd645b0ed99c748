"""`ClipBatch`: what the streaming reader yields and the training loops consume (README, "Streaming")."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class ClipBatch:
    """A batch of clips. Frames stay uint8 until they reach the device (see `normalized_frames`).

    `frames` is [B, T, 3, H, W]; it is a channels-last view of the decoded pixels (no copy in the
    workers). `valid` is False for the padding that exact mode adds so that every rank runs the
    same number of batches; padding has unknown labels and identity -1.
    """

    frames: torch.Tensor  # uint8 [B, T, 3, H, W]
    identity: torch.Tensor  # int64 [B], -1 unknown
    video: torch.Tensor  # int64 [B]
    frame_index: torch.Tensor  # int64 [B, T]
    keys: list[str]
    valid: torch.Tensor  # bool [B]
    landmarks: torch.Tensor | None = None  # float32 [B, T, 68, 2], NaN unknown
    au_occ: torch.Tensor | None = None  # int8 [B, T, A], -1 unknown
    au_int: torch.Tensor | None = None  # float32 [B, T, A], NaN unknown

    def __len__(self) -> int:
        return len(self.keys)

    def _map(self, fn) -> "ClipBatch":
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
        return replace(self, **changes)

    def pin_memory(self) -> "ClipBatch":
        # DataLoader's pin-memory thread calls this when a GPU is present.
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = True) -> "ClipBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def normalized_frames(self, mean, std, dtype=torch.float32) -> torch.Tensor:
        """Frames as `dtype` [B, T, 3, H, W], scaled to 0..1 and normalised, on their device."""
        return normalize(self.frames, mean, std, dtype)


def normalize(frames: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """uint8 frames [..., 3, H, W] as `dtype`, scaled to 0..1 and normalised per channel, on their device."""
    mean_t = torch.as_tensor(mean, dtype=dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=dtype, device=frames.device).view(3, 1, 1)
    return (frames.to(dtype) / 255.0 - mean_t) / std_t
