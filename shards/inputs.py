"""What `shards build` reads: a stream of inputs (one video, or one labelled frame sequence each)
from a layout on disk, never a full listing held in memory.

Layouts (`LAYOUTS`):
* `folder`: videos (`VIDEO_SUFFIXES`) at any depth. `ROOT/IDENTITY/VIDEO/CLIP.mp4` (VoxCeleb2's
  layout: speaker, YouTube id, clip) names the identity and the video by its folders;
  `ROOT/IDENTITY/CLIP.mp4` the identity, the file being its own video; `ROOT/CLIP.mp4` neither.
  Folders are walked in sorted order, the files of one folder in the order the file system lists
  them (a flat folder of a million files is never sorted or held whole). A resumed build rebuilds
  every chunk whose inputs differ from its record (`shards.ledger`), and the parts of a job array
  must read the same order: merging compares a digest of it.
* `list`: a text file of video paths, one per line (blank lines and `#` comments skipped), read
  line by line; a relative path resolves against the list's folder and names identity and video as
  the folder layout does, an absolute one is its own video; `PATH<TAB>IDENTITY` names the identity
  outright.
* `bp4d`, `disfa`: the released AU datasets (`shards.datasets`, the parsing fine-tuning uses):
  one input per run of consecutive labelled frames of a sequence (a BP4D task's image folder, a
  DISFA video), the subject as its identity and every frame's AU labels attached (BP4D:
  occurrence; DISFA: intensity, occurrence where >= 2).

An input without an identity from its layout gets none (`identity=None`): readers then take its
video id for the person (a pseudo-identity, which the manifest counts and a model card names).
What a layout cannot use (a sequence without labels) comes as a `Skip`, reported with the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
LAYOUTS = ("folder", "list", "bp4d", "disfa")


@dataclass(frozen=True)
class Labels:
    """AU labels of an input's frames, in its frame order: occurrence int8 [N, A] (-1 unknown) and
    intensity float32 [N, A] (NaN unknown), A = the layout's AU names."""

    occ: np.ndarray
    intensity: np.ndarray


@dataclass(frozen=True)
class Input:
    """One unit of work for a builder: a video file, or (`images`) a sequence of frame images."""

    path: str  # the video, or the frame folder; what failures and the ledger name
    name: str  # the clip ids' stem, unique in the set (the path under the root, without suffix)
    video: str  # video id
    identity: str | None  # from the layout; None: the video id stands in for the person
    images: tuple[str, ...] = ()  # frame image files in order, for image sequences
    frame_numbers: tuple[int, ...] = ()  # the dataset's number of each frame (default: its position)
    labels: Labels | None = None

    def fingerprint(self) -> str:
        """The path with its file's size and modification time (a frame folder: its frame count and
        first and last frame's): what the ledger compares, so that a changed input is built again."""
        files = [self.images[0], self.images[-1]] if self.images else [self.path]
        stamps = []
        for file in files:
            try:
                st = os.stat(file)
                stamps.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                stamps.append("missing")
        return "|".join([self.path, *(str(len(self.images)),) * bool(self.images), *stamps])


@dataclass(frozen=True)
class Skip:
    """An input a layout found but cannot use, and why (the reason names the file)."""

    path: str
    reason: str


def _named(rel: Path) -> tuple[str | None, str]:
    """(identity, video id) of a video at `rel` (no suffix) under a layout root."""
    names = rel.parts
    identity = names[0] if len(names) >= 2 else None
    video = "/".join(names[:2]) if len(names) >= 3 else str(rel)
    return identity, video


def _is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


def walk_videos(root: Path) -> Iterator[Path]:
    """Video files under `root`: each folder's files as it lists them, then its sub-folders sorted."""
    folders = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                folders.append(entry.name)  # folder names only: a flat folder's files are not kept
            elif _is_video(entry.name) and entry.is_file():
                yield Path(entry.path)
    for name in sorted(folders):
        yield from walk_videos(root / name)


def folder_inputs(root: Path) -> Iterator[Input]:
    for path in walk_videos(root):
        rel = path.relative_to(root).with_suffix("")
        identity, video = _named(rel)
        yield Input(str(path), str(rel), video, identity)


