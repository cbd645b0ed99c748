"""Face geometry on landmarks: the alignment template and the warps and crops it gives.

* `template_transforms`, `to_template`, `align_faces`, `align_clips`, `face_crops`: frames
  warped by a similarity so that stable iBUG-68 landmarks fall on `ALIGN_TEMPLATE` (fine-tuning,
  the probes and pretraining all align the same way), the landmarks carried along.
* `crop_box`: the square around a face's landmarks (any number of points), or the centred square.

The synthetic renderer's own face (its canonical shape and drawing) is `shards.face`.
"""

from __future__ import annotations

import numpy as np
import torch

# Where stable landmarks (eye corners, nose bridge and base; iBUG-68 indices) go in an aligned
# crop, as fractions of its side: eyes level at 0.4, outer corners 0.4 of the side apart.
ALIGN_POINTS = [36, 39, 42, 45, 27, 30, 33]
ALIGN_TEMPLATE = np.array([[0.30, 0.40], [0.413, 0.40], [0.587, 0.40], [0.70, 0.40], [0.50, 0.40], [0.50, 0.57],
                           [0.50, 0.595]], np.float32)  # fmt: skip


def template_transforms(points: torch.Tensor) -> torch.Tensor:
    """Least-squares similarities [N, 2, 3] taking each row of `points` [N, K, 2] (the ALIGN_POINTS
    of N faces) onto ALIGN_TEMPLATE in the unit square; NaN where a face has no landmarks."""
    p = points.double()
    dst = torch.as_tensor(ALIGN_TEMPLATE, dtype=torch.float64, device=p.device)
    src, dst_c = p - p.mean(1, keepdim=True), dst - dst.mean(0)
    norm = src.pow(2).sum((1, 2))
    a = (src * dst_c).sum((1, 2)) / norm
    b = (src[..., 0] * dst_c[:, 1] - src[..., 1] * dst_c[:, 0]).sum(1) / norm
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [N, 2, 2]
    shift = dst.mean(0) - (rot @ p.mean(1)[..., None])[..., 0]
    return torch.cat([rot, shift[..., None]], -1).float()


def to_template(landmarks: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Landmarks [N, P, 2] in pixels -> the aligned crop's unit square, by `template_transforms`."""
    return landmarks @ transforms[:, :, :2].transpose(1, 2) + transforms[:, None, :, 2]


def align_faces(images: torch.Tensor, landmarks: torch.Tensor, size: int, transforms: torch.Tensor | None = None
                ) -> torch.Tensor:  # fmt: skip
    """uint8 [N, 3, H, W] frames warped so that their landmarks [N, 68, 2] (pixels) fall on the
    template, into [N, 3, size, size]; frames without landmarks are only resized."""
    n, _, h, w = images.shape
    m = template_transforms(landmarks[:, ALIGN_POINTS]) if transforms is None else transforms
    m = torch.cat([m.double().cpu(), torch.tensor([0.0, 0, 1], dtype=torch.float64).expand(n, 1, 3)], 1)
    found = torch.isfinite(m).flatten(1).all(1)
    m[~found] = torch.eye(3, dtype=torch.float64)
    # grid_sample works in [-1, 1] on both sides: aligned [-1, 1] -> unit square -> source pixels -> [-1, 1]
    out_to_unit = torch.tensor([[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    pix_to_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64)
    theta = (pix_to_norm @ torch.linalg.inv(m) @ out_to_unit)[:, :2]
    theta[~found] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    grid = torch.nn.functional.affine_grid(theta.float().to(images.device), [n, 3, size, size], align_corners=False)
    out = torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)  # fmt: skip
    return out.round().clamp(0, 255).to(torch.uint8)


def align_clips(frames: torch.Tensor, landmarks: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips [B, T, 3, H, W] with landmarks [B, T, 68, 2] (pixels) -> aligned clips
    [B, T, 3, size, size] and the landmarks in the aligned crops' unit square (NaN where unknown)."""
    b, t = frames.shape[:2]
    flat = landmarks.flatten(0, 1).float()
    m = template_transforms(flat[:, ALIGN_POINTS])
    aligned = align_faces(frames.flatten(0, 1), flat, size, transforms=m)
    return aligned.unflatten(0, (b, t)), to_template(flat, m).unflatten(0, (b, t))


def face_crops(frames: torch.Tensor, landmarks: torch.Tensor | None, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> [N, 3, size, size]: aligned by landmarks where there are any, else resized."""
    if landmarks is not None:
        return align_faces(frames, landmarks, size)
    if frames.shape[-2:] == (size, size):
        return frames
    resized = torch.nn.functional.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def crop_box(shape: tuple[int, ...], landmarks: np.ndarray | None, crop: str = "landmarks",
             margin: float = 0.25) -> tuple[int, int, int, int]:  # fmt: skip
    """The crop `(left, top, right, bottom)` in pixels (may reach outside the frame) of a frame of
    `shape` [H, W, ...]: `crop="landmarks"` a square centred on the landmarks' bounding box, of
    side `max(box width, box height) * (1 + 2 * margin)`, falling back to `"centre"` without
    (finite) landmarks; `"centre"` (or `"center"`) the largest centred square; `"none"` the frame."""
    h, w = shape[:2]
    mode = crop.lower()
    if mode == "none":
        return 0, 0, w, h
    if mode == "landmarks":
        pts = None if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 2)
        pts = None if pts is None else pts[np.isfinite(pts).all(1)]
        if pts is not None and len(pts) >= 2:
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
            if side >= 2:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
                s = int(round(side))
                return left, top, left + s, top + s
        mode = "centre"
    if mode in ("centre", "center"):
        s = min(h, w)
        left, top = (w - s) // 2, (h - s) // 2
        return left, top, left + s, top + s
    raise ValueError(f"crop must be 'landmarks', 'centre' or 'none', got {crop!r}")
