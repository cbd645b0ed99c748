"""The streaming reader: exact coverage across ranks and workers, seeded resampling, resumption,
and bad data that is skipped and counted without stopping the stream."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from shards.stream import ClipStream
from stream_helpers import read_members, stored_frame_index, take, valid_keys, write_members


def signature(batch) -> tuple:
    return (tuple(batch.keys), tuple(map(tuple, batch.frame_index.tolist())), tuple(batch.valid.tolist()))


# -- 3. exact mode: every sample once over ranks and workers ---------------------------------


@pytest.mark.parametrize(
    "data, batch_size, world, workers",
    [
        ("synth40", 4, 2, 2),  # 40 clips: not a multiple of world * workers * batch (16)
        ("synth40", 3, 2, 2),  # uneven ranges (10 per worker) and a padded last batch
        ("synth_few", 4, 2, 2),  # 2 shards for 4 (rank, worker) slots
        ("synth_few", 2, 3, 2),  # 10 clips over 6 slots: some ranges are shorter than others
    ],
)
def test_exact_covers_every_sample_once(request, data, batch_size, world, workers):
    ds = request.getfixturevalue(data)
    seen = Counter()
    lengths = []
    for rank in range(world):
        stream = ClipStream(ds.manifest_path, frames=ds.frames, batch_size=batch_size, mode="exact",
                            rank=rank, world=world, num_workers=workers)  # fmt: skip
        batches = list(stream)
        assert len(batches) == len(stream)
        lengths.append(len(batches))
        for b in batches:
            assert len(b.keys) == batch_size and b.frames.shape[:2] == (batch_size, ds.frames)
            # padding rows: no key, unknown identity and video; real rows: known ones
            for k, ok, ident, video in zip(b.keys, b.valid.tolist(), b.identity.tolist(), b.video.tolist()):
                assert (k != "") == ok and (ident != -1) == ok and (video != -1) == ok
        seen.update(valid_keys(batches))
        assert stream.summary() == {}
    assert len(set(lengths)) == 1, f"ranks ran different numbers of batches: {lengths}"
    assert sorted(seen) == sorted(ds.keys) and set(seen.values()) == {1}


def test_exact_single_process_keeps_manifest_order_and_repeats(synth40):
    stream = ClipStream(synth40.folder, frames=4, batch_size=8, mode="exact", rank=0, world=1)
    first = list(stream)
    assert valid_keys(first) == synth40.keys
    second = list(stream)  # a new epoch: the same samples, the same frames (centred, no RNG)
    assert [signature(b) for b in second] == [signature(b) for b in first]
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(first, second))


# -- 4. resampled mode: seeded ------------------------------------------------------------------


def resampled(ds, seed=0, rank=0, world=1, workers=2, **kw):
    return ClipStream(ds.manifest_path, frames=4, batch_size=4, mode="resampled", seed=seed,
                      rank=rank, world=world, num_workers=workers, slots=2, **kw)  # fmt: skip


def test_resampled_same_seed_same_sequence(synth40):
    a = [signature(b) for b in take(resampled(synth40, seed=5), 8)]
    b = [signature(b) for b in take(resampled(synth40, seed=5), 8)]
    assert a == b
    assert all(all(s[2]) for s in a)  # an infinite stream never pads
    keys = [k for s in a for k in s[0]]
    assert set(keys) <= set(synth40.keys) and len(set(keys)) > 8


def test_resampled_seed_and_rank_change_the_sequence(synth40):
    base = [signature(b) for b in take(resampled(synth40, seed=5, rank=0, world=2), 6)]
    other_seed = [signature(b) for b in take(resampled(synth40, seed=6, rank=0, world=2), 6)]
    other_rank = [signature(b) for b in take(resampled(synth40, seed=5, rank=1, world=2), 6)]
    assert base != other_seed
    assert base != other_rank
    # the two workers of a rank do not replay each other (batches alternate between workers)
    assert base[0::2] != base[1::2]
    # the frames within a clip are sampled too (8 stored, 4 taken): starts vary
    stored = stored_frame_index(synth40.folder)
    starts = {fi[0] - stored[key][0] for s in base for key, fi in zip(s[0], s[1])}
    assert len(starts) > 1 and all(0 <= s <= 4 for s in starts)


# -- 5. resumption --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, workers, n",
    [("resampled", 2, 3), ("resampled", 0, 3), ("exact", 2, 3), ("exact", 0, 2)],
)
def test_resume_continues_the_uninterrupted_stream(synth40, mode, workers, n):
    def make():
        return ClipStream(synth40.manifest_path, frames=4, batch_size=4, mode=mode, seed=9, rank=1, world=2,
                          num_workers=workers, slots=2)  # fmt: skip

    total = len(make()) if mode == "exact" else n + 5
    reference = take(make(), total)

    first = make()
    head = take(first, n)
    assert [signature(b) for b in head] == [signature(b) for b in reference[:n]]
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint

    resumed = make()
    resumed.load_state_dict(state)
    if mode == "exact":
        tail = list(resumed)  # the rest of the epoch, and no more
    else:
        tail = take(resumed, total - n)
    assert len(tail) == total - n
    for got, want in zip(tail, reference[n:]):
        assert signature(got) == signature(want)
        assert torch.equal(got.frames, want.frames)
        assert torch.equal(got.identity, want.identity)


def test_load_state_from_another_setup_is_refused(synth40):
    stream = ClipStream(synth40.manifest_path, frames=4, batch_size=4, mode="resampled", seed=1, rank=0, world=1)
    take(stream, 2)
    state = stream.state_dict()
    other = ClipStream(synth40.manifest_path, frames=4, batch_size=4, mode="resampled", seed=2, rank=0, world=1)
    with pytest.raises(ValueError):
        other.load_state_dict(state)
    exact = ClipStream(synth40.manifest_path, frames=4, batch_size=4, mode="exact", seed=1, rank=0, world=1)
    with pytest.raises(ValueError):
        exact.load_state_dict(state)


# -- 6. bad data ----------------------------------------------------------------------------------


def edit_members(path: Path, edit) -> None:
    write_members(path, edit(read_members(path)))


def member_offsets(path: Path, name: str) -> tuple[int, int, int]:
    """(header offset, data offset, size) of a member."""
    with tarfile.open(path) as tar:
        m = tar.getmember(name)
        return m.offset, m.offset_data, m.size


def break_jpeg_header(folder, keys):
    """Overwrite the SOI marker and the start of the headers of one frame."""
    name = f"{keys[2]}.003.jpg"
    edit_members(folder / "synth-000000.tar", lambda ms: [(n, b"\0" * 16 + d[16:] if n == name else d) for n, d in ms])
    return {keys[2]}, {"corrupt_jpeg": 1}


def cut_jpeg_data(folder, keys):
    """A frame whose entropy-coded data stops half way (the member itself is whole). The clip is
    the last one: its first frames decode into the row that then becomes padding."""
    name = f"{keys[23]}.006.jpg"
    edit_members(folder / "synth-000003.tar", lambda ms: [(n, d[: len(d) // 2] if n == name else d) for n, d in ms])
    return {keys[23]}, {"corrupt_jpeg": 1}


def drop_json(folder, keys):
    name = f"{keys[7]}.json"
    edit_members(folder / "synth-000001.tar", lambda ms: [(n, d) for n, d in ms if n != name])
    return {keys[7]}, {"missing_json": 1}


def drop_frame(folder, keys):
    name = f"{keys[9]}.005.jpg"
    edit_members(folder / "synth-000001.tar", lambda ms: [(n, d) for n, d in ms if n != name])
    return {keys[9]}, {"missing_frame": 1}


def drop_sample(folder, keys):
    """A whole clip missing: the shard holds fewer samples than the manifest says."""
    key = keys[14]
    edit_members(folder / "synth-000002.tar", lambda ms: [(n, d) for n, d in ms if not n.startswith(key + ".")])
    return {key}, {"short_shard": 1}


def truncate_mid_member(folder, keys):
    """The shard is cut in the middle of a frame's data: that clip and the rest are lost."""
    path = folder / "synth-000003.tar"
    _, data_at, size = member_offsets(path, f"{keys[20]}.004.jpg")
    path.write_bytes(path.read_bytes()[: data_at + size // 2])
    return set(keys[20:24]), {"truncated_shard": 1}


def truncate_at_member_boundary(folder, keys):
    """The shard is cut at a 512-byte block boundary that starts a member (as a transfer cut at
    a chunk boundary may do): the last clip lacks its au.npy; the tar has no end blocks."""
    path = folder / "synth-000003.tar"
    header_at, _, _ = member_offsets(path, f"{keys[23]}.au.npy")
    path.write_bytes(path.read_bytes()[:header_at])
    return {keys[23]}, {"truncated_shard": 1}


def delete_shard(folder, keys):
    (folder / "synth-000002.tar").unlink()
    return set(keys[12:18]), {"unreadable_shard": 1}


CORRUPTIONS = [break_jpeg_header, cut_jpeg_data, drop_json, drop_frame, drop_sample, truncate_mid_member,
               truncate_at_member_boundary, delete_shard]  # fmt: skip


def exact_stream(folder, frames, **kw):
    kw = {"rank": 0, "world": 1, "num_workers": 0, **kw}
    return ClipStream(folder / "manifest.json", frames=frames, batch_size=4, mode="exact", **kw)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_bad_data_is_skipped_and_counted(synth24, tmp_path, corrupt):
    folder = tmp_path / "data"
    shutil.copytree(synth24.folder, folder)
    stream = exact_stream(folder, synth24.frames)  # built first: delete_shard removes a listed shard
    lost, kinds = corrupt(folder, synth24.keys)
    batches = list(stream)
    assert len(batches) == len(stream) == 6  # the epoch keeps its length; bad clips become padding
    assert valid_keys(batches) == [k for k in synth24.keys if k not in lost]
    assert stream.summary() == kinds
    # rows that are not valid (padding, or where a skipped clip was being decoded) carry nothing
    for b in batches:
        bad = ~b.valid
        assert (b.identity[bad] == -1).all() and (b.video[bad] == -1).all() and (b.frame_index[bad] == -1).all()
        assert (b.frames[bad] == 0).all()
        assert (b.au_occ[bad] == -1).all() and torch.isnan(b.au_int[bad]).all()


def test_all_kinds_of_bad_data_over_ranks_and_workers(synth24, tmp_path, caplog):
    folder = tmp_path / "data"
    shutil.copytree(synth24.folder, folder)
    lost, kinds = set(), Counter()
    for corrupt in (break_jpeg_header, drop_json, drop_frame, truncate_mid_member):
        more_lost, more_kinds = corrupt(folder, synth24.keys)
        lost |= more_lost
        kinds.update(more_kinds)

    seen, summary, lengths = Counter(), Counter(), []
    for rank in (0, 1):
        stream = exact_stream(folder, synth24.frames, rank=rank, world=2, num_workers=2)
        batches = list(stream)
        lengths.append(len(batches))
        seen.update(valid_keys(batches))
        summary.update(stream.summary())
    assert lengths == [len(stream)] * 2
    assert sorted(seen) == sorted(k for k in synth24.keys if k not in lost) and set(seen.values()) == {1}
    # a truncated shard may be noticed by more than one worker whose range lies in it
    assert set(summary) == set(kinds) and all(summary[k] >= n for k, n in kinds.items())

    # in-process, the skipped samples are logged with their shard and key
    caplog.clear()
    stream = exact_stream(folder, synth24.frames)
    list(stream)
    messages = [r.getMessage() for r in caplog.records if r.name == "shards.stream"]
    assert any("corrupt_jpeg" in m and "synth-000000.tar" in m and synth24.keys[2] in m for m in messages)
    assert any("missing_json" in m and synth24.keys[7] in m for m in messages)


def test_resampled_stream_goes_on_past_bad_data(synth24, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(synth24.folder, folder)
    lost = set()
    for corrupt in (break_jpeg_header, drop_json, truncate_mid_member):
        lost |= corrupt(folder, synth24.keys)[0]
    # 5 of 8 stored frames: every window holds frame 3, the broken one (a clip whose bad frame
    # lies outside the sampled window is fine: only sampled frames are decoded)
    stream = ClipStream(folder, frames=5, batch_size=4, mode="resampled", seed=0, rank=0, world=1,
                        num_workers=0, slots=2)  # fmt: skip
    batches = take(stream, 30)  # 120 clips from 24: every shard is read several times
    keys = valid_keys(batches)
    assert len(keys) == 120 and not set(keys) & lost
    summary = stream.summary()
    assert {"corrupt_jpeg", "missing_json", "truncated_shard"} <= set(summary)


# -- resizing in the workers -----------------------------------------------------------------


def test_resize_decodes_at_reduced_scale_then_resizes(synth40):
    """resize=16 on 32 px frames decodes at 1/2 inside libjpeg (no resize left to do); resize=24
    decodes in full and resizes with antialiasing; both approximate a resize of the full frames."""
    full = take(ClipStream(synth40.folder, frames=2, batch_size=4, mode="exact", rank=0, world=1), 1)[0]
    reference = torch.nn.functional.interpolate(
        full.frames.flatten(0, 1).float(), size=(24, 24), mode="bilinear", antialias=True
    ).view(4, 2, 3, 24, 24)
    for side, scale in ((16, 2), (24, 1)):
        stream = ClipStream(synth40.folder, frames=2, batch_size=4, mode="exact", resize=side, rank=0, world=1)
        assert stream.cfg.scale == scale
        batch = take(stream, 1)[0]
        assert batch.frames.shape == (4, 2, 3, side, side) and batch.frames.dtype == torch.uint8
        assert batch.keys == full.keys
        if side == 24:
            assert (batch.frames.float() - reference).abs().mean() < 2.0
    # A changed resize is another stream set-up: its position cannot be loaded.
    a = ClipStream(synth40.folder, frames=2, batch_size=4, resize=16, rank=0, world=1)
    b = ClipStream(synth40.folder, frames=2, batch_size=4, resize=24, rank=0, world=1)
    with pytest.raises(ValueError, match="another stream set-up"):
        b.load_state_dict(a.state_dict())


def test_workers_leave_the_stop_signals_to_the_trainer(synth40):
    """SLURM signals every process of a job: a SIGTERM that reaches the DataLoader workers must not
    kill them (the training process decides how to stop), and the stream reads on."""
    import os
    import signal

    import psutil

    from shards.stream import STOP_SIGNALS

    stream = ClipStream(synth40.manifest_path, frames=4, batch_size=4, mode="resampled", num_workers=2, rank=0, world=1)
    before = {p.pid for p in psutil.Process().children()}
    batches = iter(stream)
    next(batches)
    workers = [p for p in psutil.Process().children() if p.pid not in before]
    assert len(workers) == 2
    for worker in workers:
        blocked = int(Path(f"/proc/{worker.pid}/status").read_text().split("SigBlk:")[1].split()[0], 16)
        assert all(blocked >> (sig - 1) & 1 for sig in STOP_SIGNALS)
        os.kill(worker.pid, signal.SIGTERM)
    assert len([next(batches) for _ in range(6)]) == 6
    assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
