"""Synthetic face clips with ground-truth AUs, landmarks and identities (`python -m shards synth`).

No real face video can be fetched on these machines, so tests, the quickstart and the
label-efficiency studies run on clips rendered here by `shards.face`. What a clip holds:

* a person (`Identity`): fixed geometry, skin, hair, brows, glasses and AU habits, the same in
  every clip and video of theirs;
* AU events with onset, apex and offset, drawn from expression programs that make AUs co-occur
  as in real faces (6+12, 1+2, 4+7, 25+26, 23+24, 1+4+15, 9+10 ...) plus single-AU events, at
  rates skewed like BP4D and DISFA, scaled by the person's habits;
* nuisance, labelled truthfully: blinks (AU45), talking-like mouth motion (AU25, AU26), head
  pose drifting within the clip, scale and position jitter, light direction and colour,
  background clutter, blur, sensor noise and JPEG quality (per video or per clip).

Clip i depends only on (seed, i), so the same arguments give byte-identical shards. A share of
the identities is held out: their clips go to shards of their own, and the manifest's `splits`
lists both splits' shards and identities.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageFilter

from shards.face import AU_INDEX, AU_NAMES, Identity, face_state, landmarks_canonical, project, render
from shards.format import Clip
from shards import parts
from shards.manifest import MANIFEST_NAME, Manifest, heldout_people
from shards.writer import ShardWriter

log = logging.getLogger(__name__)

FPS = 25.0
VIDEOS_PER_PERSON = 4

# Expression programs: how often one starts in a clip, and the AUs it moves as
# (probability the AU takes part, intensity relative to the person's typical apex).
PROGRAMS = {
    "smile": (0.55, {"AU6": (0.8, 0.8), "AU12": (1.0, 1.0), "AU7": (0.4, 0.6), "AU25": (0.35, 0.7), "AU10": (0.35, 0.5)}),
    "laugh": (0.08, {"AU6": (1.0, 1.0), "AU12": (1.0, 1.1), "AU25": (1.0, 1.0), "AU26": (0.8, 0.9), "AU7": (0.5, 0.7)}),
    "surprise": (0.1, {"AU1": (1.0, 1.0), "AU2": (0.9, 1.0), "AU5": (0.5, 0.8), "AU25": (0.6, 0.8), "AU26": (0.5, 0.8)}),
    "frown": (0.16, {"AU4": (1.0, 1.0), "AU7": (0.8, 0.9), "AU23": (0.35, 0.7), "AU24": (0.3, 0.7), "AU17": (0.3, 0.6)}),
    "sad": (0.1, {"AU1": (0.8, 0.8), "AU4": (0.6, 0.7), "AU15": (1.0, 1.0), "AU17": (0.6, 0.8)}),
    "disgust": (0.06, {"AU9": (1.0, 1.0), "AU10": (0.8, 0.9), "AU4": (0.4, 0.6), "AU17": (0.3, 0.6)}),
    "press": (0.12, {"AU23": (1.0, 1.0), "AU24": (0.9, 1.0), "AU17": (0.6, 0.8), "AU14": (0.3, 0.6)}),
    "dimple": (0.25, {"AU14": (1.0, 1.0), "AU12": (0.3, 0.5), "AU10": (0.3, 0.5)}),
    "fear": (0.03, {"AU1": (1.0, 0.9), "AU2": (0.8, 0.8), "AU4": (0.8, 0.8), "AU5": (0.7, 0.8), "AU20": (1.0, 1.0), "AU25": (0.8, 0.8)}),
    "stretch": (0.04, {"AU20": (1.0, 1.0), "AU25": (0.4, 0.6)}),
}  # fmt: skip
# Single-AU events per clip, on top of the programs (upper-face AUs move on their own often).
SOLO = {"AU1": 0.08, "AU2": 0.05, "AU4": 0.06, "AU5": 0.02, "AU6": 0.05, "AU7": 0.3, "AU9": 0.02,
        "AU10": 0.35, "AU12": 0.12, "AU14": 0.18, "AU15": 0.08, "AU17": 0.18, "AU20": 0.02,
        "AU23": 0.06, "AU24": 0.05, "AU25": 0.1, "AU26": 0.06}  # fmt: skip
TALKING = 0.25  # share of clips with talking-like mouth motion
BLINKS_PER_SECOND = 0.3


def _envelope(rng, frames: int) -> np.ndarray:
    """0..1 per frame: onset ramp, apex hold, offset ramp; the event may start before the clip
    or end after it, as events in a window of a longer video do."""
    start = rng.uniform(-1.5 * frames, frames)
    onset, apex, offset = rng.uniform(2, 8), rng.uniform(2, 3 * frames), rng.uniform(3, 10)
    t = np.arange(frames, dtype=np.float32)
    rise = np.clip((t - start) / onset, 0, 1)
    fall = np.clip(1 - (t - start - onset - apex) / offset, 0, 1)
    env = np.minimum(rise, fall)
    return env * env * (3 - 2 * env)  # smoothstep: muscles ease in and out


def au_track(rng, person: Identity, frames: int) -> np.ndarray:
    """AU intensities [T, A] 0..5 for one clip of this person."""
    track = np.zeros((frames, len(AU_NAMES)), np.float32)

    def add(name: str, env: np.ndarray, relative: float):
        i = AU_INDEX[name]
        peak = np.clip(person.au_peak[i] * relative * rng.uniform(0.7, 1.3), 0.5, 5.0)
        track[:, i] = np.maximum(track[:, i], peak * env)

    for rate, aus in PROGRAMS.values():
        habit = np.mean([person.au_rate[AU_INDEX[a]] for a in aus])
        if rng.random() < rate * habit:
            env = _envelope(rng, frames)
            for name, (p, rel) in aus.items():
                if rng.random() < p:
                    add(name, env, rel)
    for name, rate in SOLO.items():
        if rng.random() < rate * person.au_rate[AU_INDEX[name]]:
            add(name, _envelope(rng, frames), 1.0)
    if rng.random() < TALKING * person.au_rate[AU_INDEX["AU25"]]:
        t = np.arange(frames) / FPS
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 2 * np.pi))
        track[:, AU_INDEX["AU25"]] = np.maximum(track[:, AU_INDEX["AU25"]], 1.2 + 2.0 * wave)
        track[:, AU_INDEX["AU26"]] = np.maximum(track[:, AU_INDEX["AU26"]], 2.6 * wave**1.5)
    if rng.random() < 1 - np.exp(-BLINKS_PER_SECOND * frames / FPS):  # the same rate whatever the clip length
        mid, half = rng.uniform(0, frames), rng.uniform(1.2, 2.5)
        blink = np.clip(1 - np.abs(np.arange(frames) - mid) / half, 0, 1)
        track[:, AU_INDEX["AU45"]] = 5 * blink
    return np.round(track, 2)


def _background(rng, size: int) -> np.ndarray:
    """A cluttered static scene: a lit gradient, shapes and blotches."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(20, 230, 3)
    tilt = rng.uniform(-60, 60, 3)
    img = base + tilt * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))[..., None]
    for _ in range(rng.integers(3, 9)):
        colour = rng.uniform(0, 255, 3)
        cx, cy, w, h = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4)
        if rng.random() < 0.5:
            mask = (np.abs(x - cx) < w / 2) & (np.abs(y - cy) < h / 2)
        else:
            mask = ((x - cx) / w) ** 2 + ((y - cy) / h) ** 2 < 0.25
        img[mask] = img[mask] * 0.3 + colour * 0.7
    return np.clip(img, 0, 255).astype(np.float32)


