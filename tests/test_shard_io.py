"""Writing shards and reading them back: round trip, manifest, stock tools, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch

from shards.decode import decode_clip, iter_groups
from shards.format import SCHEMA, Clip, stable_id
from shards.manifest import Manifest
from shards.sources import resolve_one
from shards.stream import ClipStream
from shards.synthetic import AU_NAMES, make_clip
from shards.writer import ShardWriter

REPO = Path(__file__).resolve().parents[1]
H, W, T = 32, 48, 6  # deliberately not square: catches H/W swaps
AUS = ["AU1", "AU2", "AU4", "AU12"]


def smooth_frames(i: int) -> list[np.ndarray]:
    """Smooth RGB images (JPEG keeps them almost exactly); frames of a clip differ strongly."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    out = []
    for t in range(T):
        r = 20 + 30 * t + xx
        g = 200 - 25 * t - yy
        b = 128 + 50 * np.sin(2 * np.pi * (xx + yy) / 64 + i)
        out.append(np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8))
    return out


def labelled_clip(i: int) -> tuple[Clip, list[np.ndarray]]:
    """Clip i with a mix of label situations: i % 4 == 0 no landmarks, 1 no AU labels at all,
    2 occurrence only, 3 both; unknowns (-1 / NaN) sprinkled in; clip 5 has no identity."""
    rng = np.random.default_rng([123, i])
    images = smooth_frames(i)
    landmarks = None if i % 4 == 0 else rng.uniform(0, 40, (T, 68, 2))
    occ = rng.integers(-1, 2, (T, len(AUS))).astype(np.int8)
    intensity = rng.uniform(0, 5, (T, len(AUS)))
    intensity[rng.random((T, len(AUS))) < 0.3] = np.nan
    clip = Clip(
        clip_id=f"clip.{i:03d}",  # a dot: the key must replace it (webdataset splits at dots)
        video_id=f"video-{i // 3}",
        identity=None if i == 5 else f"person-{i % 4}",
        frames=[simplejpeg.encode_jpeg(im, quality=95, colorspace="RGB") for im in images],
        size=(H, W),
        fps=30.0,
        source="unit",
        frame_index=[100 + 3 * t + i for t in range(T)],
        landmarks=landmarks,
        au_occ=None if i % 4 == 1 else occ,
        au_int=None if i % 4 in (1, 2) else intensity,
    )
    return clip, images


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roundtrip")
    clips = [labelled_clip(i) for i in range(12)]
    with ShardWriter(folder, "rt", au_names=AUS, max_samples=5) as writer:
        for clip, _ in clips:
            writer.write(clip)
        manifest = writer.close()
    return folder, manifest, clips


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. round trip ---------------------------------------------------------------------------


def test_round_trip_metadata_labels_and_frames(written):
    folder, manifest, clips = written
    stream = ClipStream(folder / "manifest.json", frames=T, batch_size=4, mode="exact", rank=0, world=1)
    assert stream.au_names == AUS
    batches = list(stream)
    assert len(batches) == len(stream) == 3

    expected = {clip.clip_id.replace(".", "_"): (clip, images) for clip, images in clips}
    seen = []
    for batch in batches:
        assert batch.frames.shape == (4, T, 3, H, W) and batch.frames.dtype == torch.uint8
        assert batch.identity.dtype == torch.int64 and batch.video.dtype == torch.int64
        assert batch.au_occ.dtype == torch.int8 and batch.au_occ.shape == (4, T, len(AUS))
        assert batch.au_int.shape == (4, T, len(AUS))
        assert batch.landmarks is not None and batch.landmarks.shape == (4, T, 68, 2)
        assert batch.valid.all()
        for b, key in enumerate(batch.keys):
            seen.append(key)
            clip, images = expected[key]
            assert batch.identity[b].item() == stable_id(clip.identity)
            assert batch.video[b].item() == stable_id(clip.video_id)
            assert batch.frame_index[b].tolist() == clip.frame_index

            occ = np.full((T, len(AUS)), -1, np.int8) if clip.au_occ is None else clip.au_occ
            np.testing.assert_array_equal(batch.au_occ[b].numpy(), occ)
            intensity = np.full((T, len(AUS)), np.nan) if clip.au_int is None else clip.au_int
            np.testing.assert_array_equal(  # NaN where unknown, otherwise float16-rounded
                batch.au_int[b].numpy(), intensity.astype(np.float16).astype(np.float32)
            )
            if clip.landmarks is None:
                assert torch.isnan(batch.landmarks[b]).all()
            else:
                np.testing.assert_array_equal(
                    batch.landmarks[b].numpy(), clip.landmarks.astype(np.float16).astype(np.float32)
                )

            decoded = batch.frames[b].permute(0, 2, 3, 1).numpy().astype(np.float64)  # [T, H, W, 3]
            for t in range(T):
                err = np.abs(decoded[t] - images[t]).mean()
                assert err < 3.0, f"{key} frame {t}: mean abs error {err:.2f}"
                other = np.abs(decoded[t] - images[(t + 1) % T]).mean()
                assert other > 10.0, f"{key} frame {t} looks like frame {(t + 1) % T}"
    assert seen == [clip.clip_id.replace(".", "_") for clip, _ in clips]  # manifest order, once each


