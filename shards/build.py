"""`python -m shards build`: face videos on disk into auforge.clip/1 shards.

The input is a folder of face-cropped videos in VoxCeleb2's layout, `ROOT/IDENTITY/VIDEO/CLIP.mp4`
(the identity and the video are the folder names); `ROOT/IDENTITY/CLIP.mp4` gives the identity
with the file as its own video, and `ROOT/CLIP.mp4` neither (the reader then lets the video stand
in for the identity, and says so). Every video yields up to `clips_per_video` clips of `frames`
frames, `stride` apart, in windows that do not overlap, centre-cropped to a square and resized
to `size`. No landmarks or AU labels: those come from a face aligner or a labelled set.

With `faces="dlib"` (`--faces dlib`) the videos need not be face crops: the face pipeline
(`shards.face_pipeline`) finds and tracks every face, and each clip is one face track's window,
cut square around that frame's 68 landmarks (as fine-tuning crops faces), with the landmarks in
the crop, the detector's score and the crop's box in the video frame per frame (`face_score`,
`face_crop`) stored with it; `track_id` names the
track. The centre crop (`faces="none"`) stays the default until the layouts of issue 16 land.

A video that cannot be decoded, or is too short for one clip, is skipped, counted and reported
by path and reason; the others are written. Held-out identities (split `heldout`) are drawn from
the sorted identities with a fixed seed, so every part of a job array draws the same ones.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from shards import parts
from shards.format import Clip
from shards.geometry import crop_box
from shards.manifest import MANIFEST_NAME, Manifest, heldout_people
from shards.writer import ShardWriter

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
FACES = ("none", "dlib")  # how faces are found: the videos are face crops, or the face pipeline's dlib


class NoClips(ValueError):
    """Every video was skipped: an empty set would verify and then starve a training run, so no
    manifest is written. `skipped` maps each video to why it was skipped."""

    def __init__(self, root: Path, skipped: dict[str, str]):
        super().__init__(f"{root}: no clip written: all {len(skipped)} video(s) were skipped, so no manifest either")
        self.skipped = skipped


def find_videos(root: Path) -> list[tuple[Path, str | None, str]]:
    """(path, identity, video id) of every video under `root`, sorted by path."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
        rel = path.relative_to(root).with_suffix("")
        names = rel.parts
        identity = names[0] if len(names) >= 2 else None
        video = "/".join(names[:2]) if len(names) >= 3 else str(rel)
        found.append((path, identity, video))
    return found


def _square(image: np.ndarray, size: int) -> np.ndarray:
    left, top, right, bottom = crop_box(image.shape, None, "centre")
    crop = Image.fromarray(image[top:bottom, left:right])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