def _video_setting(seed: int, person: int, video: int, size: int) -> dict:
    """What stays fixed within one video: scene, light, camera."""
    r = np.random.default_rng([seed, person, video, 0x5E7])
    direction = np.array([r.uniform(-0.8, 0.8), r.uniform(-0.7, 0.3), 1.0])
    warmth = r.uniform(-0.12, 0.12)
    return {
        "background": _background(r, size),
        "light": {
            "direction": direction / np.linalg.norm(direction),
            "ambient": np.float32(r.uniform(0.45, 0.7)),
            "diffuse": np.float32(r.uniform(0.3, 0.6)),
            "colour": np.array([1 + warmth, 1.0, 1 - warmth], np.float32) * r.uniform(0.8, 1.15),
        },
        "pose": np.array([r.normal(0, 0.2), r.normal(0, 0.12), r.normal(0, 0.08)]),  # yaw, pitch, roll
        "scale": r.uniform(0.9, 1.1),
    }


def _pose_track(rng, setting: dict, frames: int) -> np.ndarray:
    """[T, 6] yaw, pitch, roll, scale, dx, dy: the video's pose, a per-clip offset and a drift."""
    angles = setting["pose"] + rng.normal(0, 0.08, 3) + np.cumsum(rng.normal(0, 0.012, (frames, 3)), 0)
    angles = np.clip(angles, [-0.6, -0.35, -0.35], [0.6, 0.35, 0.35])
    scale = setting["scale"] * rng.uniform(0.93, 1.07) * (1 + np.cumsum(rng.normal(0, 0.003, frames)))
    shift = rng.normal(0, 0.03, 2) + np.cumsum(rng.normal(0, 0.003, (frames, 2)), 0)
    return np.column_stack([angles, scale, shift]).astype(np.float32)


