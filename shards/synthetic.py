"""A small procedural face-clip generator: data for tests, benchmarks and the quickstart.

Each identity has a persistent face (skin tone, face shape, eye spacing, brow and mouth size);
each clip moves the head slightly and plays AU events whose effects are local: brows rise
(AU1, AU2) or fall (AU4), lip corners rise (AU12), lips part (AU25) and the jaw drops (AU26).
Frames are JPEG-encoded at a fixed quality, so the same arguments give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import simplejpeg

from shards.format import Clip
from shards.writer import ShardWriter

AU_NAMES = ["AU1", "AU2", "AU4", "AU12", "AU25", "AU26"]
BASE_RATES = np.array([0.2, 0.15, 0.2, 0.35, 0.3, 0.15])


def _identity(seed: int, person: int) -> dict:
    r = np.random.default_rng([seed, person, 7])
    return {
        "skin": np.array([235, 200, 170]) + r.uniform(0, 1) * np.array([-125, -130, -120]),  # light to dark
        "face_w": r.uniform(0.30, 0.38),
        "face_h": r.uniform(0.40, 0.47),
        "eye_dx": r.uniform(0.12, 0.16),
        "brow": r.uniform(20, 70),
        "mouth_w": r.uniform(0.10, 0.15),
        "background": r.uniform(30, 220, size=3),
    }


def _au_track(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Intensity 0..5 per frame and AU: at most one onset-apex-offset event per AU and clip."""
    track = np.zeros((frames, len(AU_NAMES)), dtype=np.float32)
    for a, rate in enumerate(BASE_RATES):
        if rng.random() < rate:
            apex, width, peak = rng.integers(0, frames), rng.uniform(2, frames), rng.uniform(1.5, 5)
            track[:, a] = peak * np.exp(-0.5 * ((np.arange(frames) - apex) / (width / 2)) ** 2)
    return track


def render_frame(person: dict, au: np.ndarray, pose: np.ndarray, size: int, noise: np.random.Generator):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + pose[0], 0.5 + pose[1]
    img = np.empty((size, size, 3), np.float32)
    img[:] = person["background"]
    face = ((xx - cx) / person["face_w"]) ** 2 + ((yy - cy) / person["face_h"]) ** 2 < 1
    shade = 1 - 0.3 * (xx - cx)  # light from the left
    img[face] = person["skin"] * shade[face, None]
    au1, au2, au4, au12, au25, au26 = au / 5
    for side in (-1, 1):
        ex = cx + side * person["eye_dx"]
        eye = ((xx - ex) / 0.05) ** 2 + ((yy - cy + 0.08) / 0.025) ** 2 < 1
        img[eye] = (250, 250, 250)
        img[((xx - ex) / 0.02) ** 2 + ((yy - cy + 0.08) / 0.02) ** 2 < 1] = (40, 30, 20)
        inner = au1 if side * (xx - ex).mean() < 0 else au2
        brow_y = cy - 0.15 - 0.04 * inner + 0.03 * au4
        brow = (np.abs(xx - ex + side * 0.01 * au4) < 0.06) & (np.abs(yy - brow_y) < 0.012)
        img[brow] = person["brow"]
    mouth_y = cy + 0.2 + 0.05 * au26
    curve = -0.04 * au12 * ((xx - cx) / person["mouth_w"]) ** 2
    lips = (np.abs(xx - cx) < person["mouth_w"]) & (np.abs(yy - mouth_y - curve) < 0.012 + 0.03 * au25)
    img[lips] = (150, 40, 50)
    img += noise.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_clip(seed: int, index: int, identities: int, frames: int, size: int, quality: int = 90) -> Clip:
    rng = np.random.default_rng([seed, index])
    person_id = int(rng.integers(identities))
    person = _identity(seed, person_id)
    au = _au_track(rng, frames)
    drift = np.cumsum(rng.normal(0, 0.004, (frames, 2)), axis=0) + rng.normal(0, 0.02, 2)
    images = [render_frame(person, au[t], drift[t], size, rng) for t in range(frames)]
    occ = (au >= 1.0).astype(np.int8)
    return Clip(
        clip_id=f"synth{seed}-{index:07d}",
        video_id=f"synth{seed}-p{person_id:05d}-v{index % 3}",
        identity=f"p{person_id:05d}",
        frames=[simplejpeg.encode_jpeg(im, quality=quality, colorspace="RGB") for im in images],
        size=(size, size),
        fps=25.0,
        source="synthetic",
        au_occ=occ,
        au_int=np.round(au, 2),
    )


def write_synthetic(out_dir, clips: int, frames: int = 16, size: int = 112, identities: int = 20, seed: int = 0,
                    shard_samples: int = 100, name: str = "synth"):  # fmt: skip
    """Render `clips` clips into shards under `out_dir`; returns the manifest."""
    settings = dict(clips=clips, frames=frames, size=size, identities=identities, seed=seed)
    builder = {"name": "auforge.shards.synthetic", "settings": settings}
    with ShardWriter(out_dir, name, au_names=AU_NAMES, builder=builder, max_samples=shard_samples) as writer:
        for i in range(clips):
            writer.write(make_clip(seed, i, identities, frames, size))
        return writer.close()


def cache_root() -> Path:
    """Where generated data lives: $AUFORGE_CACHE, else ~/.cache/auforge."""
    return Path(os.environ.get("AUFORGE_CACHE", Path.home() / ".cache" / "auforge"))


def cached_synthetic(clips: int, frames: int = 16, size: int = 112, identities: int = 20, seed: int = 0,
                     shard_samples: int = 100) -> Path:  # fmt: skip
    """A synthetic set in the cache, generated on first use; the folder is named by its settings.

    Generation goes to a temporary folder renamed into place when complete, so an interrupted
    generation is never mistaken for a finished one.
    """
    settings = dict(clips=clips, frames=frames, size=size, identities=identities, seed=seed, shard_samples=shard_samples)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / "synthetic" / f"synth-{tag}"
    if not (final / "manifest.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            write_synthetic(tmp, **settings)
            try:
                tmp.rename(final)
            except OSError:  # another process finished first: use theirs
                if not (final / "manifest.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
