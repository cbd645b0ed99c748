"""`python -m shards.bench`: how fast the streaming reader decodes clips, against its limits.

For 16-frame 112 px clips, in one process and on one core (so figures are per core):
* limit: decoding the same JPEG bytes from memory with simplejpeg (libjpeg-turbo), nothing else;
* reader: `ClipStream` in-process (tar parsing, metadata, temporal sampling, labels, batching);
* naive: one loose JPEG file per frame opened with PIL;
and the reader's share of the limit, bytes per clip, decoding at half scale, and resident memory
after streaming 1,000 and 100,000 clips (resampled), which must stay flat.

`--synth` instead prints how many synthetic clips (16 frames, 112 px) one core renders per
second, and the shares of drawing (face, blur, noise) and JPEG encoding; `--faces` how many of
200 synthetic faces the face pipeline finds, its landmark error against the renderer's and its
milliseconds a frame: dlib at each upsampling, and MediaPipe (both detectors) where installed;
`--build` how many clips `shards build` writes per second per core from MP4s of rendered faces
placed in larger frames, and the shares of its time spent decoding, detecting, landmarking and
JPEG-encoding, against decoding alone (the floor) in the same process.
Measurements alternate and the best of the repeats is kept, since the machine is shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import psutil
import simplejpeg
import torch
from PIL import Image

from shards.decode import iter_groups
from shards.format import frame_member
from shards.stream import ClipStream
from shards.synthetic import Renderer, cached_synthetic
from shards.timing import Clock, mib, peak_rss

FRAMES, SIZE = 16, 112
CLOCK = Clock()


def _load_clips(folder: Path) -> list[list[bytes]]:
    clips = []
    for tar in sorted(folder.glob("*.tar")):
        for group in iter_groups(str(tar)):
            clips.append([group[frame_member(i)] for i in range(FRAMES)])
    return clips


def limit_rate(clips: list[list[bytes]], scale: int = 1) -> float:
    out = np.empty((FRAMES, SIZE // scale, SIZE // scale, 3), np.uint8)

    def decode():
        for frames in clips:
            for t, data in enumerate(frames):
                simplejpeg.decode_jpeg(data, fastdct=True, fastupsample=True, min_height=SIZE // scale,
                                       min_width=SIZE // scale, buffer=out[t])  # fmt: skip

    return len(clips) / CLOCK.time(decode)


def reader_rate(folder: Path, n_clips: int, scale: int = 1, batch: int = 32) -> float:
    stream = ClipStream(folder, frames=FRAMES, batch_size=batch, scale=scale, num_workers=0, rank=0, world=1)
    it = iter(stream)
    next(it)  # open the shards before timing
    n_batches = max(1, n_clips // batch)

    def read():
        for _ in range(n_batches):
            next(it)

    return n_batches * batch / CLOCK.time(read)


def naive_rate(loose: Path, n_clips: int) -> float:
    def load():
        for c in range(n_clips):
            frames = [np.asarray(Image.open(loose / f"{c:05d}" / f"{t:03d}.jpg").convert("RGB")) for t in range(FRAMES)]
            torch.from_numpy(np.stack(frames))

    return n_clips / CLOCK.time(load)


def write_loose(clips: list[list[bytes]], root: Path) -> None:
    for c, frames in enumerate(clips):
        (root / f"{c:05d}").mkdir(parents=True, exist_ok=True)
        for t, data in enumerate(frames):
            (root / f"{c:05d}" / f"{t:03d}.jpg").write_bytes(data)


def memory_after(folder: Path, checkpoints: list[int], batch: int = 64) -> list[tuple[int, int, int]]:
    """(clips streamed, current RSS, peak RSS) in bytes after each checkpoint, one resampled stream."""
    stream = ClipStream(folder, frames=FRAMES, batch_size=batch, num_workers=0, rank=0, world=1)
    proc, seen, out = psutil.Process(), 0, []
    it = iter(stream)
    for target in checkpoints:
        while seen < target:
            seen += len(next(it))
        out.append((seen, proc.memory_info().rss, peak_rss()))
    return out


def synth_rate(clips: int) -> None:
    renderer = Renderer(seed=3, identities=1000, frames=FRAMES, size=SIZE)
    renderer.clip(0)  # first-call costs (imports, caches) out of the timing
    renderer.seconds = {"draw": 0.0, "encode": 0.0}

    def render():
        for i in range(1, clips + 1):
            renderer.clip(i)

    wall = CLOCK.time(render)
    draw, encode = renderer.seconds["draw"], renderer.seconds["encode"]
    print(f"synthetic clips of {FRAMES} frames at {SIZE} px, one core: {clips / wall:.1f} clips/s "
          f"(drawing {draw / wall:.0%}, JPEG encoding {encode / wall:.0%}, other {1 - (draw + encode) / wall:.0%})")  # fmt: skip


def synthetic_faces(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` frames of the renderer's faces (the benchmark's people, one frame a clip) at 112 px
    with their exact landmarks."""
    renderer = Renderer(seed, identities=120, frames=16, size=112)
    frames, truth = [], []
    for clip in range(count):
        video, _, landmarks, _ = renderer.frames_and_labels(clip)
        frames.append(video[clip % 16])
        truth.append(landmarks[clip % 16])
    return frames, truth