def _blur_frames(img: np.ndarray, radius: float) -> np.ndarray:
    """uint8 [T, H, W, 3] through a Gaussian blur of `radius` px (optics, focus, motion)."""
    if radius < 0.3:
        return img
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in img])


class Renderer:
    """Renders clips for one seed; keeps recent identities so their textures are made once."""

    def __init__(self, seed: int, identities: int, frames: int, size: int, cache: int = 512,
                 landmarks: str = "renderer"):  # fmt: skip
        if landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {', '.join(LANDMARK_SOURCES)}, not {landmarks!r}")
        self.seed, self.identities, self.frames, self.size = seed, identities, frames, size
        self.landmarks = landmarks
        self._faces = None  # the face pipeline's backend, made on first use (landmarks="dlib")
        self._people: dict[int, Identity] = {}
        self._settings: dict[tuple, dict] = {}
        self._cache = cache
        self.seconds = {"draw": 0.0, "encode": 0.0}
        # Sensor noise: frames take random windows of one bank, cheaper than fresh noise per pixel.
        bank = np.random.default_rng([seed, 0xB0]).random((2 * size, 2 * size, 3), dtype=np.float32)
        self._noise = (bank - 0.5) * np.float32(np.sqrt(12))  # unit variance

    def person(self, index: int) -> Identity:
        if index not in self._people:
            if len(self._people) >= self._cache:
                self._people.pop(next(iter(self._people)))
            self._people[index] = Identity.make(self.seed, index)
        return self._people[index]

    def setting(self, person: int, video: int) -> dict:
        key = (person, video)
        if key not in self._settings:
            if len(self._settings) >= self._cache:
                self._settings.pop(next(iter(self._settings)))
            self._settings[key] = _video_setting(self.seed, person, video, self.size)
        return self._settings[key]

    def person_of(self, clip: int) -> int:
        return int(np.random.default_rng([self.seed, clip, 0xC1]).integers(self.identities))

    def _draws(self, clip: int) -> dict:
        """Everything the clip's random stream draws, in the order it draws it (rendering draws
        nothing): person, video and its setting, AU and pose tracks, focus, sensor noise, and the
        metadata's start frame and JPEG quality."""
        rng = np.random.default_rng([self.seed, clip])
        d = {"index": self.person_of(clip)}
        d["person"] = self.person(d["index"])
        d["video"] = int(rng.integers(VIDEOS_PER_PERSON))
        d["setting"] = self.setting(d["index"], d["video"])
        d["au"] = au_track(rng, d["person"], self.frames)
        d["pose"] = _pose_track(rng, d["setting"], self.frames)
        d["focus"] = rng.uniform(0.3, 1.2) if rng.random() < 0.5 else 0.0  # half the clips are sharp
        d["sigma"] = np.float32(rng.uniform(1, 5))
        d["offsets"] = rng.integers(0, self.size, (self.frames, 2))
        d["start"], d["quality"] = int(rng.integers(0, 5000)), int(rng.integers(70, 96))
        return d

    def nuisance(self, clip: int) -> dict[str, np.ndarray]:
        """What the renderer drew for `clip` besides AUs and landmarks, never stored in a shard:
        the head's `pose` per frame [T, 6] (yaw, pitch, roll in radians, scale, dx, dy), the
        video's `light` direction [3], and the clip's first stored `frame_index` (`start`). For
        probes of what an embedding holds (`python -m pretrain.contents`)."""
        d = self._draws(clip)
        return {"pose": d["pose"], "light": d["setting"]["light"]["direction"].astype(np.float32),
                "start": d["start"]}  # fmt: skip

    def frames_and_labels(self, clip: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """uint8 frames [T, S, S, 3], AU intensities [T, A], landmarks [T, 68, 2], and metadata."""
        t0 = time.perf_counter()
        d = self._draws(clip)
        state = face_state(d["person"], d["au"])
        img = render(d["person"], state, d["pose"], self.size, d["setting"]["light"], d["setting"]["background"])
        frames = _blur_frames(np.clip(img, 0, 255).astype(np.uint8), d["focus"])
        noise = np.stack([self._noise[y : y + self.size, x : x + self.size] for y, x in d["offsets"]])
        frames = np.clip(frames + d["sigma"] * noise, 0, 255).astype(np.uint8)
        landmarks = project(landmarks_canonical(d["person"], state), d["pose"], self.size)
        meta = {"person": d["index"], "video": d["video"], "start": d["start"], "quality": d["quality"]}
        self.seconds["draw"] += time.perf_counter() - t0
        return frames, d["au"], landmarks, meta

    def clip(self, clip: int, prefix: str = "synth") -> Clip:
        frames, au, landmarks, meta = self.frames_and_labels(clip)
        if self.landmarks == "dlib":  # what the face pipeline sees, as on real video
            from shards.face_pipeline import DlibFaces, clip_landmarks

            self._faces = self._faces or DlibFaces()
            landmarks = clip_landmarks(frames, self._faces)
        t0 = time.perf_counter()
        jpegs = [simplejpeg.encode_jpeg(f, quality=meta["quality"], colorspace="RGB") for f in frames]
        self.seconds["encode"] += time.perf_counter() - t0
        person = f"p{meta['person']:05d}"
        return Clip(
            clip_id=f"{prefix}{self.seed}-{clip:07d}",
            video_id=f"{prefix}{self.seed}-{person}-v{meta['video']}",
            identity=person,
            frames=jpegs,
            size=(self.size, self.size),
            fps=FPS,
            source="synthetic",
            track_id=f"{prefix}{self.seed}-{person}-v{meta['video']}-t0",
            frame_index=list(range(meta["start"], meta["start"] + self.frames)),
            landmarks=landmarks,
            au_occ=occurrence(au),
            au_int=au,
        )


def clip_number(clip_id: str) -> int:
    """The renderer's clip index in a clip id (or tar key) that `Renderer.clip` wrote:
    PREFIX SEED-NNNNNNN."""
    return int(clip_id.rsplit("-", 1)[1])


def make_clip(seed: int, index: int, identities: int, frames: int, size: int) -> Clip:
    """Clip `index` of the synthetic set with these settings (one-off; `Renderer` for many)."""
    return Renderer(seed, identities, frames, size).clip(index)


def occurrence(intensity: np.ndarray) -> np.ndarray:
    """Present from FACS level A (trace, intensity 1) up."""
    return (intensity >= 1.0).astype(np.int8)


@dataclass
class SynthSettings:
    """What names a synthetic set: the same settings give byte-identical shards, and
    `cached_synthetic` names its folder by them. These defaults are the only ones: `write_synthetic`,
    `cached_synthetic` and `python -m shards synth` take theirs from here, and the Hydra schema
    (`finetune.config.SyntheticConfig`) changes only the set's size."""

    clips: int = 200
    frames: int = 16  # stored (rendered) frames per clip
    size: int = 112  # square frame side in pixels
    identities: int = 20  # people, each in VIDEOS_PER_PERSON videos
    seed: int = 0
    shard_samples: int = 100  # clips per shard
    heldout: float = 0.2  # share of the identities held out (split 'heldout'; 0: none)
    # the stored landmarks: the renderer's exact ones, or dlib's on the rendered frames (the face
    # pipeline's, as real video gets them); recorded and named only when not the renderer's
    landmarks: str = "renderer"


LANDMARK_SOURCES = ("renderer", "dlib")


def naming(settings: SynthSettings) -> dict:
    """The settings that name a set (its cache folder, its manifest's builder): every field, less
    `landmarks` when it is the renderer's, so that sets from before that field keep their names."""
    named = asdict(settings)
    if named["landmarks"] == "renderer":
        del named["landmarks"]
    return named


_worker: Renderer | None = None  # a rendering process's own renderer (see `rendered`)


def _start_worker(seed: int, identities: int, frames: int, size: int, landmarks: str) -> None:
    global _worker
    _worker = Renderer(seed, identities, frames, size, landmarks=landmarks)


def _render(index: int) -> Clip:
    return _worker.clip(index)


@contextlib.contextmanager
def rendered(renderer: Renderer, indices: list[int], workers: int):
    """The clips `indices`, in that order, rendered here or by `workers` processes: the same
    bytes either way, since each clip draws from its own seeded generator. Processes are spawned
    (not forked: the parent may hold torch's threads) and only for sets large enough to repay
    their start."""
    if workers <= 1 or len(indices) < 64:
        yield (renderer.clip(i) for i in indices)
        return
    args = (renderer.seed, renderer.identities, renderer.frames, renderer.size, renderer.landmarks)
    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, args) as pool:
        yield pool.imap(_render, indices, chunksize=4)


