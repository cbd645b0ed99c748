"""Labelled frames for fine-tuning, whatever the dataset: one interface over clip shards (read
once into memory: labelled sets are small) and over BP4D, DISFA and CSV tables (read lazily).
Shard frames are aligned on the landmark template (shards.geometry), table frames cropped by
finetune.data.read_frame.

The folds and the few-label draw over these frames: finetune.protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shards.geometry import face_crops
from shards.manifest import Manifest
from shards.stream import ClipStream, spread_stride


@dataclass
class Frames:
    """N labelled frames: labels in memory, pixels in `images` (uint8 [N, S, S, 3]) or read by `read(i)`."""

    name: str
    au_names: list[str]
    subjects: np.ndarray  # [N] str
    occ: np.ndarray  # int8 [N, A], -1 unknown
    intensity: np.ndarray  # float32 [N, A], NaN unknown
    sequences: np.ndarray  # [N] str: the clip or video a frame belongs to
    order: np.ndarray  # [N] int: its frame number there
    images: np.ndarray | None = None
    read: object = None  # callable(i) -> uint8 [S, S, 3] when images is None

    def __len__(self) -> int:
        return len(self.subjects)

    def image(self, i: int) -> np.ndarray:
        return self.images[i] if self.images is not None else self.read(i)


def shard_frames(source: str, size: int, clip_frames: int, split: str | None = None) -> Frames:
    """`clip_frames` frames spread over every clip of a labelled shard set, aligned by their
    landmarks (where the shards have them) into `size` x `size` crops."""
    manifest = Manifest.load(source) if Path(source).exists() else None
    stored = manifest.frames_per_clip if manifest else clip_frames
    stream = ClipStream(source, split=split, frames=clip_frames, stride=spread_stride(stored, clip_frames), batch_size=32,
                        mode="exact", rank=0, world=1, num_workers=0)  # fmt: skip
    if not stream.au_names:
        raise ValueError(f"{source}: these shards carry no AU labels (no au_names in the manifest)")
    images, occ, intensity, subjects, sequences, order = [], [], [], [], [], []
    identities = {}
    for batch in stream:
        keep = batch.valid
        landmarks = batch.landmarks[keep].flatten(0, 1) if batch.landmarks is not None else None
        frames = face_crops(batch.frames[keep].flatten(0, 1), landmarks, size)
        images.append(frames.permute(0, 2, 3, 1).contiguous().numpy())
        occ.append(batch.au_occ[keep].flatten(0, 1).numpy())
        intensity.append(batch.au_int[keep].flatten(0, 1).numpy())
        order.append(batch.frame_index[keep].flatten().numpy())
        for ident, key in zip(batch.identity[keep].tolist(), [k for k, ok in zip(batch.keys, keep) if ok]):
            subjects += [identities.setdefault(ident, f"s{ident:x}")] * clip_frames
            sequences += [key] * clip_frames
    return Frames(manifest.name if manifest else "shards", list(stream.au_names), np.array(subjects),
                  np.concatenate(occ), np.concatenate(intensity), np.array(sequences), np.concatenate(order),
                  images=np.concatenate(images))  # fmt: skip


def table_frames(table, size: int) -> Frames:
    """A BP4D, DISFA or CSV table (finetune.data) with frames read, cropped and resized on demand."""
    from finetune.data import read_frame

    records = table.records
    return Frames(
        table.name, list(table.au_names), np.array([r.subject for r in records]),
        np.stack([r.occ for r in records]).astype(np.int8), np.stack([r.intensity for r in records]).astype(np.float32),
        np.array([r.sequence for r in records]), np.array([r.frame for r in records]),
        read=lambda i: read_frame(records[i], size=size),
    )  # fmt: skip


class FrameDataset(torch.utils.data.Dataset):
    """Items {"image": uint8 [3, S, S], "occ", "intensity", "subject": int, "index": int}."""

    def __init__(self, frames: Frames, indices: np.ndarray, subject_ids: dict[str, int], size: int):
        self.frames, self.indices, self.subject_ids, self.size = frames, indices, subject_ids, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        image = self.frames.image(i)
        if image.shape[:2] != (self.size, self.size):
            image = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "occ": torch.from_numpy(self.frames.occ[i].astype(np.int64)),
            "intensity": torch.from_numpy(self.frames.intensity[i]),
            "subject": self.subject_ids[self.frames.subjects[i]],
            "index": i,
        }


def clip_windows(frames: Frames, indices: np.ndarray, length: int) -> list[np.ndarray]:
    """`indices` grouped by sequence, in frame order, cut into windows of `length` consecutive
    frames (the last of a sequence shorter): every frame in exactly one window."""
    windows = []
    chosen = np.asarray(indices)
    for sequence in np.unique(frames.sequences[chosen]):
        members = chosen[frames.sequences[chosen] == sequence]
        members = members[np.argsort(frames.order[members], kind="stable")]
        windows += [members[i : i + length] for i in range(0, len(members), length)]
    return windows


class ClipDataset(torch.utils.data.Dataset):
    """Windows of frames for the temporal head: {"image": uint8 [T, 3, S, S], "occ", "intensity",
    "valid": [T]}; frames without a label in `labelled` keep their place in the clip (context)
    but carry unknown labels, so the loss is taken only at labelled frames (Sanchez et al.);
    short windows are padded with invalid frames."""

    def __init__(self, frames: Frames, windows: list[np.ndarray], labelled: np.ndarray, subject_ids, size: int,
                 length: int):  # fmt: skip
        self.frames_ds = FrameDataset(frames, np.arange(len(frames)), subject_ids, size)
        self.windows, self.labelled, self.length = windows, labelled, length

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> dict:
        window = self.windows[k]
        items = [self.frames_ds[int(i)] for i in window]
        pad = self.length - len(items)
        items += [items[-1]] * pad
        occ = torch.stack([it["occ"] for it in items])
        intensity = torch.stack([it["intensity"] for it in items])
        known = torch.zeros(self.length, dtype=torch.bool)
        known[: len(window)] = torch.from_numpy(self.labelled[window])
        occ[~known] = -1
        intensity[~known] = float("nan")
        valid = torch.arange(self.length) < len(window)
        return {"image": torch.stack([it["image"] for it in items]), "occ": occ, "intensity": intensity,
                "valid": valid, "subject": items[0]["subject"]}  # fmt: skip