def test_stored_metadata_json(written):
    folder, manifest, clips = written
    with tarfile.open(folder / manifest.shards[0].path) as tar:
        meta = json.load(tar.extractfile("clip_001.json"))
    clip = clips[1][0]
    assert meta["clip_id"] == "clip.001" and meta["video_id"] == clip.video_id
    assert meta["identity"] == clip.identity and meta["source"] == "unit" and meta["fps"] == 30.0
    assert meta["frame_index"] == clip.frame_index and meta["size"] == [H, W]


def test_manifest_matches_files(written):
    folder, manifest, clips = written
    assert [s.path for s in manifest.shards] == ["rt-000000.tar", "rt-000001.tar", "rt-000002.tar"]
    assert [s.samples for s in manifest.shards] == [5, 5, 2]  # rolled over by max_samples
    for info in manifest.shards:
        path = folder / info.path
        assert info.bytes == path.stat().st_size
        assert info.sha256 == sha256_of(path)
        with tarfile.open(path) as tar:
            assert sum(m.name.endswith(".json") for m in tar.getmembers()) == info.samples

    loaded = Manifest.load(folder / "manifest.json")
    assert loaded == manifest
    assert loaded.schema == SCHEMA and loaded.au_names == AUS
    assert loaded.frame_size == [H, W] and loaded.frames_per_clip == T
    assert loaded.total_clips == 12
    assert loaded.totals == {
        "clips": 12,
        "frames": 12 * T,
        "videos": len({c.video_id for c, _ in clips}),
        "identities": len({c.identity for c, _ in clips if c.identity is not None}),
    }
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_manifest_counts_the_clips_that_carry_labels(written, tmp_path):
    """Per shard, how many clips carry landmarks and AU labels: what a trainer needs to refuse an
    objective before it starts. Older manifests lack the counts: the stream reads a sample."""
    folder, manifest, clips = written
    for info, part in zip(manifest.shards, (clips[:5], clips[5:10], clips[10:])):
        assert info.labels == {
            "landmarks": sum(c.landmarks is not None for c, _ in part),
            "au": sum(c.au_occ is not None or c.au_int is not None for c, _ in part),
        }
    assert manifest.carries("landmarks") is True and manifest.carries("au") is True
    with pytest.raises(ValueError, match="unknown label 'aus'"):
        manifest.carries("aus")
    assert ClipStream(folder, frames=T, rank=0, world=1).carries("landmarks")

    old = tmp_path / "old"  # as written before the counts were recorded
    shutil.copytree(folder, old)
    raw = json.loads((old / "manifest.json").read_text())
    for shard in raw["shards"]:
        del shard["labels"]
    (old / "manifest.json").write_text(json.dumps(raw))
    assert Manifest.load(old).carries("landmarks") is None  # unknown, not False
    stream = ClipStream(old, frames=T, rank=0, world=1)
    assert stream.carries("au") is True  # clip 0, the first, has AU labels
    assert stream.carries("landmarks") is False  # and no landmarks: a probe sees only the first clip

    with ShardWriter(tmp_path / "plain", "p", max_samples=5) as writer:  # no AU names, no labels
        for i in range(3):
            clip, _ = labelled_clip(i)
            clip.landmarks = clip.au_occ = clip.au_int = None
            writer.write(clip)
    plain = writer.close()
    assert plain.shards[0].labels == {"landmarks": 0, "au": 0}
    assert plain.carries("landmarks") is False and plain.carries("au") is False


