"""`shards build` layouts beyond a folder of videos (a list of paths, BP4D and DISFA as released,
written here with the renderer's faces), and the ledger: a killed build resumes to the same shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.build import build_shards
from shards.datasets.table import BP4D_AUS, DISFA_INTENSITY_AUS
from shards.face_pipeline import normalised_error
from shards.ledger import LEDGER_DIR
from shards.stream import ClipStream
from stream_helpers import write_mp4
from shards.bench import write_face_video
from test_shards_build import read_arrays, read_back, read_landmarks

REPO = Path(__file__).resolve().parents[1]
OFFSET = (40, 16)  # where the 112 px face sits in the larger frame


def rendered(clip: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, 112, 112, 3] of one synthetic face clip and its landmarks [T, 68, 2]."""
    from shards.synthetic import Renderer

    renderer = Renderer(0, identities=120, frames=frames, size=112)
    images, _, landmarks, _ = renderer.frames_and_labels(clip)
    return images, landmarks


def in_frame(face: np.ndarray) -> np.ndarray:
    image = np.full((face.shape[0] + 48, face.shape[1] + 80, 3), 110, np.uint8)
    image[OFFSET[1] : OFFSET[1] + face.shape[0], OFFSET[0] : OFFSET[0] + face.shape[1]] = face
    return image


def bp4d_value(subject: str, frame: int, au: int) -> int:
    return 9 if (frame + au) % 5 == 0 else (frame + au + int(subject[1:])) % 2


def make_bp4d(root: Path, sequences: dict[tuple[str, str], tuple[int, int]], uncoded: set[int] = frozenset()) -> dict:
    """BP4D as released: AUCoding/AU_OCC/{subject}_{task}.csv and {subject}/{task}/{frame}.jpg;
    frames numbered in `uncoded` have an image but no label row."""
    truth = {}
    (root / "AUCoding" / "AU_OCC").mkdir(parents=True)
    for clip, ((subject, task), (start, n)) in enumerate(sequences.items()):
        faces, landmarks = rendered(clip, n)
        rows = [",".join(str(k) for k in range(100))]
        for i, frame in enumerate(range(start, start + n)):
            if frame not in uncoded:
                rows.append(",".join([str(frame)] + [str(bp4d_value(subject, frame, au)) for au in range(1, 100)]))
            folder = root / subject / task
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(in_frame(faces[i])).save(folder / f"{frame:04d}.jpg", quality=95)
        (root / "AUCoding" / "AU_OCC" / f"{subject}_{task}.csv").write_text("\n".join(rows) + "\n")
        truth[f"{subject}_{task}"] = start, landmarks + np.array(OFFSET, np.float32)
    return truth


def test_bp4d_as_released_becomes_labelled_face_shards(tmp_path):
    # M002_T3's frame 11 is not coded: its clips must not span the gap
    truth = make_bp4d(tmp_path / "BP4D", {("F001", "T1"): (2440, 12), ("M002", "T3"): (7, 9)}, uncoded={11})
    Image.fromarray(in_frame(rendered(5, 1)[0][0])).save(tmp_path / "BP4D" / "F001" / "T2.jpg")  # stray file
    (tmp_path / "BP4D" / "F009" / "T1").mkdir(parents=True)  # images without a label file
    Image.fromarray(in_frame(rendered(6, 1)[0][0])).save(tmp_path / "BP4D" / "F009" / "T1" / "0001.jpg")
    manifest, skipped = build_shards(tmp_path / "BP4D", tmp_path / "out", layout="bp4d", frames=4, stride=1, size=64,
                                     clips_per_video=3)  # fmt: skip
    assert manifest.au_names == [f"AU{a}" for a in BP4D_AUS]
    assert any("F009" in reason and "no label file" in reason for reason in skipped.values()), skipped
    clips = read_back(tmp_path / "out")
    assert {m["identity"] for m, _ in clips} == {"F001", "M002"} and manifest.totals["clips_without_identity"] == 0
    assert sorted(m["video_id"] for m, _ in clips).count("F001_T1") == 3  # 12 frames: three windows of 4
    assert sorted(m["frame_index"][0] for m, _ in clips if m["video_id"] == "M002_T3") == [7, 12]  # 7-10 and 12-15
    landmarks = read_landmarks(tmp_path / "out")
    batch = next(iter(ClipStream(tmp_path / "out", frames=4, batch_size=8, mode="exact", num_workers=0)))
    assert batch.au_occ is not None and batch.au_occ.shape[-1] == len(BP4D_AUS)  # pretraining and fine-tuning read them
    occ_by_clip = _labels(tmp_path / "out")
    errors = []
    for meta, frames in clips:
        subject = meta["identity"]
        expected = np.array([[bp4d_value(subject, f, au) for au in BP4D_AUS] for f in meta["frame_index"]])
        assert occ_by_clip[meta["clip_id"]].tolist() == np.where(expected == 9, -1, expected).tolist(), meta["clip_id"]
        assert np.diff(meta["frame_index"]).tolist() == [1, 1, 1] and len(frames) == 4
        first, faces = truth[meta["video_id"]]
        errors += crop_errors(meta, landmarks[meta["clip_id"]], faces[np.array(meta["frame_index"]) - first], 64)
    assert np.mean(errors) < 0.15, np.mean(errors)  # dlib on the renderer's faces: about 0.1
    # fine-tuning streams them as its labelled frames, aligned by the stored landmarks
    from finetune.labelled import shard_frames

    frames = shard_frames(str(tmp_path / "out"), size=56, clip_frames=4)
    assert len(frames) == 4 * len(clips) and frames.au_names == manifest.au_names and frames.images.shape[1:] == (56, 56, 3)
    assert sorted(frames.occ.tolist()) == sorted(row for occ in occ_by_clip.values() for row in occ.tolist())


