"""The real-data path with the defaults: `python -m shards build VIDEOS --out B`, then the stream
that `data=shards` asks for (configs/data/shards.yaml), reads every sample; a frames/stride the
stored clips cannot serve, or a set with no clips, is refused when the stream is made."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shards.manifest import Manifest
from shards.stream import ClipStream
from shards.writer import ShardWriter
from stream_helpers import take, write_mp4

REPO = Path(__file__).resolve().parents[1]


def shards_data_config() -> dict:
    """`data=shards` as a job resolves it: configs/data/shards.yaml over the schema's defaults."""
    from hydra import compose, initialize_config_dir

    from finetune.config import CONFIG_DIR
    from pretrain.config import register

    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return dict(compose(config_name="pretrain", overrides=["data=shards", "data.source=x"]).data)


DATA = shards_data_config()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Three real MP4s of 20 frames (one 16-frame clip each) through `shards build` with every
    default but `--faces none` (the frames are flat grey: nothing to detect)."""
    root = tmp_path_factory.mktemp("vox")
    for identity, video in (("id1", "a"), ("id1", "b"), ("id2", "c")):
        write_mp4(root / "videos" / identity / video / "00001.mp4", 20)
    out = root / "B"
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(root / "videos"), "--out", str(out),
                           "--faces", "none"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return out


def test_the_shards_config_streams_what_build_writes_by_default(built):
    manifest = Manifest.load(built)
    assert manifest.total_clips == 3
    stream = ClipStream(built, split=DATA["train_split"], frames=DATA["frames"], stride=DATA["stride"],
                        resize=DATA["resize"], batch_size=2, mode="resampled", seed=0, rank=0, world=1,
                        num_workers=0, slots=2)  # fmt: skip
    assert stream.cfg.scale == 1  # build's frames are already the config's size: nothing to resize
    batches = take(stream, 4)
    assert stream.summary() == {}  # not one sample skipped
    for b in batches:
        assert b.valid.all() and b.frames.shape == (2, DATA["frames"], 3, DATA["resize"], DATA["resize"])
        assert (b.frame_index[:, 1:] - b.frame_index[:, :-1] == DATA["stride"]).all()


def test_a_window_longer_than_the_stored_clips_is_refused_at_construction(built, tmp_path):
    manifest = Manifest.load(built)
    with pytest.raises(ValueError) as caught:
        ClipStream(built, frames=16, stride=2, batch_size=2, rank=0, world=1, num_workers=2)
    message = str(caught.value)
    assert str(built / "manifest.json") in message
    assert f"clips hold {manifest.frames_per_clip} frames" in message and "frames=16 at stride=2 needs 31" in message
    # Without a manifest, the first clip tells the stored length, and the error names its shard.
    alone = tmp_path / "alone.tar"
    shutil.copy(built / manifest.shards[0].path, alone)
    with pytest.raises(ValueError, match=f"{alone}: clips hold 16 frames, but frames=9 at stride=2 needs 17"):
        ClipStream([str(alone)], frames=9, stride=2, rank=0, world=1)
    ClipStream(built, frames=16, stride=1, rank=0, world=1)  # the whole clip is servable
    ClipStream(built, frames=8, stride=2, rank=0, world=1)


def test_a_set_without_clips_is_refused_at_construction(tmp_path):
    with ShardWriter(tmp_path, "e"):
        pass
    with pytest.raises(ValueError, match=f"{tmp_path / 'manifest.json'}: lists no clips: nothing to stream"):
        ClipStream(tmp_path, frames=4, rank=0, world=1)


def test_built_shards_say_they_carry_no_labels(built):
    """What the pretraining side asks before it starts: `shards build` writes no landmarks or AU
    labels, and the manifest says so rather than leaving the first batch to find out."""
    manifest = Manifest.load(built)
    assert all(s.labels == {"landmarks": 0, "au": 0} for s in manifest.shards)
    assert manifest.carries("landmarks") is False and manifest.carries("au") is False
    stream = ClipStream(built, frames=8, stride=2, rank=0, world=1)
    assert stream.carries("landmarks") is False and stream.carries("au") is False
