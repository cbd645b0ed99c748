"""Data sources: brace patterns, path lists, `pipe:` and `http://` URLs, weighted mixtures and
missing shards; temporal sampling and reduced-size decoding; `ClipBatch` helpers."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from shards.batch import ClipBatch
from shards.sources import resolve
from shards.stream import ClipStream
from stream_helpers import stored_frame_index, take, valid_keys, write_members
from shards.synthetic import write_synthetic


def exact(source, **kw) -> ClipStream:
    kw = {"frames": 4, "batch_size": 8, "rank": 0, "world": 1, "num_workers": 0, **kw}
    return ClipStream(source, mode="exact", **kw)


def keys_in_tar(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]


@contextlib.contextmanager
def deadline(seconds: float, what: str, detail=lambda: ""):
    """Fail (not hang) when the body runs longer than `seconds`. pytest.fail raises a
    BaseException, so the reader's `except Exception` handlers cannot swallow it."""

    def on_alarm(signum, frame):
        pytest.fail(f"{what}: no batch within {seconds:.0f}s. {detail()}", pytrace=False)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def clips16(tmp_path_factory):
    """12 clips of 16 frames at 32 px in 2 shards of 6: room for frames=4 at stride 3."""
    folder = tmp_path_factory.mktemp("clips16")
    write_synthetic(folder, clips=12, frames=16, size=32, identities=3, seed=4, shard_samples=6, heldout=0.0)
    return folder


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two small sets from different seeds: keys start with synth1- and synth2-."""
    a, b = tmp_path_factory.mktemp("mix_a"), tmp_path_factory.mktemp("mix_b")
    write_synthetic(a, clips=10, frames=4, size=24, identities=3, seed=1, shard_samples=5, heldout=0.0)
    write_synthetic(b, clips=10, frames=4, size=24, identities=3, seed=2, shard_samples=5, heldout=0.0)
    return a, b


# -- brace patterns and path lists ----------------------------------------------------------------


def test_brace_pattern_and_path_list_read_what_the_folder_reads(synth40):
    folder_stream = exact(synth40.folder)
    reference = list(folder_stream)
    assert valid_keys(reference) == synth40.keys
    n = len(synth40.shard_paths)
    assert n == 7
    pattern = str(synth40.folder / f"synth-{{000000..{n - 1:06d}}}.tar")
    paths = [str(p) for p in synth40.shard_paths]
    for spec in (pattern, paths, [Path(p) for p in paths]):
        (source,) = resolve(spec)
        # counts come from the manifest beside the shards, so exact mode can cut ranges
        assert source.urls == paths and source.samples == [s.samples for s in synth40.manifest.shards]
        stream = exact(spec)
        assert len(stream) == len(folder_stream) == 5  # 40 clips in batches of 8
        batches = list(stream)
        assert len(batches) == len(stream)
        assert valid_keys(batches) == synth40.keys
        for got, want in zip(batches, reference):
            assert torch.equal(got.frames, want.frames) and torch.equal(got.frame_index, want.frame_index)
        assert stream.summary() == {}


def test_brace_pattern_of_some_shards_reads_only_those(synth40):
    spec = str(synth40.folder / "synth-{000002..000003}.tar")
    stream = exact(spec, batch_size=5)
    assert len(stream) == 3  # 12 clips in batches of 5
    want = keys_in_tar(synth40.shard_paths[2]) + keys_in_tar(synth40.shard_paths[3])
    assert valid_keys(list(stream)) == want and len(want) == 12


# -- pipe: URLs -------------------------------------------------------------------------------------


def test_pipe_source_in_resampled_mode(synth_few, caplog):
    urls = [f"pipe:cat {p}" for p in synth_few.shard_paths]
    stream = ClipStream(urls, frames=4, stride=2, batch_size=4, mode="resampled", seed=3, rank=0, world=1,
                        num_workers=0, slots=2)  # fmt: skip
    def log():
        msgs = [r.getMessage() for r in caplog.records if r.name == "shards.stream"]
        return f"The stream logged {len(msgs)} skips, first: {msgs[0] if msgs else '-'}"

    with deadline(5, "resampled stream over pipe: URLs", log):
        batches = take(stream, 5)
    keys = valid_keys(batches)
    assert len(keys) == 20 and set(keys) <= set(synth_few.keys) and len(set(keys)) > 4
    for b in batches:
        assert b.frames.shape == (4, 4, 3, synth_few.size, synth_few.size) and b.frames.dtype == torch.uint8
        assert (b.frame_index[:, 1:] - b.frame_index[:, :-1] == 2).all()
    assert stream.summary() == {}


def pipe_urls(ds) -> list[str]:
    return [f"pipe:cat {p}" for p in ds.shard_paths]


def test_exact_mode_without_counts_asks_for_a_manifest(synth_few):
    # pipe: URLs carry no manifest, so there are no per-shard counts to cut exact ranges from
    with pytest.raises(ValueError, match="manifest"):
        stream = exact(pipe_urls(synth_few))
        next(iter(stream))


def test_len_of_exact_stream_without_counts_asks_for_a_manifest(synth_few):
    """len() is what a training loop asks first; it should give the same clear error as iterating."""
    with pytest.raises(ValueError, match="manifest"):
        stream = exact(pipe_urls(synth_few))
        len(stream)


# -- http:// --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(synth_few):
    """The synth_few folder served by `python -m http.server` on a free local port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=synth_few.folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"http.server exited with {proc.returncode}: {proc.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(f"{base}/manifest.json", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 15:
                pytest.fail(f"http.server on port {port} did not answer within 15 s")
            time.sleep(0.05)
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_http_manifest_reads_every_clip_once(synth_few, http_server):
    assert shutil.which("curl"), "webdataset's gopen reads http:// URLs with curl: apt-get install curl"
    url = f"{http_server}/manifest.json"
    (source,) = resolve(url)
    assert source.urls == [f"{http_server}/{s.path}" for s in synth_few.manifest.shards]
    assert source.samples == [5, 5]
    stream = exact(url, batch_size=4)
    assert len(stream) == 3
    batches = list(stream)
    assert len(batches) == 3
    keys = valid_keys(batches)
    assert sorted(keys) == sorted(synth_few.keys) and len(keys) == len(set(keys)) == 10
    assert batches[0].frames.shape == (4, 4, 3, synth_few.size, synth_few.size)
    assert stream.summary() == {}
    # the same clips, the same pixels as from the local folder
    local = list(exact(synth_few.folder, batch_size=4))
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(batches, local))
    # a manifest URL that is not there: an error that names the URL
    missing = f"{http_server}/nowhere/manifest.json"
    with pytest.raises((OSError, ValueError)) as info:
        resolve(missing)
    assert missing in str(info.value)