def faces_rate(count: int, upsamples: list[int]) -> None:
    """The face pipeline's backends on synthetic faces with known landmarks: dlib per upsampling,
    then MediaPipe's short- and full-range detectors with its face mesh, where it is installed."""
    from shards.face_pipeline import DlibFaces, MediaPipeFaces, measure

    frames, truth = synthetic_faces(count)
    print(f"{'backend':28s} {'detected':>10s} {'NME':>6s} {'median':>6s} {'inner51':>7s} {'detect ms':>9s} "
          f"{'landmarks ms':>12s}")  # fmt: skip

    def row(name: str, backend) -> None:
        backend.detect(frames[0])  # first calls (graph start-up) out of the timing
        backend.landmarks(frames[0], np.array([0, 0, frames[0].shape[1], frames[0].shape[0]], float))
        r = measure(backend, frames, truth)
        print(f"{name:28s} {r['detected']:4d}/{r['frames']:<5d} {r['nme']:6.3f} {r['nme_median']:6.3f} "
              f"{r['nme_inner']:7.3f} {r['detect_ms']:9.1f} {r['landmarks_ms']:12.1f}", flush=True)  # fmt: skip

    for upsample in upsamples:
        row(f"dlib, upsample {upsample}", DlibFaces(upsample=upsample))
    if importlib.util.find_spec("mediapipe") is None:
        print("mediapipe: not installed, skipped (README, \"Faces in real video\", says how to install it)")
    else:
        for full_range in (False, True):
            row(f"mediapipe, {'full' if full_range else 'short'}-range", MediaPipeFaces(full_range=full_range))
    print("NME: mean landmark distance over the outer-eye-corner distance, on detected faces; inner51: the same")
    print("without the jaw (points 17-67), whose definition differs most between landmark schemes; one core")


