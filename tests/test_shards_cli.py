"""`python -m shards synth|verify|inspect|quickstart`, run as a user runs them: subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SYNTH_ARGS = ["--clips", "12", "--frames", "8", "--size", "48", "--identities", "3", "--seed", "5",
              "--shard-samples", "5", "--heldout", "0"]  # fmt: skip
SHARDS = ["synth-000000.tar", "synth-000001.tar", "synth-000002.tar"]


def shards_cli(*args, cache: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUFORGE_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "shards", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    proc.output = proc.stdout + proc.stderr  # logging goes to stderr, reports to stdout
    return proc


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("auforge_cache")


@pytest.fixture(scope="module")
def cli_set(tmp_path_factory, cache) -> Path:
    """12 clips of 8 frames at 48 px in shards of 5, written by the CLI."""
    out = tmp_path_factory.mktemp("cli") / "set"
    proc = shards_cli("synth", "--out", out, *SYNTH_ARGS, cache=cache)
    assert proc.returncode == 0, proc.output
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synth_writes_shards_and_manifest_reproducibly(cli_set, tmp_path, cache):
    assert sorted(p.name for p in cli_set.glob("*.tar")) == SHARDS
    manifest = json.loads((cli_set / "manifest.json").read_text())
    assert [s["path"] for s in manifest["shards"]] == SHARDS
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 2]
    assert manifest["totals"]["clips"] == 12 and manifest["frame_size"] == [48, 48]
    assert manifest["frames_per_clip"] == 8
    for s in manifest["shards"]:
        path = cli_set / s["path"]
        assert path.stat().st_size == s["bytes"] and sha256(path) == s["sha256"]
        with tarfile.open(path) as tar:
            assert sum(m.name.endswith(".json") for m in tar.getmembers()) == s["samples"]
    assert not list(cli_set.glob(".*.tmp"))  # no temporary left behind

    again = tmp_path / "again"
    proc = shards_cli("synth", "--out", again, *SYNTH_ARGS, cache=cache)
    assert proc.returncode == 0, proc.output
    assert "12" in proc.stdout and "3 shards" in proc.stdout
    for name in SHARDS:
        assert (again / name).read_bytes() == (cli_set / name).read_bytes(), name
    assert (again / "manifest.json").read_bytes() == (cli_set / "manifest.json").read_bytes()

    # another seed gives other pixels
    other = tmp_path / "other"
    args = list(SYNTH_ARGS)
    args[args.index("--seed") + 1] = "6"
    assert shards_cli("synth", "--out", other, *args, cache=cache).returncode == 0
    assert (other / SHARDS[0]).read_bytes() != (cli_set / SHARDS[0]).read_bytes()


def test_verify_accepts_a_good_set(cli_set, cache):
    proc = shards_cli("verify", cli_set, cache=cache)
    assert proc.returncode == 0, proc.output
    assert "verified 3 shards, 12 samples: 3 shards OK, 0 bad, 0 bad samples" in proc.stdout
    assert "BAD" not in proc.output


def test_verify_names_bad_shards_and_samples(cli_set, tmp_path, cache):
    folder = tmp_path / "damaged"
    shutil.copytree(cli_set, folder)

    # (a) a JPEG whose first bytes are overwritten in place: the tar stays whole and the same
    # size, but the checksum no longer matches and the frame does not decode
    flipped = folder / SHARDS[0]
    with tarfile.open(flipped) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".003.jpg"))
        members_before = [m.name for m in tar.getmembers()]
    key = member.name.split(".", 1)[0]
    size_before = flipped.stat().st_size
    with open(flipped, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\0" * 16)
    assert flipped.stat().st_size == size_before
    with tarfile.open(flipped) as tar:
        assert [m.name for m in tar.getmembers()] == members_before  # still a valid tar

    # (b) another shard cut in the middle
    cut = folder / SHARDS[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    proc = shards_cli("verify", folder, cache=cache)
    out = proc.output
    assert proc.returncode != 0, out
    bad_lines = [line for line in out.splitlines() if line.startswith("BAD SHARD")]
    assert any(str(flipped) in line and "sha256" in line for line in bad_lines), out
    assert any(str(cut) in line for line in bad_lines), out
    assert not any(SHARDS[2] in line for line in out.splitlines() if line.startswith("BAD")), out
    sample_lines = [line for line in out.splitlines() if line.startswith("BAD SAMPLE")]
    assert any(key in line and SHARDS[0] in line and "corrupt_jpeg" in line for line in sample_lines), out
    assert re.search(r"verified 3 shards, \d+ samples: 1 shards OK, 2 bad, 1 bad samples", out), out


def test_verify_refuses_a_set_without_clips(tmp_path, cache):
    from shards.writer import ShardWriter

    with ShardWriter(tmp_path / "empty", "e"):  # closes with a manifest of no shards
        pass
    proc = shards_cli("verify", tmp_path / "empty", cache=cache)
    assert proc.returncode == 1, proc.output
    assert f"BAD SET {tmp_path / 'empty' / 'manifest.json'}: lists 0 shards and no clips" in proc.stdout, proc.output
    (tmp_path / "bare").mkdir()  # no manifest and no shards either
    proc = shards_cli("verify", tmp_path / "bare", cache=cache)
    assert proc.returncode == 1 and "BAD SET" in proc.stdout and "no samples in 0 shards" in proc.stdout, proc.output


def test_inspect_reports_and_draws_a_contact_sheet(cli_set, tmp_path, cache):
    sheet = tmp_path / "sheet.png"
    proc = shards_cli("inspect", cli_set, "--out", sheet, cache=cache)
    assert proc.returncode == 0, proc.output
    assert "scanned 12 clips, 96 frames" in proc.stdout, proc.stdout
    au_names = json.loads((cli_set / "manifest.json").read_text())["au_names"]
    assert au_names
    table = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  AU")}
    assert set(au_names) <= table, proc.stdout
    data = sheet.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width > height > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn faces, not a blank canvas


def test_quickstart_streams_every_clip_once(tmp_path):
    cache = tmp_path / "cache"
    proc = shards_cli("quickstart", "--clips", 40, "--batches", 3, cache=cache)
    assert proc.returncode == 0, proc.output
    assert "exact stream: 40 of 40 clips" in proc.stdout, proc.output
    assert "resampled stream: 3 batches" in proc.stdout
    assert list((cache / "synthetic").glob("synth-*/manifest.json"))  # generated into AUFORGE_CACHE