def crop_errors(meta: dict, stored: np.ndarray, exact: np.ndarray, size: int) -> list[float]:
    """Normalised error of a clip's stored landmarks (crop pixels) against the renderer's `exact`
    ones (frame pixels), frame by frame, through the crop boxes stored with it."""
    return [normalised_error(stored[t], (exact[t] - [left, top]) * (size / (right - left)))
            for t, (left, top, right, _) in enumerate(meta["face_crop"])]  # fmt: skip


def _labels(folder: Path) -> dict[str, np.ndarray]:
    """clip id -> AU occurrence [T, A] stored with it."""
    return {k: v["occ"] for k, v in read_arrays(folder, "au.npy").items()}


def test_disfa_as_released_becomes_labelled_shards_and_a_subject_without_labels_is_skipped(tmp_path):
    root = tmp_path / "DISFA"
    n = 10
    for subject, clip in (("SN001", 0), ("SN002", 1)):
        faces, _ = rendered(clip, n)
        write_face_video(root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi", faces, OFFSET)
    for au in DISFA_INTENSITY_AUS:  # SN002 has no label files
        path = root / "ActionUnit_Labels" / "SN001" / f"SN001_au{au}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{t + 1},{(t + au) % 6}\n" for t in range(n)))
    manifest, skipped = build_shards(root, tmp_path / "out", layout="disfa", frames=4, stride=2, size=48,
                                     clips_per_video=4)  # fmt: skip
    assert list(skipped) == [str(root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi")]
    assert "labels missing" in skipped[str(root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi")]
    assert manifest.au_names == [f"AU{a}" for a in DISFA_INTENSITY_AUS]
    clips = read_back(tmp_path / "out")
    assert len(clips) == 1 and clips[0][0]["identity"] == "SN001"  # 10 frames: one window of 7
    labels = read_arrays(tmp_path / "out", "au.npy")[clips[0][0]["clip_id"]]
    codes = np.array([[(t + au) % 6 for au in DISFA_INTENSITY_AUS] for t in clips[0][0]["frame_index"]])
    assert labels["occ"].tolist() == (codes >= 2).astype(int).tolist() and labels["int"].tolist() == codes.tolist()


def test_a_list_of_paths_is_read_as_a_stream_with_identities_and_a_corrupt_video_skipped(tmp_path):
    for name, frames in (("id1/v1/a.mp4", 9), ("id1/v2/b.mp4", 9), ("id2/v3/c.mp4", 9)):
        write_mp4(tmp_path / "vids" / name, frames)
    (tmp_path / "vids" / "id2" / "v3" / "bad.mp4").write_bytes(b"not a video")
    write_mp4(tmp_path / "elsewhere" / "x.mp4", 9)
    listing = tmp_path / "vids" / "list.txt"
    listing.write_text("# clips\nid1/v1/a.mp4\nid2/v3/bad.mp4\n\nid1/v2/b.mp4\n"
                       f"{tmp_path / 'elsewhere' / 'x.mp4'}\tspeaker7\nid2/v3/c.mp4\nnotes.txt\n")  # fmt: skip
    manifest, skipped = build_shards(listing, tmp_path / "out", layout="list", frames=3, stride=2, size=24,
                                     clips_per_video=1, shard_samples=2, faces="none")  # fmt: skip
    assert sorted(Path(p).name for p in skipped) == ["bad.mp4", "notes.txt"]
    clips = read_back(tmp_path / "out")
    assert sorted((m["identity"], m["video_id"]) for m, _ in clips) == [
        ("id1", "id1/v1"), ("id1", "id1/v2"), ("id2", "id2/v3"), ("speaker7", str(tmp_path / "elsewhere" / "x").lstrip("/"))]
    # two inputs a shard in list order, the corrupt one among them: [a, bad], [b, x], [c]
    assert [s.samples for s in manifest.shards] == [1, 2, 1] and manifest.totals["clips"] == 4


def test_workers_and_a_resumed_build_write_the_shards_one_process_writes(tmp_path):
    for i in range(6):
        write_mp4(tmp_path / "vids" / f"id{i % 3}" / f"v{i}" / "c.mp4", 9 + i)
    (tmp_path / "vids" / "id1" / "v9").mkdir()
    (tmp_path / "vids" / "id1" / "v9" / "bad.mp4").write_bytes(b"not a video")
    settings = dict(frames=3, stride=2, size=24, clips_per_video=2, shard_samples=4, heldout=0.34, faces="none")
    whole, _ = build_shards(tmp_path / "vids", tmp_path / "one", **settings)
    parallel, skipped = build_shards(tmp_path / "vids", tmp_path / "two", **settings, workers=2)
    assert list(skipped) == [str(tmp_path / "vids" / "id1" / "v9" / "bad.mp4")]
    assert _files(tmp_path / "one") == _files(tmp_path / "two") and whole == parallel
    # An interrupted build: one shard never written, one cut short, its record kept, the manifest not yet.
    (tmp_path / "two" / "manifest.json").unlink()
    shards = sorted((tmp_path / "two").glob("*.tar"))
    shards[0].unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:1000])
    again, _ = build_shards(tmp_path / "vids", tmp_path / "two", **settings, workers=2)
    assert again == whole and _files(tmp_path / "one") == _files(tmp_path / "two")
    with pytest.raises(ValueError, match=r"a build with other settings \(size\) left its ledger here"):
        build_shards(tmp_path / "vids", tmp_path / "two", **{**settings, "size": 32})
    # Inputs removed and one re-encoded: the set is what a fresh build of the new inputs writes, no
    # shard of the old left beside it.
    for gone in ("id1/v4", "id2/v5"):
        (tmp_path / "vids" / gone / "c.mp4").unlink()
    write_mp4(tmp_path / "vids" / "id0" / "v0" / "c.mp4", 11)
    fewer, _ = build_shards(tmp_path / "vids", tmp_path / "two", **settings, workers=2)
    fresh, _ = build_shards(tmp_path / "vids", tmp_path / "three", **settings)
    assert fewer == fresh and _files(tmp_path / "two") == _files(tmp_path / "three")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_a_killed_build_resumes_to_the_shards_an_uninterrupted_build_writes(tmp_path):
    for i in range(8):
        faces, _ = rendered(i, 8)
        write_face_video(tmp_path / "vids" / f"id{i % 4}" / f"v{i}" / "c.mp4", faces, OFFSET)
    command = [sys.executable, "-m", "shards", "build", str(tmp_path / "vids"), "--frames", "4", "--size", "48",
               "--clips-per-video", "1", "--shard-samples", "1"]  # fmt: skip
    subprocess.run(command + ["--out", str(tmp_path / "whole")], cwd=REPO, check=True, capture_output=True)
    proc = subprocess.Popen(command + ["--out", str(tmp_path / "killed")], cwd=REPO)
    records = tmp_path / "killed" / LEDGER_DIR
    deadline = time.monotonic() + 120
    while len(list(records.glob("chunk-*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists(), "the build ended before it was killed"
    done = len(list(records.glob("chunk-*.json")))
    result = subprocess.run(command + ["--out", str(tmp_path / "killed")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 2 <= done < 8
    whole = {n: b for n, b in _files(tmp_path / "whole").items() if not n.startswith(".")}
    killed = {n: b for n, b in _files(tmp_path / "killed").items() if not n.startswith(".")}
    assert whole == killed and len(whole) == 9  # eight shards, one a video, and the same manifest


def test_pre_cropped_face_videos_in_voxceleb2s_layout_get_landmarks_by_default(tmp_path):
    """VoxCeleb2's clips are face crops already: the default build still finds the face and its
    landmarks in each frame, as on any video."""
    from shards.bench import SIZE

    truth = {}
    for clip, (speaker, video) in enumerate((("id00012", "2DLq_Kkc1r8"), ("id00015", "0fijmz4vTVU"))):
        faces, truth[speaker] = rendered(clip, 8)
        write_face_video(tmp_path / "vox" / speaker / video / "00001.mp4", faces, (0, 0), crop=True)
    manifest, skipped = build_shards(tmp_path / "vox", tmp_path / "out", frames=4, size=SIZE, clips_per_video=1)
    assert not skipped and manifest.builder["settings"]["faces"] == "dlib"
    clips = read_back(tmp_path / "out")
    assert sorted((m["identity"], m["video_id"]) for m, _ in clips) == [
        ("id00012", "id00012/2DLq_Kkc1r8"), ("id00015", "id00015/0fijmz4vTVU")]
    landmarks = read_landmarks(tmp_path / "out")
    errors = [e for meta, _ in clips
              for e in crop_errors(meta, landmarks[meta["clip_id"]], truth[meta["identity"]][meta["frame_index"]], SIZE)]
    assert len(errors) == 8 and np.mean(errors) < 0.15, errors  # fmt: skip
    assert manifest.carries("landmarks")