def write_face_video(path: Path, frames: np.ndarray, offset: tuple[int, int], fps: int = 25,
                     crop: bool = False) -> None:  # fmt: skip
    """A real MP4 of rendered faces [T, S, S, 3] placed at `offset` (x, y) in a larger grey frame:
    a face video that is not a face crop (`crop=True`: the faces alone, a face crop as VoxCeleb2's
    are), in H.264 at x264's default quality (CRF 23), as video on the web comes (MPEG-4 part 2 at
    PyAV's default bit rate blurs faces past dlib's detector)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1] + (0 if crop else 48), frames.shape[2] + (0 if crop else 80)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "23"}
        for face in frames:
            image = np.full((height, width, 3), 110, np.uint8)
            image[offset[1] : offset[1] + face.shape[0], offset[0] : offset[0] + face.shape[1]] = face
            for packet in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


class _Timed:
    """A face backend that adds up the seconds its detector and landmark calls take."""

    def __init__(self, backend):
        self.backend, self.name, self.seconds = backend, backend.name, {"detect": 0.0, "landmarks": 0.0}
        self.frames = 0  # the tracker detects in every frame it reads

    def detect(self, frame):
        self.frames += 1
        start = CLOCK()
        found = self.backend.detect(frame)
        self.seconds["detect"] += CLOCK() - start
        return found

    def landmarks(self, frame, box):
        start = CLOCK()
        points = self.backend.landmarks(frame, box)
        self.seconds["landmarks"] += CLOCK() - start
        return points


def build_rate(videos: int, frames: int = 40, clip: int = 16, per_video: int = 2) -> None:
    """`shards build --faces dlib` (one worker, so per core) over MP4s of rendered faces, its time
    split into decoding, detection, landmarks and encoding; decoding alone as the floor."""
    from shards import build
    from shards.face_pipeline import DlibFaces
    from shards.inputs import read_inputs

    renderer = Renderer(0, identities=120, frames=frames, size=SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        for v in range(videos):
            write_face_video(root / f"id{v % 4}" / f"v{v}" / "00001.mp4", renderer.frames_and_labels(v)[0], (40, 24))
        timed = build._backends["dlib"] = _Timed(DlibFaces())
        cut = dict(frames=clip, size=SIZE, clips_per_video=per_video)
        try:
            start = CLOCK()
            manifest, _ = build.build_shards(root, Path(tmp) / "faces", faces="dlib", **cut)
            total = CLOCK() - start
        finally:
            del build._backends["dlib"]
        decoded_frames, start = 0, CLOCK()
        for item in read_inputs("folder", root):  # every frame of every video, then per frame
            with build.input_frames(item) as (_, loaders):
                for load in loaders:
                    load()
                    decoded_frames += 1
        decode = (CLOCK() - start) * timed.frames / decoded_frames  # the frames the build read
        decoded_frames = timed.frames
        crops = [renderer.frames_and_labels(v)[0][0] for v in range(8)]
        frames_written = manifest.totals["frames"]
        start = CLOCK()
        for i in range(frames_written):
            simplejpeg.encode_jpeg(crops[i % 8], quality=90, colorspace="RGB")
        encode = CLOCK() - start
        start = CLOCK()
        plain, _ = build.build_shards(root, Path(tmp) / "plain", faces="none", **cut)
        centre = CLOCK() - start
    clips = manifest.totals["clips"]
    shares = {"decoding": decode, "detection": timed.seconds["detect"], "landmarks": timed.seconds["landmarks"],
              "JPEG encoding": encode}  # fmt: skip
    shares["the rest (tracking, crops, tar)"] = max(0.0, total - sum(shares.values()))
    print(f"{videos} MP4s of {frames} frames ({SIZE + 80}x{SIZE + 48}, a {SIZE} px face each), clips of {clip} frames, "
          f"up to {per_video} a video, one worker (one core):")  # fmt: skip
    print(f"  --faces dlib   {clips / total:6.2f} clips/s ({clips} clips in {total:.1f} s: {decoded_frames / total:.0f} "
          f"frames/s, {decode / total:.1%} of the {decoded_frames / decode:.0f} frames/s of decoding alone)")  # fmt: skip
    for what, seconds in shares.items():
        print(f"    {what:32s} {seconds / total:5.0%}  ({1000 * seconds / decoded_frames:5.1f} ms a frame)")
    print(f"  --faces none   {plain.totals['clips'] / centre:6.2f} clips/s (centre crops of face videos, no landmarks)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shards.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=512, help="clips in the benchmark set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=int, default=100_000, help="clips streamed for the memory check")
    parser.add_argument("--synth", action="store_true", help="measure the synthetic renderer instead")
    parser.add_argument("--faces", action="store_true",
                        help="measure the face pipeline on synthetic faces instead (200 frames, dlib upsampled 0-2x, MediaPipe)")  # fmt: skip
    parser.add_argument("--build", action="store_true",
                        help="measure shards build from MP4s instead (face pipeline: shares of decode, detect, landmarks, encode)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.build:
        build_rate(24)
        return
    if args.synth:
        synth_rate(max(args.clips // 4, 50))
        return
    if args.faces:
        faces_rate(200, [0, 1, 2])
        return

    folder = cached_synthetic(args.clips, frames=FRAMES, size=SIZE, identities=50, seed=1, shard_samples=128)
    clips = _load_clips(folder)
    shard_bytes = sum(p.stat().st_size for p in folder.glob("*.tar"))
    best = {"limit": 0.0, "reader": 0.0, "naive": 0.0, "limit/2": 0.0, "reader/2": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        write_loose(clips, Path(tmp))
        for _ in range(args.repeats):
            best["limit"] = max(best["limit"], limit_rate(clips))
            best["reader"] = max(best["reader"], reader_rate(folder, len(clips)))
            best["naive"] = max(best["naive"], naive_rate(Path(tmp), len(clips)))
            best["limit/2"] = max(best["limit/2"], limit_rate(clips, scale=2))
            best["reader/2"] = max(best["reader/2"], reader_rate(folder, len(clips), scale=2))
    print(f"clips of {FRAMES} frames at {SIZE} px, one core, best of {args.repeats}:")
    print(f"  limit  (simplejpeg from memory)     {best['limit']:7.0f} clips/s")
    print(f"  reader (ClipStream, in-process)      {best['reader']:7.0f} clips/s = {best['reader'] / best['limit']:.0%} of the limit")
    print(f"  naive  (loose JPEG files, PIL)       {best['naive']:7.0f} clips/s = {best['naive'] / best['limit']:.0%} of the limit")
    print(f"  at half scale ({SIZE // 2} px, DCT scaling): limit {best['limit/2']:.0f}, reader {best['reader/2']:.0f} clips/s "
          f"= {best['reader/2'] / best['limit/2']:.0%}")  # fmt: skip
    print(f"  bytes per clip in shards: {shard_bytes / len(clips) / 1000:.1f} kB")
    mem = memory_after(folder, [1_000, args.long])
    (n1, rss1, _), (n2, rss2, peak2) = mem
    print(
        f"  reader RSS after {n1:,} clips {mib(rss1, '.0f')}, after {n2:,} clips {mib(rss2, '.0f')} "
        f"(growth {rss2 / rss1 - 1:+.1%}; peak {mib(peak2, '.0f')})"
    )


if __name__ == "__main__":
    main()
