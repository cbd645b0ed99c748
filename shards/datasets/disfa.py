"""DISFA in its released layout, as its owners distribute it (the layout below).

* Videos: `Videos_LeftCamera/LeftVideoSN001_comp.avi` (or `Video_RightCamera/...`; case and
  the plural vary between copies, so names are matched without case). 4,845 frames per video at
  20 fps in the real set; the loader checks labels against each video's own frame count (the
  count its container declares), not against 4,845.
* Labels: `ActionUnit_Labels/SN001/SN001_au{N}.txt`, one file per AU (1, 2, 4, 5, 6, 9, 12, 15,
  17, 20, 25, 26), rows `frame,intensity` 0..5, no header; row t is video frame t counting from
  0 (the common loaders' convention). The frame column must count up by one.
* Occurrence: present where intensity >= 2. `intensity=False` labels `DISFA_AUS` (8 AUs);
  `intensity=True` labels `DISFA_INTENSITY_AUS` (12). Either way `occ` is the >= 2 rule and
  `intensity` the 0..5 codes, for the table's AUs.
* Landmarks (left camera only; the right camera's frames get None):
  `Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat` (key `pts`, 66 x 2 points), file
  number = video frame from 0; some subjects name them `l0NNNN_lm.mat`, whose number is taken
  as frame + `l0_first` (default 1, as public DISFA loaders read them: `l00001` is frame 0).
  Missing files leave that frame's landmarks None; files past the video's end, or naming a frame
  twice, are ignored and counted in `table.notes`.

Bad input raises before any training: a video with no label file for an asked-for AU
(`FileNotFoundError` naming the expected file), a label file whose row count differs from the
video's frame count (`ValueError` naming both), an AU DISFA does not label, a malformed value.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.io

from shards.datasets.paths import child, first_child, listing
from shards.datasets.table import DISFA_AUS, DISFA_INTENSITY_AUS, FrameRecord, FrameTable, au_name, au_number
from shards.datasets.video import video_frame_count

__all__ = ["load_disfa", "disfa_videos", "read_disfa_labels", "read_disfa_landmarks", "PRESENT_AT"]

log = logging.getLogger(__name__)

PRESENT_AT = 2  # DISFA occurrence: intensity >= 2
N_LANDMARKS = 66


def disfa_videos(root: Path, camera: str) -> tuple[Path, dict[str, Path]]:
    """(the camera's video folder, {subject: its video})."""
    cam = camera.lower()
    if cam not in ("left", "right"):
        raise ValueError(f"DISFA camera must be 'left' or 'right', got {camera!r}")
    folder = first_child(root, rf"videos?_{cam}camera", dirs=True)
    if folder is None:
        raise FileNotFoundError(f"DISFA: no Videos_{cam.capitalize()}Camera folder in {root}")
    videos: dict[str, Path] = {}
    for name in sorted(listing(folder).values()):
        m = re.fullmatch(rf"{cam}videosn(\d+)(?:_comp)?\.avi", name, re.IGNORECASE)
        if m:
            subject = f"SN{int(m.group(1)):03d}"
            if subject in videos:
                raise ValueError(f"DISFA: two videos for {subject}: {videos[subject]} and {folder / name}")
            videos[subject] = folder / name
    if not videos:
        raise FileNotFoundError(f"DISFA: no {cam.capitalize()}VideoSNxxx_comp.avi files in {folder}")
    return folder, videos


def read_disfa_labels(path: Path) -> np.ndarray:
    """Intensities int8 [rows] of one `SNxxx_au{N}.txt` (row t = frame t)."""
    values: list[int] = []
    first = None
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cells = [c.strip() for c in line.replace(";", ",").split(",")]
            try:
                frame, v = int(float(cells[0])), float(cells[1])
            except (ValueError, IndexError):
                raise ValueError(f"{path}, line {n}: expected 'frame,intensity', got {line.strip()!r}") from None
            if first is None:
                first = frame
            elif frame != first + len(values):
                raise ValueError(f"{path}, line {n}: frame {frame} where {first + len(values)} was expected "
                                 "(rows must be consecutive frames: row t is video frame t)")  # fmt: skip
            if v not in (0, 1, 2, 3, 4, 5):
                raise ValueError(f"{path}, line {n}: intensity {cells[1]!r} (expected an integer 0..5)")
            values.append(int(v))
    return np.asarray(values, np.int8)


def _landmark_number(name: str, subject: str, l0_first: int) -> int | None:
    m = re.fullmatch(rf"{subject}_(\d+)_lm\.mat", name, re.IGNORECASE)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"l(\d+)_lm\.mat", name, re.IGNORECASE)
    if m:
        return int(m.group(1)) - l0_first
    return None


def _load_pts(path: Path) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for a damaged file
        raise ValueError(f"{path}: cannot read landmark file: {e}") from e
    if "pts" not in mat:
        raise ValueError(f"{path}: no 'pts' in landmark file (keys {sorted(k for k in mat if not k.startswith('__'))})")
    pts = np.asarray(mat["pts"], np.float32)
    if pts.shape == (2, N_LANDMARKS):
        pts = pts.T
    if pts.shape != (N_LANDMARKS, 2):
        raise ValueError(f"{path}: 'pts' has shape {pts.shape}, expected ({N_LANDMARKS}, 2)")
    return pts