def write_synthetic(out_dir, clips: int = SynthSettings.clips, *, name: str = "synth",
                    part: tuple[int, int] | None = None, workers: int = 1, **settings) -> Manifest:  # fmt: skip
    """Render `clips` clips into shards under `out_dir`: the training split first, then the
    held-out identities' split (absent when `heldout` is 0). `settings`: the other fields of
    `SynthSettings` (its defaults for the rest). Returns the manifest. `workers` processes render
    (byte-identical shards whatever their number).

    `part=(k, n)` renders only part k of n of the clips (a task of a job array): its shards go
    beside the other parts' and its manifest to `.parts/`, for `shards.parts.merge`."""
    s = SynthSettings(clips, **settings)
    recorded = {k: v for k, v in naming(s).items() if k != "shard_samples"}  # how the shards roll is not recorded
    builder = {"name": "auforge.shards.synthetic", "version": 2, "settings": recorded}
    renderer = Renderer(s.seed, s.identities, s.frames, s.size, landmarks=s.landmarks)
    held = heldout_people(s.seed, s.identities, s.heldout)
    order = {"train": [], "heldout": []}
    for i in range(s.clips) if part is None else parts.part_range(s.clips, *part):
        order["heldout" if renderer.person_of(i) in held else "train"].append(i)
    shard_name = name if part is None else parts.part_name(name, part[0])
    with ShardWriter(out_dir, shard_name, au_names=AU_NAMES, builder=builder, max_samples=s.shard_samples,
                     manifest_name=MANIFEST_NAME if part is None else None) as writer:  # fmt: skip
        for split, indices in order.items():
            if not indices:
                continue
            writer.start_split(split)
            with rendered(renderer, indices, workers) as clips_of_split:
                for clip in clips_of_split:
                    writer.write(clip)
        manifest = writer.close()
        if part is not None:
            parts.save_part(out_dir, *part, manifest, writer.seen(), name)
        return manifest


