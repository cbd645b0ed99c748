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


# The mean aligned face: iBUG-68 landmarks in the aligned crop's unit square, averaged over 2,560
# aligned frames of the synthetic benchmark's training people (a mean shape, as 300-W's is the
# mean of its annotated faces). Objectives that need AU places without reading any frame's
# landmarks (`roi_inpaint`'s patches, the face mask of `flow`) read them here: after alignment
# every face is close to it, and the AU regions are a ruler's fraction wide.
MEAN_FACE = np.array([
    [0.174, 0.388], [0.165, 0.478], [0.164, 0.563], [0.173, 0.643], [0.191, 0.718], [0.219, 0.787],
    [0.256, 0.848], [0.307, 0.899], [0.500, 0.932], [0.693, 0.899], [0.744, 0.848], [0.782, 0.787],
    [0.809, 0.718], [0.827, 0.643], [0.836, 0.563], [0.836, 0.477], [0.827, 0.388], [0.271, 0.323],
    [0.306, 0.314], [0.341, 0.311], [0.375, 0.313], [0.410, 0.321], [0.590, 0.321], [0.625, 0.313],
    [0.659, 0.311], [0.694, 0.314], [0.729, 0.323], [0.500, 0.400], [0.500, 0.457], [0.500, 0.515],
    [0.500, 0.572], [0.459, 0.586], [0.480, 0.594], [0.500, 0.597], [0.520, 0.594], [0.541, 0.585],
    [0.304, 0.399], [0.340, 0.375], [0.377, 0.375], [0.413, 0.399], [0.377, 0.413], [0.340, 0.413],
    [0.587, 0.399], [0.623, 0.375], [0.660, 0.375], [0.696, 0.399], [0.660, 0.413], [0.623, 0.413],
    [0.392, 0.694], [0.433, 0.676], [0.473, 0.673], [0.500, 0.678], [0.527, 0.673], [0.567, 0.676],
    [0.609, 0.694], [0.567, 0.721], [0.527, 0.729], [0.500, 0.730], [0.473, 0.729], [0.433, 0.721],
    [0.405, 0.694], [0.457, 0.692], [0.500, 0.692], [0.544, 0.692], [0.596, 0.694], [0.544, 0.703],
    [0.500, 0.704], [0.457, 0.703],
], np.float32)  # fmt: skip

# JAA-Net's AU centres (Shao et al.): on the 49 inner points of IntraFace's scheme (iBUG-68 without
# the jaw, 0-16, and the inner mouth corners, 60 and 64), two symmetric points per AU, each moved
# vertically by a fraction of the ruler (the inner eye corners' horizontal distance; + is down).
INNER_49 = [i for i in range(17, 68) if i not in (60, 64)]
AU_CENTRE_RULES = {
    "AU1": ((4, 5), -1 / 2), "AU2": ((1, 8), -1 / 3), "AU4": ((2, 7), 1 / 3), "AU6": ((24, 29), 1.0),
    "AU7": ((21, 26), 0.0), "AU9": ((15, 17), -1 / 2), "AU10": ((43, 45), 0.0), "AU12": ((31, 37), 0.0),
    "AU14": ((31, 37), 0.0), "AU15": ((31, 37), 0.0), "AU17": ((39, 41), 1 / 2), "AU23": ((34, 40), 0.0),
    "AU24": ((34, 40), 0.0), "AU25": ((34, 40), 0.0), "AU26": ((39, 41), 1 / 2),
}  # fmt: skip


def au_centres(landmarks, aus=None):
    """Each AU's two centres [..., len(aus), 2, 2] from iBUG-68 landmarks [..., 68, 2] (numpy or
    torch, any unit), by JAA-Net's rule; `aus` defaults to every AU the rule covers."""
    aus = list(AU_CENTRE_RULES) if aus is None else list(aus)
    inner = landmarks[..., INNER_49, :]
    ruler = abs(inner[..., 22, 0] - inner[..., 25, 0])[..., None]  # [..., 1]
    points = inner[..., [i for au in aus for i in AU_CENTRE_RULES[au][0]], :]  # [..., 2A, 2]
    shift = np.repeat([AU_CENTRE_RULES[au][1] for au in aus], 2).astype(np.float32)
    if isinstance(points, torch.Tensor):
        shift = torch.as_tensor(shift, dtype=points.dtype, device=points.device)
    x, y = points[..., 0], points[..., 1] + ruler * shift
    stacked = np.stack([x, y], -1) if isinstance(points, np.ndarray) else torch.stack([x, y], -1)
    return stacked.reshape(*points.shape[:-2], len(aus), 2, 2)


def face_mask(grid: int) -> torch.Tensor:
    """bool [grid, grid]: the cells of an aligned crop whose centres fall in the face, an ellipse
    spanning MEAN_FACE from jaw to jaw and from the forehead's AU centres to the chin. What masks
    the background out of losses on aligned crops without reading any frame's landmarks."""
    top = float(au_centres(MEAN_FACE)[..., 1].min())
    (x0, _), (x1, y1) = MEAN_FACE.min(0), MEAN_FACE.max(0)
    cx, cy, rx, ry = (x0 + x1) / 2, (top + y1) / 2, (x1 - x0) / 2, (y1 - top) / 2
    centres = (torch.arange(grid) + 0.5) / grid
    return ((centres[None, :] - cx) / rx) ** 2 + ((centres[:, None] - cy) / ry) ** 2 <= 1


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


def align_clips(frames: torch.Tensor, landmarks: torch.Tensor, size: int,
                steady: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """uint8 clips [B, T, 3, H, W] with landmarks [B, T, 68, 2] (pixels) -> aligned clips
    [B, T, 3, size, size] and the landmarks in the aligned crops' unit square (NaN where unknown).
    `steady`: one similarity a clip, from its frames' mean alignment points, so that a detector's
    frame-to-frame jitter is not turned into motion (the head's own motion stays in the frames)."""
    b, t = frames.shape[:2]
    flat = landmarks.flatten(0, 1).float()
    points = flat[:, ALIGN_POINTS]
    if steady:
        points = points.unflatten(0, (b, t)).nanmean(1, keepdim=True).expand(-1, t, -1, -1).flatten(0, 1)
    m = template_transforms(points)
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


def cut_square(pixels: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """`uint8 [size, size, 3]`: the `box` of `crop_box` cut from an RGB frame (black where it
    reaches outside) and resized bilinearly."""
    from PIL import Image

    im = Image.fromarray(pixels).crop(box)  # Pillow fills outside the frame with black
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)