def read_disfa_landmarks(folder: Path, subject: str, n_frames: int, *, l0_first: int = 1
                         ) -> tuple[list[np.ndarray | None], list[str]]:  # fmt: skip
    """Per-frame landmarks (None where no file) of one subject's `tmp_frame_lm` folder, and notes."""
    out: list[np.ndarray | None] = [None] * n_frames
    chosen: dict[int, str] = {}
    extra, doubled, odd = [], [], []
    for name in sorted(listing(folder).values(), key=lambda n: (not n.upper().startswith(subject), n)):
        if not name.lower().endswith(".mat"):
            continue
        t = _landmark_number(name, subject, l0_first)
        if t is None:
            odd.append(name)
        elif not 0 <= t < n_frames:
            extra.append(name)
        elif t in chosen:
            doubled.append(f"{name} (frame {t} also {chosen[t]})")
        else:
            chosen[t] = name
            out[t] = _load_pts(folder / name)
    notes = []
    if extra:
        notes.append(f"{folder}: {len(extra)} landmark files past the video's {n_frames} frames ignored: {extra[:3]}")
    if doubled:
        notes.append(f"{folder}: {len(doubled)} landmark files name a frame already covered, ignored: {doubled[:3]}")
    if odd:
        notes.append(f"{folder}: {len(odd)} .mat files with unexpected names ignored: {odd[:3]}")
    if len(chosen) < n_frames:
        notes.append(f"{folder}: {n_frames - len(chosen)} of {n_frames} frames have no landmark file")
    return out, notes


def load_disfa(root: str | Path, *, camera: str = "left", intensity: bool = False,
               aus: Iterable[int | str] | None = None, subjects: Iterable[str] | None = None,
               landmarks: bool = True, l0_first: int = 1) -> FrameTable:  # fmt: skip
    """DISFA frames of one camera with occurrence (intensity >= 2) and intensity labels.

    `aus` overrides the AU list (default `DISFA_INTENSITY_AUS` with `intensity=True`, else
    `DISFA_AUS`); each must be one DISFA labels. `subjects`: load only these (each needs a video).
    `landmarks=False` skips reading the landmark files (about 4,845 small files per subject).
    Records: subjects sorted, frames 0..n-1 of each video; `source` is the video path and
    `sequence` the subject.
    """
    root = Path(root)
    au_list = [au_number(a) for a in (aus if aus is not None else DISFA_INTENSITY_AUS if intensity else DISFA_AUS)]
    lacking = [au_name(a) for a in au_list if a not in DISFA_INTENSITY_AUS]
    if lacking or not au_list:
        raise ValueError(f"DISFA ({root}) has no labels for {lacking or 'an empty AU list'}; "
                         f"it labels {[au_name(a) for a in DISFA_INTENSITY_AUS]}")  # fmt: skip
    video_dir, videos = disfa_videos(root, camera)
    if subjects is not None:
        wanted = {s.upper() for s in subjects}
        if missing := sorted(wanted - set(videos)):
            raise FileNotFoundError(f"DISFA: no video in {video_dir} for subjects {missing}")
        videos = {s: p for s, p in videos.items() if s in wanted}
    label_dir = child(root, "ActionUnit_Labels")
    if label_dir is None:
        raise FileNotFoundError(f"DISFA: no ActionUnit_Labels folder in {root}")
    lm_root = child(root, "Landmark_Points") if landmarks and camera.lower() == "left" else None
    notes: list[str] = []
    if landmarks and camera.lower() != "left":
        notes.append("DISFA: landmarks are given for the left camera only; right-camera frames get None")
    elif landmarks and lm_root is None:
        notes.append(f"DISFA: no Landmark_Points folder in {root}; frames get no landmarks")
    orphans = sorted(set(n.upper() for n in listing(label_dir).values() if re.fullmatch(r"SN\d+", n, re.I))
                     - set(videos))  # fmt: skip
    if orphans and subjects is None:
        notes.append(f"DISFA: label folders without a {camera} video in {video_dir}: {orphans}")

    records: list[FrameRecord] = []
    for subject in sorted(videos):
        video = videos[subject]
        n = video_frame_count(video)
        sub_labels = child(label_dir, subject)
        codes = np.empty((n, len(au_list)), np.int8)
        for j, au in enumerate(au_list):
            name = f"{subject}_au{au}.txt"
            path = child(sub_labels, name) if sub_labels is not None else None
            if path is None:
                raise FileNotFoundError(f"DISFA: missing label file {label_dir / subject / name} for video {video}")
            values = read_disfa_labels(path)
            if len(values) != n:
                raise ValueError(f"DISFA: {path} has {len(values)} rows but video {video} has {n} frames "
                                 "(row t labels video frame t; the released videos have 4845)")  # fmt: skip
            codes[:, j] = values
        pts: list[np.ndarray | None] = [None] * n
        if lm_root is not None:
            sub_lm = child(lm_root, subject)
            folder = child(sub_lm, "tmp_frame_lm") if sub_lm is not None else None
            if folder is None:
                missing = lm_root / subject / "tmp_frame_lm"
                notes.append(f"DISFA: no landmark folder {missing}; {subject} gets no landmarks")
            else:
                pts, lm_notes = read_disfa_landmarks(folder, subject, n, l0_first=l0_first)
                notes.extend(lm_notes)
        occ = (codes >= PRESENT_AT).astype(np.int8)
        inten = codes.astype(np.float32)
        for t in range(n):
            records.append(FrameRecord(subject, subject, t, str(video), occ[t], inten[t], pts[t]))
    for line in notes:
        log.info(line)
    return FrameTable("disfa", [au_name(a) for a in au_list], records, notes)