def cache_root() -> Path:
    """Where generated data lives: $AUFORGE_CACHE, else ~/.cache/auforge."""
    return Path(os.environ.get("AUFORGE_CACHE", Path.home() / ".cache" / "auforge"))


def cached_synthetic(clips: int = SynthSettings.clips, **settings) -> Path:
    """A synthetic set in the cache, generated on first use; the folder is named by its settings
    (`SynthSettings`: `settings` are its other fields, its defaults for the rest).

    Generation goes to a temporary folder renamed into place when complete, so an interrupted
    generation is never mistaken for a finished one.
    """
    named = naming(SynthSettings(clips, **settings))
    tag = hashlib.sha256(json.dumps({**named, "version": 2}, sort_keys=True).encode()).hexdigest()[:12]
    settings = asdict(SynthSettings(clips, **settings))
    final = cache_root() / "synthetic" / f"synth-{tag}"
    if not (final / "manifest.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            started = time.perf_counter()
            write_synthetic(tmp, workers=os.cpu_count() or 1, **settings)
            log.info("rendered %d synthetic clips into %s in %.0fs (once: later runs reuse them)", clips, final,
                     time.perf_counter() - started)  # fmt: skip
            try:
                tmp.rename(final)
            except OSError:  # another process finished first: use theirs
                if not (final / "manifest.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