@contextlib.contextmanager
def decoded(path: Path):
    """(fps, the decoded frames of the first video stream, in order: PyAV frames, converted by
    whoever needs their pixels); a file PyAV cannot read raises ValueError naming it."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            yield float(stream.average_rate or 25), container.decode(stream)
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{path}: cannot decode: {e}") from e


def video_clips(path: Path, *, frames: int, stride: int, size: int, clips_per_video: int, quality: int):
    """[window], fps of one video, each window the `Clip` fields it sets (`name`: its clip id under
    the video's, `frames`: JPEG bytes, `frame_index`); raises ValueError naming the file when it
    cannot be read or is shorter than one clip."""
    span = (frames - 1) * stride + 1
    windows: list[dict] = []
    with decoded(path) as (fps, video):
        current: list[bytes] = []
        for index, frame in enumerate(video):
            offset = index - len(windows) * span
            if offset % stride == 0:
                image = _square(frame.to_ndarray(format="rgb24"), size)
                current.append(simplejpeg.encode_jpeg(image, quality=quality, colorspace="RGB"))
            if offset == span - 1:
                first = index - span + 1
                index_of = list(range(first, index + 1, stride))
                windows.append(dict(name=f"{first:06d}", frames=current, frame_index=index_of))
                current = []
                if len(windows) == clips_per_video:
                    break
    if not windows:
        raise ValueError(f"{path}: shorter than one clip ({span} frames: {frames} at stride {stride})")
    return windows, fps


def face_clips(path: Path, backend, *, frames: int, stride: int, size: int, clips_per_video: int, quality: int):
    """[window], fps as `video_clips` gives them, plus each window's `track` (its track under the
    video's), `landmarks` [T, 68, 2] in the crop and, in `extra`, the detection scores and the
    crop boxes in the frame: up to `clips_per_video` windows of `frames` frames `stride` apart
    from the face tracks of one video, in the order the tracks end. Raises ValueError naming the
    file when it cannot be read or no face stays tracked for one window."""
    from shards.face_pipeline import track_faces

    span = (frames - 1) * stride + 1
    clips = []
    with decoded(path) as (fps, video):
        rgb = (frame.to_ndarray(format="rgb24") for frame in video)
        tracks = track_faces(rgb, backend, min_length=span, crop_size=size, max_length=span * clips_per_video)
        for number, track in enumerate(tracks):
            t = track.arrays()
            for window in range(len(t["frames"]) // span):
                rows = window * span + np.arange(0, span, stride)
                jpegs = [simplejpeg.encode_jpeg(c, quality=quality, colorspace="RGB") for c in t["crops"][rows]]
                index = t["frames"][rows]
                clips.append(dict(name=f"t{number:03d}/{index[0]:06d}", track=f"t{number:03d}", frames=jpegs,
                                  frame_index=index.tolist(), landmarks=t["crop_landmarks"][rows],
                                  extra={"face_score": [round(float(x), 3) for x in t["scores"][rows]],
                                         "face_crop": t["crop_boxes"][rows].tolist()}))  # fmt: skip
                if len(clips) == clips_per_video:
                    return clips, fps
    if not clips:
        raise ValueError(f"{path}: no face tracked for one clip ({span} frames: {frames} at stride {stride})")
    return clips, fps


def build_shards(root, out_dir, *, frames: int = 16, stride: int = 1, size: int = 112, clips_per_video: int = 4,
                 quality: int = 90, shard_samples: int = 100, heldout: float = 0.0, seed: int = 0,
                 name: str = "clips", part: tuple[int, int] | None = None,
                 faces: str = "none") -> tuple[Manifest, dict[str, str]]:  # fmt: skip
    """Write the videos under `root` as shards in `out_dir`. Returns the manifest and the skipped
    videos (path -> reason). `part=(k, n)`: only part k of n of the videos, for `shards.parts.merge`;
    `faces`: "none" (centre crops of face videos) or "dlib" (the face pipeline)."""
    if faces not in FACES:
        raise ValueError(f"faces must be one of {', '.join(FACES)}, not {faces!r}")
    for what, value in (("frames", frames), ("stride", stride), ("size", size), ("clips_per_video", clips_per_video)):
        if value < 1:
            raise ValueError(f"{what} must be at least 1, not {value}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    videos = find_videos(root)
    if not videos:
        raise ValueError(f"{root}: no videos ({', '.join(VIDEO_SUFFIXES)}) under it")
    people = sorted({i for _, i, _ in videos if i is not None})
    held = {people[i] for i in heldout_people(seed, len(people), heldout)}
    mine = videos if part is None else [videos[i] for i in parts.part_range(len(videos), *part)]
    settings = dict(root=str(root.resolve()), frames=frames, stride=stride, size=size, clips_per_video=clips_per_video,
                    quality=quality, heldout=heldout, seed=seed, faces=faces)  # fmt: skip
    builder = {"name": "auforge.shards.build", "version": 1, "settings": settings}
    skipped: dict[str, str] = {}
    written = 0
    backend = None
    if faces == "dlib":
        from shards.face_pipeline import DlibFaces

        backend = DlibFaces()
    shard_name = name if part is None else parts.part_name(name, part[0])
    with ShardWriter(out_dir, shard_name, builder=builder, max_samples=shard_samples,
                     manifest_name=MANIFEST_NAME if part is None else None) as writer:  # fmt: skip
        for split in ("train", "heldout"):
            todo = [v for v in mine if (v[1] in held) == (split == "heldout")]
            if todo:
                writer.start_split(split)
            for path, identity, video in todo:
                cut = dict(frames=frames, stride=stride, size=size, clips_per_video=clips_per_video, quality=quality)
                try:
                    windows, fps = video_clips(path, **cut) if backend is None else face_clips(path, backend, **cut)
                except ValueError as e:
                    skipped[str(path)] = str(e)
                    log.warning("skipped %s", e)
                    continue
                clip_base = str(path.relative_to(root).with_suffix(""))
                written += len(windows)
                for window in windows:
                    track = window.pop("track", None)
                    writer.write(Clip(clip_id=f"{clip_base}/{window.pop('name')}", video_id=video,
                                      identity=identity, size=(size, size), fps=fps, source=str(root.name),
                                      track_id=None if track is None else f"{clip_base}/{track}", **window))  # fmt: skip
        # Raised inside the writer, which then writes no manifest. An empty part is recorded
        # all the same: merging needs every part, and refuses a set that is empty as a whole.
        if not written and part is None:
            raise NoClips(root, skipped)
        manifest = writer.close()
        if part is not None:
            parts.save_part(out_dir, *part, manifest, writer.seen(), name)
    if skipped:
        log.warning("skipped %d of %d videos (listed above)", len(skipped), len(mine))
    return manifest, skipped