# -- weighted mixtures ----------------------------------------------------------------------------


def mixture(a, b, wa=0.8, wb=0.2):
    return [{"source": str(a), "weight": wa}, {"source": str(b), "weight": wb}]


def test_mixture_follows_the_weights(two_sets):
    a, b = two_sets
    spec = mixture(a, b)
    stream = ClipStream(spec, frames=2, batch_size=8, mode="resampled", seed=0, rank=0, world=1, num_workers=0,
                        slots=2)  # fmt: skip
    assert [s.weight for s in stream.sources] == [0.8, 0.2]
    batches = take(stream, 50)
    keys = valid_keys(batches)
    assert len(keys) == 400
    assert all(k.startswith(("synth1-", "synth2-")) for k in keys)
    share = sum(k.startswith("synth1-") for k in keys) / len(keys)
    # binomial(400, 0.8): sd 0.02, so 0.7..0.9 is five standard deviations either side
    assert 0.7 <= share <= 0.9, share
    assert len({k for k in keys if k.startswith("synth2-")}) > 3  # the light source is read too

    # the same mixture as a JSON string: the same sources, hence the same sequence
    from_json = ClipStream(json.dumps(spec), frames=2, batch_size=8, mode="resampled", seed=0, rank=0, world=1,
                           num_workers=0, slots=2)  # fmt: skip
    assert [s.weight for s in from_json.sources] == [0.8, 0.2]
    assert valid_keys(take(from_json, 5)) == keys[:40]


@pytest.mark.parametrize("weight", [0, 0.0, -0.5])
def test_mixture_weights_must_be_positive(two_sets, weight):
    a, b = two_sets
    with pytest.raises(ValueError, match="weight"):
        resolve(mixture(a, b, wb=weight))
    with pytest.raises(ValueError, match="weight"):
        ClipStream(json.dumps(mixture(a, b, wa=weight)), frames=2, batch_size=4, rank=0, world=1)


@pytest.mark.parametrize("weight", [float("nan"), float("inf")])
def test_mixture_weights_must_be_finite(two_sets, weight):
    """A NaN or infinite weight makes the mixing probabilities NaN: refuse it where it is given."""
    a, b = two_sets
    with pytest.raises(ValueError, match="weight"):
        resolve(mixture(a, b, wb=weight))


def test_mixture_of_sources_with_different_au_names_is_refused(two_sets, tmp_path):
    a, b = two_sets
    other = tmp_path / "other"
    shutil.copytree(b, other)
    raw = json.loads((other / "manifest.json").read_text())
    raw["au_names"] = raw["au_names"][:3]
    (other / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="AU names"):
        ClipStream(mixture(a, other), frames=2, batch_size=4, rank=0, world=1)
    ClipStream(mixture(a, b), frames=2, batch_size=4, rank=0, world=1)  # the unchanged pair is fine


# -- missing data ---------------------------------------------------------------------------------


def test_missing_shards_in_a_pattern_name_the_first(synth40):
    spec = str(synth40.folder / "synth-{000000..000009}.tar")  # 7 shards exist
    with pytest.raises(FileNotFoundError) as info:
        resolve(spec)
    msg = str(info.value)
    assert "3 shard(s)" in msg and str(synth40.folder / "synth-000007.tar") in msg
    assert "synth-000008.tar" not in msg
    with pytest.raises(FileNotFoundError, match="synth-000007.tar"):
        ClipStream(spec, frames=4, batch_size=4, rank=0, world=1)


