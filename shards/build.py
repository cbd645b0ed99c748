"""`python -m shards build`: videos, or the released AU datasets, into auforge.clip/1 shards.

Inputs come as a stream from a layout (`shards.inputs`: a folder of videos at any depth in
VoxCeleb2's naming, a text file of paths, BP4D or DISFA as released, their AU labels attached to
every frame by the parsing fine-tuning uses). Every input yields up to `clips_per_video` clips of
`frames` frames, `stride` apart, in windows that do not overlap:

* `faces="dlib"` (the default) or `"mediapipe"`: the face pipeline (`shards.face_pipeline`) finds and tracks every
  face; a clip is a window of one face track, cut square around that frame's 68 landmarks (as
  fine-tuning crops faces) and resized to `size`, stored with the landmarks in the crop, the
  detector's score (null where the tracker bridged a missed detection) and the crop's box in the
  frame per frame (`face_score`, `face_crop`), its
  `track_id` naming the track. Pre-cropped video (VoxCeleb2) goes the same way: the landmarks are
  still computed.
* `faces="none"`: the frames are face crops already; each is centre-cropped square and resized,
  without landmarks.

The stream is cut into chunks of `shard_samples // clips_per_video` inputs of one split, numbered
in stream order; chunk N becomes shard `NAME-N.tar`, written by one of `workers` processes and then
recorded in the build's ledger (`shards.ledger`), so that a killed build, run again, skips the
finished chunks and ends with the same shards. An input that cannot be read, has no face tracked
for one clip, or lacks labels is skipped, counted and reported by path and reason; the others are
written. Held-out identities (split `heldout`) are drawn from the sorted identities with a fixed
seed, so every part of a job array draws the same ones; inputs whose layout names no identity stay
in `train` and are counted in the manifest's `totals["clips_without_identity"]` (their video id
stands in for the person).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import logging
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import simplejpeg

from shards import ledger, parts
from shards.datasets.pixels import load_pixels
from shards.face_pipeline import BACKENDS, make_backend, track_faces
from shards.format import Clip
from shards.geometry import crop_box, cut_square
from shards.inputs import VIDEO_SUFFIXES, Input, Skip, au_names, read_inputs
from shards.manifest import MANIFEST_NAME, Manifest, heldout_people
from shards.writer import ShardWriter

log = logging.getLogger(__name__)

# how faces are found: by a backend of the face pipeline (dlib's, the default since it installs with
# the project; MediaPipe's where installed: README, "Faces in real video"), or not (face crops)
FACES = (*BACKENDS, "none")
IMAGE_SEQUENCE_FPS = 25.0  # BP4D's frame rate: its frame folders carry none


class NoClips(ValueError):
    """Every input was skipped: an empty set would verify and then starve a training run, so no
    manifest is written. `skipped` maps each input to why it was skipped."""

    def __init__(self, root: Path, skipped: dict[str, str]):
        super().__init__(f"{root}: no clip written: all {len(skipped)} input(s) were skipped, so no manifest either")
        self.skipped = skipped


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


@contextlib.contextmanager
def input_frames(item: Input):
    """(fps, the input's frames in order as loaders: zero-argument calls giving RGB uint8 [H, W, 3],
    so that a frame nobody uses is never converted); a labelled input's frames end with its labels.
    A file that cannot be read raises ValueError naming it."""
    if item.images:
        yield IMAGE_SEQUENCE_FPS, (lambda p=p: load_pixels(p) for p in item.images)
        return
    with decoded(Path(item.path)) as (fps, video):
        loaders = (lambda f=f: f.to_ndarray(format="rgb24") for f in video)
        yield fps, itertools.islice(loaders, None if item.labels is None else len(item.labels.occ))


def _window(item: Input, rows: np.ndarray, jpegs: list[bytes], prefix: str = "", **fields) -> dict:
    """The `Clip` fields of the window of `item` at frame positions `rows`."""
    numbers = np.asarray(item.frame_numbers)[rows] if item.frame_numbers else rows
    window = dict(name=f"{prefix}{int(numbers[0]):06d}", frames=jpegs, frame_index=[int(n) for n in numbers], **fields)
    if item.labels is not None:
        window.update(au_occ=item.labels.occ[rows], au_int=item.labels.intensity[rows])
    return window


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB")


def centre_clips(item: Input, *, frames: int, stride: int, size: int, clips_per_video: int, quality: int):
    """[window], fps of one input whose frames are face crops: each window the `Clip` fields it sets
    (`name`: its clip id under the input's, `frames`: JPEG bytes, `frame_index`, AU labels where
    the input has them). Raises ValueError naming the file when it cannot be read or is shorter
    than one clip."""
    span = (frames - 1) * stride + 1
    windows: list[dict] = []
    with input_frames(item) as (fps, loaders):
        current: list[bytes] = []
        for position, load in enumerate(loaders):
            offset = position - len(windows) * span
            if offset % stride == 0:
                image = load()
                current.append(_jpeg(cut_square(image, crop_box(image.shape, None, "centre"), size), quality))
            if offset == span - 1:
                windows.append(_window(item, np.arange(position - span + 1, position + 1, stride), current))
                current = []
                if len(windows) == clips_per_video:
                    break
    if not windows:
        raise ValueError(f"{item.path}: shorter than one clip ({span} frames: {frames} at stride {stride})")
    return windows, fps


def face_clips(item: Input, backend, *, frames: int, stride: int, size: int, clips_per_video: int, quality: int):
    """[window], fps as `centre_clips` gives them, plus each window's `track` (its track under the
    input's), `landmarks` [T, 68, 2] in the crop and, in `extra`, the detection scores and the
    crop boxes in the frame: up to `clips_per_video` windows of `frames` frames `stride` apart
    from the face tracks of one input, in the order the tracks end. Raises ValueError naming the
    file when it cannot be read or no face stays tracked for one window."""
    span = (frames - 1) * stride + 1
    clips = []
    with input_frames(item) as (fps, loaders):
        rgb = (load() for load in loaders)
        tracks = track_faces(rgb, backend, min_length=span, crop_size=size, max_length=span * clips_per_video)
        for number, track in enumerate(tracks):
            t = track.arrays()
            for window in range(len(t["frames"]) // span):
                rows = window * span + np.arange(0, span, stride)
                jpegs = [_jpeg(c, quality) for c in t["crops"][rows]]
                clips.append(_window(item, t["frames"][rows], jpegs, prefix=f"t{number:03d}/", track=f"t{number:03d}",
                                     landmarks=t["crop_landmarks"][rows],
                                     extra={"face_score": [None if np.isnan(x) else round(float(x), 3) for x in t["scores"][rows]],
                                            "face_crop": t["crop_boxes"][rows].tolist()}))  # fmt: skip
                if len(clips) == clips_per_video:
                    return clips, fps
    if not clips:
        raise ValueError(f"{item.path}: no face tracked for one clip ({span} frames: {frames} at stride {stride})")
    return clips, fps


_backends: dict = {}  # faces -> the backend this process made (a worker makes one, on first use)


def _backend(faces: str):
    if faces == "none":
        return None
    if faces not in _backends:
        _backends[faces] = make_backend(faces)
    return _backends[faces]


def build_chunk(job: dict) -> tuple[int, Manifest]:
    """Write chunk `job["number"]` (its `inputs`, all of split `job["split"]`) as one shard and
    record it in the ledger; returns (number, its record). Runs in a worker process."""
    items: list[Input] = job["inputs"]
    cut, backend = job["cut"], _backend(job["faces"])
    skipped: dict[str, str] = {}
    unnamed = 0
    size = cut["size"]
    with ShardWriter(job["out_dir"], job["name"], au_names=job["au_names"], builder=job["builder"],
                     max_samples=1 << 62, max_bytes=1 << 62, first_shard=job["number"], manifest_name=None) as writer:  # fmt: skip
        writer.start_split(job["split"])
        for item in items:
            try:
                windows, fps = centre_clips(item, **cut) if backend is None else face_clips(item, backend, **cut)
            except Exception as e:  # one bad input of millions is reported, never fatal
                reason = str(e) if isinstance(e, ValueError) else f"{item.path}: {type(e).__name__}: {e}"
                skipped[item.path] = reason
                log.warning("skipped %s", reason)
                continue
            unnamed += len(windows) if item.identity is None else 0
            for window in windows:
                track = window.pop("track", None)
                writer.write(Clip(clip_id=f"{item.name}/{window.pop('name')}", video_id=item.video, identity=item.identity,
                                  size=(size, size), fps=fps, source=job["source"],
                                  track_id=None if track is None else f"{item.name}/{track}", **window))  # fmt: skip
        manifest = writer.close()
    manifest.totals["clips_without_identity"] = unnamed
    return job["number"], ledger.save(job["out_dir"], job["number"], manifest, inputs=job["fingerprints"],
                                      skipped=skipped, seen=writer.seen(), name=job["name"])  # fmt: skip


def chunks(stream: Iterable[Input | Skip], held: set[str], per_chunk: int, skipped: dict[str, str],
           tally: dict) -> Iterator[tuple[int, str, list[Input]]]:  # fmt: skip
    """(number, split, inputs) of every chunk of `stream`, numbered as they fill; what the layout
    could not use goes to `skipped`; `tally` gets the digest of the input order ("order") and, at
    the end, the number of chunks ("chunks")."""
    pending: dict[str, list[Input]] = {"train": [], "heldout": []}
    number = 0
    order = tally.setdefault("order", hashlib.sha256())
    for item in stream:
        order.update(item.path.encode() + b"\n")
        if isinstance(item, Skip):
            skipped[item.path] = item.reason
            log.warning("skipped %s", item.reason)
            continue
        split = "heldout" if item.identity in held else "train"
        pending[split].append(item)
        if len(pending[split]) == per_chunk:
            yield number, split, pending[split]
            number, pending[split] = number + 1, []
    for split, items in pending.items():
        if items:
            yield number, split, items
            number += 1
    tally["chunks"] = number


def _run(jobs: Iterator[dict], workers: int) -> Iterator[tuple[int, Manifest]]:
    """Each job's (number, record): finished ones from the ledger, the others built, in `workers`
    processes when more than one (at most two jobs each waiting, so the stream is read as it goes)."""
    todo = ((job, ledger.finished(job["out_dir"], job["number"], job["fingerprints"])) for job in jobs)
    if workers <= 1:
        for job, done in todo:
            yield (job["number"], done) if done is not None else build_chunk(job)
        return
    # spawn, not fork: PyAV's and dlib's threads do not survive a fork
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        running: set = set()
        for job, done in todo:
            if done is not None:
                yield job["number"], done
                continue
            running.add(pool.submit(build_chunk, job))
            if len(running) >= 2 * workers:
                ended, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                yield from (f.result() for f in ended)
        yield from (f.result() for f in concurrent.futures.as_completed(running))
    finally:  # on an error or Ctrl-C, the chunks not begun are dropped rather than waited for
        pool.shutdown(cancel_futures=True)


def build_shards(root, out_dir, *, layout: str = "folder", frames: int = 16, stride: int = 1, size: int = 112,
                 clips_per_video: int = 4, quality: int = 90, shard_samples: int = 100, heldout: float = 0.0,
                 seed: int = 0, name: str = "clips", part: tuple[int, int] | None = None, faces: str = "dlib",
                 workers: int = 1) -> tuple[Manifest, dict[str, str]]:  # fmt: skip
    """Write the inputs of `root` (a folder, or for layout `list` a text file of paths) as shards
    in `out_dir`, resuming from its ledger. Returns the manifest and the skipped inputs (path ->
    reason). `part=(k, n)`: only the chunks k, k + n, ... for `shards.parts.merge`; `workers`:
    processes that build chunks."""
    if faces not in FACES:
        raise ValueError(f"faces must be one of {', '.join(FACES)}, not {faces!r}")
    _backend(faces)  # a backend that cannot be made fails here, before any input is read
    for what, value in (("frames", frames), ("stride", stride), ("size", size), ("clips_per_video", clips_per_video),
                        ("shard_samples", shard_samples)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{what} must be at least 1, not {value}")
    root = Path(root)
    read_inputs(layout, root)  # the layout and the root exist: raised here, before a ledger is started
    held: set[str] = set()
    if heldout > 0:  # a first pass for the identities alone: the draw needs them all
        people = sorted({i.identity for i in read_inputs(layout, root) if isinstance(i, Input) and i.identity})
        held = {people[i] for i in heldout_people(seed, len(people), heldout)}
    per_chunk = max(1, shard_samples // clips_per_video)
    cut = dict(frames=frames, stride=stride, size=size, clips_per_video=clips_per_video, quality=quality)
    settings = dict(root=str(root.resolve()), layout=layout, **cut, inputs_per_shard=per_chunk, heldout=heldout,
                    seed=seed, faces=faces, name=name)  # fmt: skip
    builder = {"name": "auforge.shards.build", "version": 2, "settings": settings}
    out_dir = Path(out_dir)
    ledger.open_ledger(out_dir, builder)
    skipped: dict[str, str] = {}
    base = dict(out_dir=str(out_dir), name=name, cut=cut, faces=faces, au_names=au_names(layout), builder=builder,
                source=root.name)  # fmt: skip
    tally: dict = {}
    numbered = chunks(read_inputs(layout, root), held, per_chunk, skipped, tally)
    jobs = (dict(base, number=number, split=split, inputs=items, fingerprints=[i.fingerprint() for i in items])
            for number, split, items in numbered if part is None or number % part[1] == part[0])  # fmt: skip
    records = {}
    for number, record in _run(jobs, workers):
        skipped.update(record.builder["part"].pop("skipped"))
        record.builder["part"].pop("inputs")  # what is kept until the manifest: counts and ids, not paths
        records[number] = record
    stale = ledger.forget_after(out_dir, tally["chunks"])
    if stale:
        log.warning("removed the shards of chunks %s, which an earlier build of more inputs left", stale)
    if skipped:
        log.warning("skipped %d input(s): %s", len(skipped), summary(skipped))
    found = [(ledger.record_path(out_dir, n), records[n]) for n in sorted(records)]
    if not found and not skipped and part is None:
        raise ValueError(f"{root}: no inputs in layout {layout!r} (videos: {', '.join(VIDEO_SUFFIXES)})")
    if found:
        manifest, seen = parts.combine(out_dir, found)
    else:  # a part with no chunk: recorded all the same, since merging needs every part
        manifest = Manifest(name, [0, 0], 0, base["au_names"], builder, [], dict(clips=0, frames=0, videos=0,
                            identities=0, clips_without_identity=0))  # fmt: skip
        seen = {"videos": [], "identities": []}
    if part is not None:
        parts.save_part(out_dir, *part, manifest, {**seen, "inputs_digest": tally["order"].hexdigest()}, name)
    elif not manifest.total_clips:
        raise NoClips(root, skipped)
    else:
        manifest.save(out_dir / MANIFEST_NAME)
    return manifest, skipped


def summary(skipped: dict[str, str]) -> str:
    """How many inputs were skipped for each kind of reason, most first ("3 cannot decode, ...")."""
    kinds = Counter(_kind(reason) for reason in skipped.values())
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def _kind(reason: str) -> str:
    for kind in ("cannot decode", "shorter than one clip", "no face tracked", "labels missing", "cannot read",
                 "not a video"):  # fmt: skip
        if kind in reason:
            return kind
    return "other"
