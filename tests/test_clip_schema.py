"""The auforge.clip/1 metadata schema, checked in one place (`shards.format.check_metadata`) by the
writer, the stream and `verify`: a clip whose KEY.json has a wrongly typed field is skipped and
counted by the stream, named by `verify`, and never written by the writer."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shards.format import Clip, check_metadata
from shards.manifest import Manifest
from shards.stream import ClipStream
from stream_helpers import read_members, take, valid_keys, write_members

REPO = Path(__file__).resolve().parents[1]
GOOD = {"clip_id": "c1", "video_id": "v1", "identity": "p1", "track_id": None, "source": "unit", "fps": 25.0,
        "frame_index": [10, 11, 12], "size": [32, 48]}  # fmt: skip
# The three wrongly typed fields that once crashed the stream (the first two in stable_id, the
# third in numpy) and stopped `verify` without naming the file: (shard, key index, field, value).
DAMAGE = [(0, 1, "identity", 7), (1, 8, "video_id", ["v"]), (2, 13, "frame_index", ["0", "1", "2", "3"] * 2)]


def test_the_metadata_the_writer_writes_passes():
    assert check_metadata(dict(GOOD), 3) == GOOD
    assert check_metadata({**GOOD, "identity": None, "fps": 30, "extra": [1]})  # null identity, int fps, extras


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("identity", 7, "identity must be a string or null, not 7"),
        ("video_id", ["v"], "video_id must be a string, not ['v']"),
        ("frame_index", ["10", "11", "12"], "frame_index must be a non-empty list of ints >= 0"),
        ("frame_index", [], "frame_index must be a non-empty list"),
        ("frame_index", [-1, 0, 1], "frame_index must be a non-empty list of ints >= 0"),
        ("frame_index", [0, True, 2], "frame_index must be"),
        ("clip_id", "", "clip_id must be a non-empty string"),
        ("track_id", 3, "track_id must be a string or null"),
        ("source", None, "source must be a string"),
        ("fps", "25", "fps must be a positive number, not '25'"),
        ("fps", 0, "fps must be a positive number"),
        ("size", [32, "48"], "size must be [H, W] of positive ints"),
        ("size", [32], "size must be [H, W] of positive ints"),
    ],
)
def test_a_wrongly_typed_field_is_named(field, value, says):
    with pytest.raises(ValueError) as caught:
        check_metadata({**GOOD, field: value})
    assert says in str(caught.value)


def test_missing_fields_a_non_object_and_a_frame_count_mismatch():
    with pytest.raises(ValueError, match="metadata lacks fps, size"):
        check_metadata({k: v for k, v in GOOD.items() if k not in ("fps", "size")})
    with pytest.raises(ValueError, match="metadata is a JSON list, not an object"):
        check_metadata([GOOD])
    with pytest.raises(ValueError, match="frame_index has 3 entries for 4 frames"):
        check_metadata(dict(GOOD), 4)


def test_the_writer_refuses_what_the_readers_would_skip():
    clip = Clip(clip_id="c1", video_id="v1", identity=7, frames=[b"x"] * 2, size=(8, 8))
    with pytest.raises(ValueError, match="clip c1: identity must be a string or null, not 7"):
        clip.members(0)
    clip = Clip(clip_id="c2", video_id="v1", identity=None, frames=[b"x"] * 2, size=(8, 8), frame_index=[0])
    with pytest.raises(ValueError, match="clip c2: frame_index has 1 entries for 2 frames"):
        clip.metadata()


@pytest.fixture
def damaged(synth24, tmp_path) -> tuple[Path, set[str]]:
    """synth24 with the three DAMAGE clips' KEY.json rewritten, the manifest's checksums brought
    up to date (so that only the samples are wrong); returns the folder and the damaged keys."""
    folder = tmp_path / "data"
    shutil.copytree(synth24.folder, folder)
    manifest = Manifest.load(folder)
    for shard, index, field, value in DAMAGE:
        name = f"{synth24.keys[index]}.json"
        path = folder / manifest.shards[shard].path

        def edit(n, d, name=name, field=field, value=value):
            return json.dumps({**json.loads(d), field: value}).encode() if n == name else d

        write_members(path, [(n, edit(n, d)) for n, d in read_members(path)])
        manifest.shards[shard].bytes = path.stat().st_size
        manifest.shards[shard].sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.save(folder / "manifest.json")
    return folder, {synth24.keys[index] for _, index, _, _ in DAMAGE}


@pytest.mark.parametrize("mode", ["exact", "resampled"])
def test_the_stream_skips_and_counts_bad_metadata(damaged, synth24, mode):
    folder, bad = damaged
    stream = ClipStream(folder, frames=4, batch_size=4, mode=mode, rank=0, world=1, num_workers=0, slots=4)
    batches = list(stream) if mode == "exact" else take(stream, 12)  # 48 draws from 24: each shard read
    keys = valid_keys(batches)
    assert not set(keys) & bad
    if mode == "exact":
        assert keys == [k for k in synth24.keys if k not in bad]
        assert stream.summary() == {"bad_metadata": 3}
    else:
        assert len(keys) == 48 and set(stream.summary()) == {"bad_metadata"}


def test_verify_names_shard_key_and_field_and_fails(damaged, synth24):
    folder, _ = damaged
    proc = subprocess.run([sys.executable, "-m", "shards", "verify", str(folder)], cwd=REPO, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BAD")]
    manifest = Manifest.load(folder)
    want = {
        f"BAD SAMPLE {folder / manifest.shards[shard].path} key {synth24.keys[index]}: bad_metadata: {field} must be"
        for shard, index, field, _ in DAMAGE
    }
    assert len(lines) == 3 and all(any(line.startswith(w) for line in lines) for w in want), proc.stdout
    assert "verified 4 shards, 24 samples: 1 shards OK, 3 bad, 3 bad samples" in proc.stdout
