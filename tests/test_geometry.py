"""Face geometry (shards/geometry.py): alignment of frames and of their landmarks onto the template."""

from __future__ import annotations

import numpy as np
import torch


def test_faces_are_aligned_by_their_landmarks():
    """A frame whose stable landmarks are the template turned, scaled and shifted comes out with a
    marked landmark exactly where the template puts it."""
    from shards.geometry import ALIGN_POINTS, ALIGN_TEMPLATE, align_faces

    angle, scale, shift = 0.3, 70.0, np.array([20.0, 15.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = np.full((1, 68, 2), np.nan, np.float32)
    landmarks[0, ALIGN_POINTS] = (ALIGN_TEMPLATE @ rot.T) * scale + shift
    image = torch.zeros(1, 3, 112, 112, dtype=torch.uint8)
    x, y = np.floor(landmarks[0, 45]).astype(int)  # the right eye's outer corner, within half a pixel
    image[0, :, y - 1 : y + 2, x - 1 : x + 2] = 255
    out = align_faces(image, torch.from_numpy(landmarks), 56)[0, 0].float()
    rows, cols = torch.meshgrid(torch.arange(56.0) + 0.5, torch.arange(56.0) + 0.5, indexing="ij")
    centre = ((out * cols).sum() / out.sum(), (out * rows).sum() / out.sum())  # (x, y), pixel centres at +0.5
    expected = ALIGN_TEMPLATE[3] * 56  # (x, y) of point 45 in the template
    assert abs(float(centre[0]) - expected[0]) <= 0.7 and abs(float(centre[1]) - expected[1]) <= 0.7
    # without landmarks: a plain resize
    plain = align_faces(image, torch.full((1, 68, 2), float("nan")), 56)
    assert plain.shape == (1, 3, 56, 56)


def test_clips_and_their_landmarks_are_aligned_together():
    """align_clips maps landmarks with the same similarity as the pixels: stable points that are
    the template turned, scaled and shifted land on the template; frames without landmarks stay NaN."""
    from shards.geometry import ALIGN_POINTS, ALIGN_TEMPLATE, align_clips

    rng = np.random.default_rng(0)
    landmarks = np.zeros((2, 3, 68, 2), np.float32)
    for b in range(2):
        for t in range(3):
            angle, scale, shift = rng.uniform(-0.4, 0.4), rng.uniform(50, 80), rng.uniform(10, 30, 2)
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            landmarks[b, t] = (rng.uniform(0.2, 0.8, (68, 2)) @ rot.T) * scale + shift
            landmarks[b, t, ALIGN_POINTS] = (ALIGN_TEMPLATE @ rot.T) * scale + shift
    landmarks[1, 2] = np.nan
    frames = torch.randint(0, 256, (2, 3, 3, 112, 112), dtype=torch.uint8)
    aligned, unit = align_clips(frames, torch.from_numpy(landmarks), 48)
    assert aligned.shape == (2, 3, 3, 48, 48) and aligned.dtype == torch.uint8
    known = unit[:, :, ALIGN_POINTS].flatten(0, 1)[:5]
    assert torch.allclose(known, torch.from_numpy(ALIGN_TEMPLATE).expand_as(known), atol=1e-4)
    assert torch.isnan(unit[1, 2]).all() and torch.isfinite(unit[0]).all()


def test_steady_alignment_keeps_a_still_face_still_under_landmark_jitter():
    """A still video whose landmarks jitter (as a detector's do): aligned one frame at a time its
    frames move; aligned once a clip (`steady`) they are the same frame, and the clip's mean
    landmarks land on the template."""
    from shards.geometry import ALIGN_POINTS, ALIGN_TEMPLATE, align_clips

    rng = np.random.default_rng(1)
    still = torch.randint(0, 256, (1, 1, 3, 112, 112), dtype=torch.uint8).expand(1, 4, -1, -1, -1)
    points = np.zeros((68, 2), np.float32)
    points[ALIGN_POINTS] = ALIGN_TEMPLATE * 60 + 25
    jitter = rng.normal(0, 1.5, (1, 4, 68, 2)).astype(np.float32)
    jitter -= jitter.mean(1, keepdims=True)  # the clip's mean is the true face
    landmarks = torch.from_numpy(points + jitter)
    moving, _ = align_clips(still, landmarks, 48)
    steady, unit = align_clips(still, landmarks, 48, steady=True)
    assert (moving[0, 1:].int() - moving[0, :1].int()).abs().float().mean() > 5
    assert torch.equal(steady[0, 1:], steady[0, :1].expand(3, -1, -1, -1))
    centre = unit[0][:, ALIGN_POINTS].mean(0)
    assert torch.allclose(centre, torch.from_numpy(ALIGN_TEMPLATE), atol=1e-3)
