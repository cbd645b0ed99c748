"""A shard set written in parts (`synth --part K/N`, as array tasks write it) and merged
(`python -m shards merge`): the same clips, counts, splits and identities as one writer's set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shards.manifest import Manifest
from shards.parts import merge, parse_part, part_range, record_path
from shards.stream import ClipStream
from shards.synthetic import write_synthetic

from conftest import keys_in_tar

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(clips=13, frames=4, size=32, identities=5, seed=4, shard_samples=3, heldout=0.25)


def write_parts(folder: Path, n: int) -> None:
    for k in range(n):
        write_synthetic(folder, **SETTINGS, part=(k, n))


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Manifest:
    return write_synthetic(tmp_path_factory.mktemp("whole"), **SETTINGS)


def test_part_ranges_cover_every_item_once():
    for total in (0, 1, 7, 13, 100):
        for n in (1, 2, 3, 8):
            items = [i for k in range(n) for i in part_range(total, k, n)]
            assert items == list(range(total))
    assert parse_part("1/4") == (1, 4) and parse_part(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="part"):
            parse_part(bad)


def test_merged_parts_equal_one_writers_set(tmp_path, whole):
    write_parts(tmp_path, 3)
    assert not (tmp_path / "manifest.json").exists()  # no part claims to be the set
    merged = merge(tmp_path)
    assert merged.totals == whole.totals  # identities and videos are the union, not the sum
    assert merged.frame_size == whole.frame_size and merged.frames_per_clip == whole.frames_per_clip
    assert merged.au_names == whole.au_names and merged.builder["settings"] == whole.builder["settings"]
    assert merged.builder["parts"] == 3
    assert {k: v["identities"] for k, v in merged.splits.items()} == {k: v["identities"] for k, v in whole.splits.items()}
    keys = sorted(k for s in merged.shards for k in keys_in_tar(tmp_path / s.path))
    assert len(keys) == len(set(keys)) == SETTINGS["clips"]
    assert Manifest.load(tmp_path) == merged
    # readers take it as any set: the training split streams exactly its clips
    held = sum(s.samples for s in merged.split("heldout").shards)
    stream = ClipStream(tmp_path, split="heldout", frames=2, batch_size=4, mode="exact", rank=0, world=1)
    assert sum(int(b.valid.sum()) for b in stream) == held > 0
    # merging again (a rerun of the merge job) gives the same manifest
    assert merge(tmp_path) == merged


def test_merge_names_what_is_missing_or_inconsistent(tmp_path):
    with pytest.raises(FileNotFoundError, match="no part manifests"):
        merge(tmp_path)
    write_synthetic(tmp_path, **SETTINGS, part=(0, 3))
    write_synthetic(tmp_path, **SETTINGS, part=(2, 3))
    with pytest.raises(FileNotFoundError, match=r"1 of 3 parts .*part-0001-of-0003\.json"):
        merge(tmp_path)
    write_synthetic(tmp_path, **{**SETTINGS, "seed": 5}, part=(1, 3))
    with pytest.raises(ValueError, match="not built with the same settings"):
        merge(tmp_path)
    write_synthetic(tmp_path, **SETTINGS, part=(1, 3))
    record = json.loads(record_path(tmp_path, 1, 3).read_text())
    (tmp_path / record["shards"][0]["path"]).write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"part0001-000000\.tar: listed by .* but 9 bytes"):
        merge(tmp_path)


@pytest.mark.slow
def test_cli_writes_parts_and_merges(tmp_path):
    out = tmp_path / "set"
    args = ["--clips", "6", "--frames", "4", "--size", "32", "--identities", "3", "--shard-samples", "2", "--heldout", "0"]
    env = {**os.environ, "AUFORGE_CACHE": str(tmp_path / "cache")}

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "shards", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=180)  # fmt: skip

    for k in range(2):
        proc = cli("synth", "--out", str(out), *args, "--part", f"{k}/2")
        assert proc.returncode == 0 and f"part {k} of 2" in proc.stdout, proc.stderr
    proc = cli("merge", str(out))
    assert proc.returncode == 0 and "merged 2 parts" in proc.stdout, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["totals"]["clips"] == 6
    assert cli("verify", str(out)).returncode == 0
    bad = cli("synth", "--out", str(out), *args, "--part", "2/2")
    assert bad.returncode == 2 and "K must be in 0..N-1" in bad.stderr