def test_empty_folder_is_not_a_source(tmp_path):
    (tmp_path / "notes.txt").write_text("no shards here")
    with pytest.raises(FileNotFoundError) as info:
        resolve(tmp_path)
    assert str(tmp_path) in str(info.value) and "manifest" in str(info.value)


# -- temporal sampling and reduced-size decoding -------------------------------------------------


def test_exact_mode_takes_the_centred_window(clips16):
    stored = stored_frame_index(clips16)
    stream = exact(clips16, frames=4, stride=3, batch_size=4)
    batches = list(stream)
    assert valid_keys(batches) and sorted(valid_keys(batches)) == sorted(stored)
    for b in batches:
        for key, fi in zip(b.keys, b.frame_index.tolist()):
            # span (4 - 1) * 3 + 1 = 10 of 16 stored frames: start (16 - 10) // 2 = 3
            assert fi == [stored[key][i] for i in (3, 6, 9, 12)]


def test_resampled_mode_draws_windows_at_the_stride(clips16):
    stored = stored_frame_index(clips16)
    stream = ClipStream(clips16, frames=4, stride=3, batch_size=4, mode="resampled", seed=2, rank=0, world=1,
                        num_workers=0, slots=2)  # fmt: skip
    starts = []
    for b in take(stream, 8):
        assert b.valid.all()
        for key, fi in zip(b.keys, b.frame_index.tolist()):
            first = stored[key][0]
            offsets = [f - first for f in fi]
            assert [o - offsets[0] for o in offsets] == [0, 3, 6, 9]
            assert 0 <= offsets[0] <= 6 and offsets[-1] <= 15
            starts.append(offsets[0])
    assert len(set(starts)) > 2, starts


def test_half_scale_decoding_approximates_a_downsample(clips16):
    full = list(exact(clips16, frames=16, batch_size=6))
    half = list(exact(clips16, frames=16, batch_size=6, scale=2))
    assert len(full) == len(half) == 2
    for f, h in zip(full, half):
        assert h.keys == f.keys and torch.equal(h.frame_index, f.frame_index)
        assert f.frames.shape == (6, 16, 3, 32, 32)
        assert h.frames.shape == (6, 16, 3, 16, 16) and h.frames.dtype == torch.uint8
        pooled = torch.nn.functional.avg_pool2d(f.frames.flatten(0, 1).float(), 2).view(6, 16, 3, 16, 16)
        err = (pooled - h.frames.float()).abs().mean().item()
        assert err < 8, err
        assert h.frames.float().std() > 10  # real images, not a blank buffer


def test_only_sampled_frames_are_decoded(clips16, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(clips16, folder)
    shard = folder / "synth-000000.tar"
    victim = keys_in_tar(shard)[1]
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = f"{victim}.000.jpg"
    assert bad in dict(members)
    write_members(shard, [(n, b"this is not a JPEG " * 20 if n == bad else d) for n, d in members])

    # the centred window 3..12 never touches frame 0
    stream = exact(folder, frames=4, stride=3, batch_size=4)
    keys = valid_keys(list(stream))
    assert victim in keys and len(keys) == 12
    assert stream.summary() == {}

    # all 16 frames: frame 0 is decoded, fails, and the clip is skipped and counted
    stream = exact(folder, frames=16, batch_size=4)
    keys = valid_keys(list(stream))
    assert victim not in keys and len(keys) == 11
    assert stream.summary() == {"corrupt_jpeg": 1}


# -- ClipBatch ------------------------------------------------------------------------------------


def test_normalized_frames_and_to(synth40):
    batch = take(exact(synth40.folder, batch_size=4), 1)[0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = batch.normalized_frames(mean, std)
    assert norm.dtype == torch.float32 and norm.shape == batch.frames.shape
    for c in range(3):
        x = batch.frames[1, 2, c, 5, 7].item()
        assert math.isclose(norm[1, 2, c, 5, 7].item(), (x / 255 - mean[c]) / std[c], rel_tol=1e-5, abs_tol=1e-5)
    want = (batch.frames.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 1, 3, 1, 1)
    assert torch.allclose(norm.double(), want, atol=1e-5)
    assert norm.min() < 0 < norm.max()  # channels are centred, not just scaled

    moved = batch.to("cpu")
    assert isinstance(moved, ClipBatch)
    assert moved.keys == batch.keys and len(moved) == 4
    for name in ("frames", "identity", "video", "frame_index", "valid", "landmarks", "au_occ", "au_int"):
        got, want_t = getattr(moved, name), getattr(batch, name)
        assert want_t is not None, name
        assert got.device.type == "cpu" and got.dtype == want_t.dtype
        assert torch.equal(got.nan_to_num(0) if got.is_floating_point() else got,
                           want_t.nan_to_num(0) if want_t.is_floating_point() else want_t), name  # fmt: skip
    # every tensor field moves, including the optional ones ("meta" needs no accelerator)
    meta = batch.to("meta")
    assert meta.keys == batch.keys
    for name in ("frames", "identity", "video", "frame_index", "valid", "landmarks", "au_occ", "au_int"):
        assert getattr(meta, name).device.type == "meta" and getattr(meta, name).shape == getattr(batch, name).shape