def test_verify_checks_the_label_counts(written, tmp_path):
    from shards.verify import verify

    folder = tmp_path / "set"
    shutil.copytree(written[0], folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["shards"][0]["labels"]["landmarks"] += 1
    (folder / "manifest.json").write_text(json.dumps(raw))
    reports, problems, _ = verify(folder)
    assert not problems and [r.path for r in reports if not r.ok] == [str(folder / "rt-000000.tar")]
    assert "clips carrying labels" in reports[0].problems[0] and "manifest says" in reports[0].problems[0]


def test_shards_roll_over_by_bytes(tmp_path):
    clips = [make_clip(1, i, 3, 4, 32) for i in range(12)]
    member_bytes = [sum(512 + -(-len(d) // 512) * 512 for _, d in c.members(len(AU_NAMES))) for c in clips]
    # A shard is the members, 1 KiB of end-of-archive blocks, padded to 10 KiB records: a limit
    # just above three of the largest clips so closed holds three clips or fewer, never more.
    max_bytes = -(-(3 * max(member_bytes) + 1024) // 10240) * 10240 + 512
    with ShardWriter(tmp_path, "b", au_names=AU_NAMES, max_samples=1000, max_bytes=max_bytes) as writer:
        for clip in clips:
            writer.write(clip)
        manifest = writer.close()
    assert len(manifest.shards) > 1
    assert [s.path for s in manifest.shards] == [f"b-{i:06d}.tar" for i in range(len(manifest.shards))]
    assert manifest.total_clips == 12
    for info in manifest.shards:
        size = (tmp_path / info.path).stat().st_size
        assert info.bytes == size and info.sha256 == sha256_of(tmp_path / info.path)
        assert size <= max_bytes, f"{info.path} is {size} bytes ({info.samples} clips), max_bytes is {max_bytes}"
    assert all(s.samples >= 2 for s in manifest.shards[:-1])


def test_same_clips_give_identical_shards(tmp_path):
    for run in ("a", "b"):
        with ShardWriter(tmp_path / run, "d", au_names=AU_NAMES, max_samples=3) as writer:
            for i in range(5):
                writer.write(make_clip(4, i, 2, 4, 32))
    for name in ("d-000000.tar", "d-000001.tar", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_writer_error_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "e", au_names=AU_NAMES, max_samples=2) as writer:
            for i in range(3):
                writer.write(make_clip(5, i, 2, 4, 32))
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e-000000.tar"]  # no manifest, no temp file


# -- 2. stock tools ---------------------------------------------------------------------------


def test_stock_tar_lists_members(written):
    folder, manifest, clips = written
    out = subprocess.run(["tar", "-tf", str(folder / "rt-000000.tar")], capture_output=True, text=True, check=True)
    names = out.stdout.split()
    expected = []
    for clip, _ in clips[:5]:
        key = clip.clip_id.replace(".", "_")
        expected += [f"{key}.json"] + [f"{key}.{t:03d}.jpg" for t in range(T)]
        expected += [f"{key}.landmarks.npy"] if clip.landmarks is not None else []
        expected += [f"{key}.au.npy"] if clip.au_occ is not None or clip.au_int is not None else []
    assert names == expected
    out = subprocess.run(["tar", "-xOf", str(folder / "rt-000000.tar"), "clip_002.json"],
                         capture_output=True, check=True)  # fmt: skip
    assert json.loads(out.stdout)["clip_id"] == "clip.002"


def test_plain_webdataset_reads_shards(synth40):
    import webdataset as wds

    urls = [str(p) for p in synth40.shard_paths]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=True)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == synth40.keys
    for s in samples:
        meta = json.loads(s["json"])
        assert s["__key__"] == meta["clip_id"]  # synthetic ids are already valid keys
        assert all(f"{t:03d}.jpg" in s for t in range(synth40.frames))
        assert simplejpeg.decode_jpeg(s["000.jpg"]).shape == (synth40.size, synth40.size, 3)
        assert "au.npy" in s


# -- 7. a crash while writing ------------------------------------------------------------------

CRASH_WRITER = """
import itertools, sys
import numpy as np
from shards.synthetic import AU_NAMES, make_clip
from shards.writer import ShardWriter
with ShardWriter(sys.argv[1], "crash", au_names=AU_NAMES, max_samples=4) as w:
    for i in itertools.count():
        clip = make_clip(9, i, 3, 5, 32)
        clip.landmarks = np.full((5, 68, 2), i, np.float32)
        w.write(clip)
"""


def test_killed_writer_leaves_only_complete_shards(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(out)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline, two_at = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            names = [p.name for p in out.iterdir()] if out.exists() else []
            whole = [n for n in names if re.fullmatch(r"crash-\d{6}\.tar", n)]
            if len(whole) >= 2:
                two_at = two_at or time.monotonic()
                # kill while a further shard is being written (or give up waiting for one)
                if len(names) > len(whole) or time.monotonic() - two_at > 1:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.01)
        else:
            pytest.fail("the writer produced no shards in time")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()

    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in names
    tars = [n for n in names if n.endswith(".tar")]
    others = [n for n in names if not n.endswith(".tar")]
    assert tars == [f"crash-{i:06d}.tar" for i in range(len(tars))] and len(tars) >= 2
    assert all(re.fullmatch(r"\..+\.tmp", n) for n in others), others

    # readers that find shards by globbing see exactly the complete ones
    assert resolve_one(out).urls == [str(out / n) for n in tars]
    index = 0
    for name in tars:
        path = out / name
        data = path.read_bytes()
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for m in members:
                assert len(tar.extractfile(m).read()) == m.size
        end = members[-1].offset_data + -(-members[-1].size // 512) * 512
        assert len(data) - end >= 1024 and not data[end:].strip(b"\0"), f"{name}: no end-of-archive blocks"
        groups = list(iter_groups(str(path)))
        assert len(groups) == 4  # a whole shard of max_samples clips
        for group in groups:
            assert group["__key__"] == f"synth9-{index:07d}"
            assert {"json", "au.npy", "landmarks.npy"} <= group.keys()
            assert all(f"{t:03d}.jpg" in group for t in range(5))
            out_frames = np.zeros((5, 32, 32, 3), np.uint8)
            clip = decode_clip(group, out_frames, frames=5, stride=1, scale=1, n_aus=len(AU_NAMES), rng=None)
            assert (clip.landmarks == index).all() and out_frames.any()
            index += 1