def listed_inputs(list_file: Path) -> Iterator[Input | Skip]:
    base = list_file.parent
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            text, _, named = line.partition("\t")
            given = Path(text.strip())
            path = given if given.is_absolute() else base / given
            if not _is_video(path.name):
                yield Skip(str(path), f"{list_file}:{number}: {path}: not a video ({', '.join(VIDEO_SUFFIXES)})")
                continue
            if given.is_absolute():  # no root to name folders from: the path is the video
                video = str(given.with_suffix("")).lstrip("/")
                yield Input(str(path), video, video, named.strip() or None)
                continue
            identity, video = _named(given.with_suffix(""))
            yield Input(str(path), str(given.with_suffix("")), video, named.strip() or identity)


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """[start, end) row ranges over which frame numbers count up by one."""
    cuts = [0, *(i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1), len(numbers)]
    return list(zip(cuts[:-1], cuts[1:]))


def _table_inputs(table, kind: str) -> Iterator[Input]:
    """One input per run of consecutive frames of each sequence of a `FrameTable` (records come
    grouped by sequence): a clip never spans frames a dataset left uncoded or without an image."""
    start = 0
    records = table.records
    while start < len(records):
        end = start
        while end < len(records) and records[end].sequence == records[start].sequence:
            end += 1
        sequence = records[start:end]
        runs = _runs([int(r.frame) for r in sequence])
        for first, last in runs:
            rows = sequence[first:last]
            head = rows[0]
            labels = Labels(np.stack([r.occ for r in rows]).astype(np.int8), np.stack([r.intensity for r in rows]))
            numbers = tuple(int(r.frame) for r in rows)
            part = f" (frames {numbers[0]}-{numbers[-1]})" if len(runs) > 1 else ""
            name = head.sequence.replace("_", "/") + (f"/{numbers[0]:06d}" if part else "")
            if kind == "images":
                yield Input(str(Path(head.source).parent) + part, name, head.sequence, head.subject,
                            images=tuple(r.source for r in rows), frame_numbers=numbers, labels=labels)  # fmt: skip
            else:
                yield Input(head.source + part, name, head.sequence, head.subject, frame_numbers=numbers, labels=labels)
        start = end


def au_names(layout: str) -> list[str]:
    """The AU names a layout labels (empty for unlabelled video)."""
    from shards.datasets.table import BP4D_AUS, DISFA_INTENSITY_AUS, au_name

    return [au_name(a) for a in {"bp4d": BP4D_AUS, "disfa": DISFA_INTENSITY_AUS}.get(layout, [])]


def read_inputs(layout: str, root: str | Path) -> Iterator[Input | Skip]:
    """The inputs of `root` (a folder, or for `list` a text file) in `layout`, as a stream."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    root = Path(root)
    if layout == "list":
        if not root.is_file():
            raise FileNotFoundError(f"list of videos not found: {root}")
        return listed_inputs(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    if layout == "folder":
        return folder_inputs(root)
    return _labelled_inputs(layout, root)


def _labelled_inputs(layout: str, root: Path) -> Iterator[Input | Skip]:
    """A released AU dataset's sequences, read by fine-tuning's own parsing. A sequence it cannot
    label or read comes as a `Skip`, not as the whole build's failure: BP4D's parser leaves such
    sequences out and says so in its notes; DISFA's refuses a subject, so each is read alone."""
    from shards.datasets.bp4d import load_bp4d
    from shards.datasets.disfa import disfa_videos, load_disfa

    if layout == "bp4d":
        table = load_bp4d(root, missing_images="skip")
        for number, note in enumerate(table.notes, 1):  # sequences left out, frames without an image
            yield Skip(f"{root} (BP4D note {number})", f"{root}: {note}")
        yield from _table_inputs(table, "images")
        return
    for subject, video in sorted(disfa_videos(root, "left")[1].items()):
        try:  # every AU DISFA codes; the landmarks come from our own face pipeline
            table = load_disfa(root, intensity=True, landmarks=False, subjects=[subject])
        except (ValueError, FileNotFoundError) as e:
            yield Skip(str(video), f"{video}: labels missing or wrong: {e}")
            continue
        yield from _table_inputs(table, "video")
