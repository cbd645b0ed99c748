"""`python -m shards build`: real MP4 files in VoxCeleb2's layout (written with PyAV) into shards,
whole and in parts, with a broken and a too-short video skipped, counted and named."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from shards.bench import write_face_video
from shards.build import NoClips, build_shards
from shards.inputs import read_inputs
from shards.parts import merge
from shards.stream import ClipStream
from stream_helpers import grey, need_mediapipe, write_mp4

REPO = Path(__file__).resolve().parents[1]
FRAMES, STRIDE = 4, 2
SPAN = (FRAMES - 1) * STRIDE + 1  # 7 video frames a clip
# identity -> video -> clip -> frame count
LAYOUT = {
    "id001": {"vidA": {"00001": 16, "00002": 7}, "vidB": {"00001": 30}},
    "id002": {"vidC": {"00001": 15}},
    "id003": {"vidD": {"00001": 9}},
}


def expected_clips(n: int, per_video: int) -> int:
    return min(per_video, n // SPAN)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vox")
    for identity, vids in LAYOUT.items():
        for video, clips in vids.items():
            for clip, n in clips.items():
                write_mp4(root / identity / video / f"{clip}.mp4", n)
    write_mp4(root / "id002" / "vidE" / "short.mp4", SPAN - 1)  # shorter than one clip
    (root / "id003" / "vidD" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    return root


def read_back(folder: Path) -> list[tuple[dict, list[np.ndarray]]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        with tarfile.open(folder / shard["path"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".json")):
            key = name[: -len(".json")]
            meta = json.loads(members[name])
            jpegs = sorted(n for n in members if n.startswith(key + ".") and n.endswith(".jpg"))
            out.append((meta, [simplejpeg.decode_jpeg(members[j], colorspace="RGB") for j in jpegs]))
    return out


def test_videos_become_clips_with_identity_video_and_frames_in_order(videos, tmp_path):
    per_video = 2
    manifest, skipped = build_shards(videos, tmp_path, frames=FRAMES, stride=STRIDE, size=32, clips_per_video=per_video,
                                     shard_samples=3, faces="none")  # fmt: skip
    want = sum(expected_clips(n, per_video) for vids in LAYOUT.values() for clips in vids.values() for n in clips.values())
    assert manifest.totals["clips"] == want
    assert set(skipped) == {str(videos / "id002/vidE/short.mp4"), str(videos / "id003/vidD/broken.mp4")}
    assert "shorter than one clip" in skipped[str(videos / "id002/vidE/short.mp4")]
    assert "cannot decode" in skipped[str(videos / "id003/vidD/broken.mp4")]
    clips = read_back(tmp_path)
    assert len(clips) == want
    stream = ClipStream(tmp_path, frames=FRAMES, batch_size=2, mode="exact", num_workers=0, rank=0, world=1)
    assert sum(int(b.valid.sum()) for b in stream) == want and not stream.summary()  # training reads it all
    for meta, frames in clips:
        identity, video = meta["video_id"].split("/")
        assert meta["identity"] == identity and video in LAYOUT[identity]
        first = meta["frame_index"][0]
        assert meta["frame_index"] == [first + STRIDE * t for t in range(FRAMES)]
        assert first % SPAN == 0  # windows do not overlap
        assert all(f.shape == (32, 32, 3) for f in frames)
        seen = [int(np.median(f)) for f in frames]
        assert all(abs(s - grey(t)) <= 4 for s, t in zip(seen, meta["frame_index"])), (meta["clip_id"], seen)


def test_parts_merge_into_the_set_one_build_writes(videos, tmp_path):
    settings = dict(frames=FRAMES, stride=STRIDE, size=32, clips_per_video=3, shard_samples=2, heldout=0.34, seed=1,
                    faces="none")
    whole, _ = build_shards(videos, tmp_path / "whole", **settings)
    for parts in (3, 12):  # 12: more parts than chunks, some parts empty
        for k in range(parts):
            build_shards(videos, tmp_path / f"parts{parts}", **settings, part=(k, parts))
        merged = merge(tmp_path / f"parts{parts}")
        assert merged.shards == whole.shards and merged.splits == whole.splits and merged.totals == whole.totals
        shards = [s.path for s in whole.shards]
        assert all((tmp_path / f"parts{parts}" / n).read_bytes() == (tmp_path / "whole" / n).read_bytes() for n in shards)
    held, train = (set(merged.splits[s]["identities"]) for s in ("heldout", "train"))
    assert len(held) == 1 and len(train) == 2 and not held & train


@pytest.mark.slow
def test_cli_reports_the_skipped_videos_and_the_set_verifies(videos, tmp_path):
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(videos), "--out", str(out), "--frames", "4",
                           "--stride", "2", "--size", "24", "--faces", "none"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 2 input(s): " in proc.stdout and "1 cannot decode" in proc.stdout and "1 shorter than" in proc.stdout
    assert "broken.mp4: cannot decode" in proc.stdout
    assert subprocess.run([sys.executable, "-m", "shards", "verify", str(out)], cwd=REPO).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(videos / "nowhere"), "--out", str(out / "x")],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == f"python -m shards build: error: video folder not found: {videos / 'nowhere'}"
    with pytest.raises(ValueError, match="stride must be at least 1, not 0"):
        build_shards(videos, tmp_path / "y", stride=0)


def test_a_build_that_writes_no_clip_fails_and_names_every_skipped_video(tmp_path):
    """Every video bad: no manifest (an empty one would verify and then starve a run), a non-zero
    exit, and still the list of what was skipped and why."""
    videos = tmp_path / "vox"
    write_mp4(videos / "id1" / "v1" / "short.mp4", SPAN - 1)
    (videos / "id2" / "v2").mkdir(parents=True)
    (videos / "id2" / "v2" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(videos), "--out", str(out), "--frames",
                           str(FRAMES), "--stride", str(STRIDE), "--faces", "none"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "skipped 2 input(s)" in proc.stdout and "short.mp4: shorter than one clip" in proc.stdout
    assert "broken.mp4: cannot decode" in proc.stdout
    assert "no clip written: all 2 input(s) were skipped" in proc.stderr, proc.stderr[-2000:]
    assert not (out / "manifest.json").exists()

    with pytest.raises(NoClips) as caught:
        build_shards(videos, out, frames=FRAMES, stride=STRIDE, faces="none")
    assert set(caught.value.skipped) == {str(videos / "id1/v1/short.mp4"), str(videos / "id2/v2/broken.mp4")}
    # Built in parts, each (empty) part is recorded, and merging refuses the empty whole.
    for k in range(2):
        build_shards(videos, tmp_path / "parts", frames=FRAMES, stride=STRIDE, part=(k, 2), faces="none")
    with pytest.raises(ValueError, match="the 2 parts hold no clips"):
        merge(tmp_path / "parts")
    assert not (tmp_path / "parts" / "manifest.json").exists()


def test_layouts_without_identity_or_video_folders(tmp_path):
    write_mp4(tmp_path / "flat.mp4", 8)
    write_mp4(tmp_path / "id9" / "clip.mp4", 8)
    found = [(Path(i.path).name, i.identity, i.video) for i in read_inputs("folder", tmp_path)]
    assert found == [("flat.mp4", None, "flat"), ("clip.mp4", "id9", "id9/clip")]


def read_arrays(folder: Path, member: str) -> dict[str, np.ndarray]:
    """clip id -> the array each clip stores as `KEY.{member}` (`landmarks.npy`, `au.npy`)."""
    import io

    out = {}
    for shard in json.loads((folder / "manifest.json").read_text())["shards"]:
        with tarfile.open(folder / shard["path"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in (n for n in members if n.endswith(".json")):
            key = name[: -len(".json")]
            out[json.loads(members[name])["clip_id"]] = np.load(io.BytesIO(members[f"{key}.{member}"]))
    return out


def read_landmarks(folder: Path) -> dict[str, np.ndarray]:
    """clip id -> the landmarks [T, 68, 2] stored with it."""
    return {k: v.astype(float) for k, v in read_arrays(folder, "landmarks.npy").items()}


@pytest.mark.parametrize("faces", ["dlib", "mediapipe"])
def test_face_videos_become_clips_of_face_tracks_with_landmarks(tmp_path, faces):
    """`--faces dlib` (and mediapipe, where installed): faces found and tracked in videos that are
    not face crops; each clip is a window of one track, cut around its landmarks, which land near
    the renderer's own."""
    if faces == "mediapipe":
        need_mediapipe()
    from shards.face_pipeline import normalised_error
    from shards.synthetic import Renderer

    renderer = Renderer(0, identities=120, frames=16, size=112)
    truth, offset = {}, (50, 20)
    for clip, identity in ((0, "id1"), (1, "id2")):
        frames, _, landmarks, _ = renderer.frames_and_labels(clip)
        write_face_video(tmp_path / "in" / identity / "vid" / "00001.mp4", frames, offset)
        truth[identity] = landmarks + np.array(offset, np.float32)
    (tmp_path / "in" / "id2" / "vid" / "broken.mp4").write_bytes(b"not a video")
    write_mp4(tmp_path / "in" / "id2" / "vid" / "faceless.mp4", 16)  # grey frames: nothing to track
    manifest, skipped = build_shards(tmp_path / "in", tmp_path / "out", frames=4, stride=2, size=64,
                                     clips_per_video=2, faces=faces)  # fmt: skip
    assert sorted(skipped) == [str(tmp_path / "in" / "id2" / "vid" / n) for n in ("broken.mp4", "faceless.mp4")]
    assert "faceless.mp4: no face tracked for one clip" in skipped[str(tmp_path / "in" / "id2" / "vid" / "faceless.mp4")]
    assert manifest.builder["settings"]["faces"] == faces
    clips = read_back(tmp_path / "out")
    assert {meta["identity"] for meta, _ in clips} == {"id1", "id2"}  # a window of 7 tracked frames each at least
    landmarks = read_landmarks(tmp_path / "out")
    errors = []
    for meta, frames in clips:
        index = meta["frame_index"]
        assert len(frames) == 4 and frames[0].shape == (64, 64, 3) and np.diff(index).tolist() == [2, 2, 2]
        assert meta["track_id"].startswith(f"{meta['identity']}/vid/00001/t") and len(meta["face_score"]) == 4
        stored = landmarks[meta["clip_id"]]
        for t, (left, top, right, _) in enumerate(meta["face_crop"]):
            expected = (truth[meta["identity"]][index[t]] - [left, top]) * (64 / (right - left))
            errors.append(normalised_error(stored[t], expected))
    assert np.mean(errors) < 0.15, np.mean(errors)  # dlib on the renderer's faces: about 0.1
    # the stream reads them back as the training data
    batch = next(iter(ClipStream(tmp_path / "out", frames=4, batch_size=2, mode="exact", num_workers=0)))
    assert batch.landmarks is not None and batch.frames.shape[-1] == 64
