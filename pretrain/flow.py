"""Dense optical flow between frames, on the host, with OpenCV's DIS (Kroeger et al. 2016).

The motion objective (`pretrain.objectives.motion`) computes it in the training step from the
views' aligned frames rather than at shard time or in the data workers: the pairs depend on the
step's random windows, and at the default 56 px a pair costs well under a millisecond on one core
(`python -m pretrain.bench step` shows the objective's share of the step). DIS at its `medium`
preset recovered a known 2-pixel shift to 0.01 px in the measurements that chose it; Farneback was
as accurate and slower. OpenCV is told to use one thread: the pairs are tiny and torch holds
the cores.
"""

from __future__ import annotations

import numpy as np
import torch

_dis = None


def _flow_engine():
    global _dis
    if _dis is None:
        import cv2

        cv2.setNumThreads(1)
        _dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _dis


def luma(frames: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] (0..255) -> float luma [N, H, W] (BT.601 weights), on the frames' device."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device).view(1, 3, 1, 1)
    return (frames.float() * weights).sum(1)


def grey(frames: torch.Tensor) -> np.ndarray:
    """uint8 [N, 3, H, W] (any device) -> uint8 [N, H, W] luma on the host; [N, H, W] frames are
    taken as grey already."""
    if frames.ndim == 3:
        return frames.to(torch.uint8).cpu().numpy()
    return luma(frames).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def dense_flow(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Flow [N, 2, H, W] (x, y, in pixels) that carries each pixel of `first` (uint8 [N, 3, H, W],
    or grey [N, H, W]) to where it is in `second`, on `first`'s device."""
    if first.shape != second.shape:
        raise ValueError(f"flow between frames of different shapes: {tuple(first.shape)} and {tuple(second.shape)}")
    dis = _flow_engine()
    a, b = grey(first), grey(second)
    flows = np.stack([dis.calc(x, y, None) for x, y in zip(a, b)]) if len(a) else np.zeros((0, *a.shape[1:], 2))
    return torch.from_numpy(flows).to(first.device, torch.float32).permute(0, 3, 1, 2)
