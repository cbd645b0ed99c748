"""Streaming clip reader: shards to `ClipBatch`es, split by node and worker, seeded, resumable.

Two modes:

* `resampled` (pretraining, the default): an infinite stream. Each (rank, worker) keeps `slots`
  shards open at once, drawn with replacement by source weight, and takes each sample from a
  randomly chosen open shard, which mixes shards without a shuffle buffer. Every rank always has
  data, whatever the number of shards (webdataset issue 188 cannot happen).
* `exact` (evaluation): every sample once per epoch. The samples, in manifest order, are cut into
  `world * workers` contiguous ranges of equal length; each range yields the same number of
  full batches, the last ones padded with entries whose `valid` is False. So every rank runs the
  same number of batches and no rank waits on another that ran dry.

Position: each batch carries its worker's stream state after it (open shards and offsets, RNG
state, counts), and `ClipStream.state_dict()` keeps the state of the last batch consumed from
every worker. A new stream given that state continues with exactly the batches an uninterrupted
stream would have yielded next. DataLoader takes batches from workers in turn, so on resume the
worker that owes the next batch is put first.

Bad data never stops the stream: a failure is skipped without sleeping, counted by kind, logged
with shard and key (the first few of each kind per worker), and `summary()` reports the counts.
"""

from __future__ import annotations

import logging
import math
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.batch import ClipBatch
from shards.decode import ERROR_KINDS, BadSample, DecodedClip, decode_clip, first_sample, iter_groups
from shards.format import LABEL_MEMBERS, N_LANDMARKS, stable_id
from shards.sources import ShardSource, resolve

log = logging.getLogger("shards.stream")
MODES = ("resampled", "exact")
LOGGED_PER_KIND = 5  # per worker; the summary counts the rest
MAX_SKIPPED_IN_A_ROW = 1000


def dist_rank_world() -> tuple[int, int]:
    """This process's rank and world size: torch.distributed if started, else torchrun's env."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class StreamConfig:
    frames: int = 16  # T, frames per clip in a batch
    stride: int = 1  # distance between sampled frames, in stored frames
    batch_size: int = 8  # per rank
    mode: str = "resampled"
    seed: int = 0
    slots: int = 4  # shards open at once per worker and source (resampled mode)
    scale: int = 1  # decode at 1/scale size (1, 2, 4, 8)
    resize: int | None = None  # then resize to resize x resize in the worker (antialiased)
    size: tuple[int, int] | None = None  # stored frame size; from the manifest when None
    rank: int = 0
    world: int = 1
    workers: int = 1  # logical workers (max(1, DataLoader workers))
    au_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.scale not in (1, 2, 4, 8):
            raise ValueError(f"scale must be 1, 2, 4 or 8, got {self.scale}")
        if min(self.frames, self.stride, self.batch_size, self.slots, self.world, self.workers) < 1:
            raise ValueError("frames, stride, batch_size, slots, world and workers must be >= 1")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside world of {self.world}")


@dataclass
class WorkerReport:
    """What a worker sends beside each batch: who it is and where it stands after the batch."""

    logical: int
    state: dict


class _ErrorLog:
    def __init__(self, counts: dict | None = None):
        self.counts = Counter(counts or {})

    def add(self, err: BadSample, url: str, key: str | None) -> None:
        self.counts[err.kind] += 1
        if self.counts[err.kind] <= LOGGED_PER_KIND:
            log.warning("skipped %s in %s%s: %s", err.kind, url, f" key {key}" if key else "", err)


class _OpenShard:
    """A shard being read sequentially, with the count of member groups taken from it."""

    def __init__(self, source: ShardSource, index: int, offset: int, errors: _ErrorLog):
        self.source, self.index, self.offset, self.errors = source, index, 0, errors
        self.url = source.urls[index]
        self._groups = iter_groups(self.url)
        self.failed = False
        for _ in range(offset):  # resume: skip what was already taken, without decoding
            if self.next() is None:
                break

    def next(self) -> dict | None:
        """The next member group, or None at the end (or the break) of the shard."""
        if self.failed:
            return None
        try:
            group = next(self._groups)
        except StopIteration:
            self.failed = True
            expected = self.source.samples[self.index] if self.source.samples else None
            if expected is not None and self.offset < expected:
                self.errors.add(BadSample("short_shard", f"{self.offset} of {expected} samples"), self.url, None)
            return None
        except BadSample as e:
            self.failed = True
            self.errors.add(e, self.url, None)
            return None
        self.offset += 1
        return group


class _Resampler:
    """Infinite samples of one source: `slots` open shards drawn with replacement, mixed."""

    def __init__(self, source: ShardSource, slots: int, rng: np.random.Generator, errors: _ErrorLog, state=None):
        self.source, self.rng, self.errors = source, rng, errors
        if state is None:
            state = [[self._draw(), 0] for _ in range(slots)]
        self.open = [_OpenShard(source, i, off, errors) for i, off in state]

    def _draw(self) -> int:
        return int(self.rng.integers(len(self.source.urls)))

    def state(self) -> list:
        return [[s.index, s.offset] for s in self.open]

    def next(self) -> tuple[dict, str]:
        misses = 0
        while True:
            slot = int(self.rng.integers(len(self.open)))
            group = self.open[slot].next()
            if group is not None:
                return group, self.open[slot].url
            self.open[slot] = _OpenShard(self.source, self._draw(), 0, self.errors)
            misses += 1
            if misses > 4 * len(self.source.urls) + 64:
                raise RuntimeError(
                    f"source {self.source.name or self.source.urls[0]}: {misses} shards in a row gave no "
                    f"sample (errors so far: {dict(self.errors.counts)})"
                )


def exact_ranges(counts: list[int], slots: int) -> tuple[list[tuple[int, int]], int]:
    """Cut samples 0..N-1 into `slots` contiguous ranges of ceil(N / slots) (the last ones
    shorter or empty); returns the ranges and that length."""
    total = sum(counts)
    per = max(1, math.ceil(total / slots))
    return [(min(s * per, total), min((s + 1) * per, total)) for s in range(slots)], per


class _ExactRange:
    """Samples [start, stop) of the concatenated sources, in order, with their shard URL."""

    def __init__(self, sources: list[ShardSource], start: int, stop: int, consumed: int, errors: _ErrorLog):
        self.segments = []  # (source, shard index, first sample in shard, count)
        base = 0
        for source in sources:
            for i, n in enumerate(source.samples):
                lo, hi = max(start, base), min(stop, base + n)
                if lo < hi:
                    self.segments.append((source, i, lo - base, hi - lo))
                base += n
        self.errors, self.consumed = errors, 0
        self._iter = self._walk(consumed)

    def _walk(self, skip: int) -> Iterator[tuple[dict, str]]:
        for source, index, first, count in self.segments:
            if skip >= count:
                skip -= count
                self.consumed += count
                continue
            shard = _OpenShard(source, index, first + skip, self.errors)
            taken, skip = skip, 0
            self.consumed += taken
            while taken < count:
                group = shard.next()
                if group is None:  # shard broke or ended early: its remaining samples are lost
                    self.consumed += count - taken
                    break
                taken += 1
                self.consumed += 1
                yield group, shard.url

    def next(self) -> tuple[dict, str] | None:
        return next(self._iter, None)


class _WorkerStream(IterableDataset):
    """The part of the stream that runs inside one DataLoader worker (or in-process)."""

    def __init__(self, sources: list[ShardSource], cfg: StreamConfig, first_logical: int, states: dict):
        super().__init__()
        self.sources, self.cfg, self.first_logical, self.states = sources, cfg, first_logical, states
        height, width = cfg.size
        self.out_hw = (-(-height // cfg.scale), -(-width // cfg.scale))

    def __iter__(self) -> Iterator[tuple[ClipBatch, WorkerReport]]:
        info = get_worker_info()
        if info is not None:
            torch.set_num_threads(1)  # decoding is single-threaded; leave cores to other workers
        physical = info.id if info is not None else 0
        logical = (physical + self.first_logical) % self.cfg.workers
        state = self.states.get(logical)
        if self.cfg.mode == "resampled":
            yield from self._resampled(logical, state)
        else:
            yield from self._exact(logical, state)

    # -- resampled -----------------------------------------------------------------------------
    def _resampled(self, logical: int, state: dict | None) -> Iterator:
        cfg = self.cfg
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, cfg.rank, cfg.world, logical])))
        if state is not None:
            rng.bit_generator.state = state["rng"]
        errors = _ErrorLog(state and state["errors"])
        pickers = [
            _Resampler(s, cfg.slots, rng, errors, state and state["sources"][i]) for i, s in enumerate(self.sources)
        ]
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        weights /= weights.sum()
        batches = state["batches"] if state else 0
        while True:
            batch = self._new_batch()
            filled = skipped = 0
            while filled < cfg.batch_size:
                which = int(rng.choice(len(pickers), p=weights)) if len(pickers) > 1 else 0
                group, url = pickers[which].next()
                good = self._put(batch, filled, group, url, rng, errors)
                filled += good
                skipped = 0 if good else skipped + 1
                if skipped > MAX_SKIPPED_IN_A_ROW:  # all bad, not some: say so rather than spin
                    raise RuntimeError(f"{skipped} bad samples in a row, last in {url}: {dict(errors.counts)}")
            batches += 1
            report = WorkerReport(
                logical,
                {
                    "rng": rng.bit_generator.state,
                    "sources": [p.state() for p in pickers],
                    "errors": dict(errors.counts),
                    "batches": batches,
                },
            )
            yield self._finish(batch, filled), report

    # -- exact ---------------------------------------------------------------------------------
    def _exact(self, logical: int, state: dict | None) -> Iterator:
        cfg = self.cfg
        counts = [n for s in self.sources for n in s.samples]
        ranges, per = exact_ranges(counts, cfg.world * cfg.workers)
        start, stop = ranges[cfg.rank * cfg.workers + logical]
        n_batches = math.ceil(per / cfg.batch_size)
        errors = _ErrorLog(state and state["errors"])
        reader = _ExactRange(self.sources, start, stop, state["consumed"] if state else 0, errors)
        done = state["batches"] if state else 0
        while done < n_batches:
            batch = self._new_batch()
            filled = 0
            while filled < cfg.batch_size:
                item = reader.next()
                if item is None:
                    break
                filled += self._put(batch, filled, item[0], item[1], None, errors)
            done += 1
            report = WorkerReport(
                logical, {"consumed": reader.consumed, "errors": dict(errors.counts), "batches": done}
            )
            yield self._finish(batch, filled), report

    # -- batch assembly ------------------------------------------------------------------------
    def _new_batch(self) -> dict:
        """Arrays for one batch, filled row by row; numpy views, turned into tensors at the end."""
        cfg, (h, w) = self.cfg, self.out_hw
        b, t, a = cfg.batch_size, cfg.frames, len(cfg.au_names)
        frames = torch.empty((b, t, h, w, 3), dtype=torch.uint8)
        if get_worker_info() is not None:
            frames.share_memory_()  # decode straight into the memory the batch travels in
        return {
            "frames": frames,
            "identity": np.full(b, -1, np.int64),
            "video": np.full(b, -1, np.int64),
            "frame_index": np.full((b, t), -1, np.int64),
            "landmarks": None,
            "au_occ": np.full((b, t, a), -1, np.int8) if a else None,
            "au_int": np.full((b, t, a), np.nan, np.float32) if a else None,
            "keys": [""] * b,
        }

    def _put(self, batch: dict, i: int, group: dict, url: str, rng, errors: _ErrorLog) -> int:
        """Decode `group` into row i of `batch`; 1 if it went in, 0 if it was bad and skipped."""
        cfg = self.cfg
        try:
            clip: DecodedClip = decode_clip(
                group,
                batch["frames"][i].numpy(),
                frames=cfg.frames,
                stride=cfg.stride,
                scale=cfg.scale,
                n_aus=len(cfg.au_names),
                rng=rng,
            )
        except BadSample as e:
            errors.add(e, url, group.get("__key__"))
            return 0
        batch["identity"][i] = stable_id(clip.meta["identity"])
        batch["video"][i] = stable_id(clip.meta["video_id"])
        batch["frame_index"][i] = clip.frame_index
        batch["keys"][i] = clip.key
        if clip.landmarks is not None:
            if batch["landmarks"] is None:
                batch["landmarks"] = np.full((cfg.batch_size, cfg.frames, N_LANDMARKS, 2), np.nan, np.float32)
            batch["landmarks"][i] = clip.landmarks
        if clip.au_occ is not None and batch["au_occ"] is not None:
            batch["au_occ"][i] = clip.au_occ
            batch["au_int"][i] = clip.au_int
        return 1

    def _finish(self, batch: dict, filled: int) -> ClipBatch:
        valid = torch.zeros(self.cfg.batch_size, dtype=torch.bool)
        valid[:filled] = True
        frames = batch.pop("frames")
        # Rows past `filled` are padding, or hold the part-decoded frames of a skipped sample.
        # The other arrays are written only for good samples, so they still say "unknown" there.
        frames[filled:] = 0
        for name in ("identity", "video", "frame_index", "au_occ", "au_int", "landmarks"):
            if batch[name] is not None:
                batch[name] = torch.from_numpy(batch[name])
        # [B, T, H, W, 3] -> [B, T, 3, H, W] as a view: channels-last memory, no copy.
        frames = frames.permute(0, 1, 4, 2, 3)
        if self.cfg.resize and self.out_hw != (self.cfg.resize,) * 2:
            frames = resize_frames(frames, self.cfg.resize)
        return ClipBatch(frames=frames, valid=valid, **batch)


def spread_stride(stored: int, frames: int) -> int:
    """The stride at which `frames` sampled frames spread over a stored clip of `stored` frames
    (fine-tuning's and the probes' frames of a clip, unlike pretraining's windows at data.stride)."""
    return max(1, stored // frames)


def resize_frames(frames: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 [B, T, 3, H, W] to [B, T, 3, side, side], bilinear with antialiasing, no augmentation."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:]).float()
    out = torch.nn.functional.interpolate(flat, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).reshape(b, t, 3, side, side)


def dct_scale_for(size: tuple[int, int], side: int) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) that still decodes at least `side` pixels a side."""
    return max(s for s in (1, 2, 4, 8) if -(-min(size) // s) >= side or s == 1)


# The signals a scheduler sends to stop a job (SLURM's --signal warning, the SIGTERM of a requeue or
# preemption). SLURM delivers them to every process of a job, workers included; torch's workers
# die on SIGTERM, and the trainer would then fail on its next batch instead of saving a checkpoint.
# The trainer decides how to stop, so the workers block them (it ends them itself).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


class ClipStream:
    """Iterable of `ClipBatch` over shards; see the module docstring for modes and resumption.

    `source`: a manifest path, a folder, a brace pattern, a URL list, or a mixture
    `[{"source": SPEC, "weight": W}, ...]`; `split` picks one split of a manifest (for example
    the held-out identities of a synthetic set). Rank and world default to torch.distributed's.
    A source that cannot give one sample (no clips, or clips shorter than `frames` at `stride`)
    is refused here, with a ValueError naming it, rather than in the workers.
    """

    def __init__(
        self,
        source,
        *,
        split: str | None = None,
        frames: int = 16,
        stride: int = 1,
        batch_size: int = 8,
        mode: str = "resampled",
        seed: int = 0,
        num_workers: int = 0,
        slots: int = 4,
        scale: int | None = None,
        resize: int | None = None,
        rank: int | None = None,
        world: int | None = None,
        prefetch_factor: int = 2,
        multiprocessing_context=None,
        pin_memory: bool | None = None,
    ):
        self.sources = resolve(source, split)
        self._firsts: dict[int, tuple] = {}  # source index -> its first readable clip, read once
        if rank is None or world is None:
            rank, world = dist_rank_world()
        manifests = [s.manifest for s in self.sources if s.manifest is not None]
        au_names = next((m.au_names for m in manifests if m.au_names), [])
        for m in manifests:
            if m.au_names and m.au_names != au_names:
                raise ValueError(f"sources disagree on AU names: {m.name} has {m.au_names}, another {au_names}")
        if manifests:
            size = tuple(manifests[0].frame_size)
        else:  # no manifest: the first readable clip tells the frame size and the AU count
            size, n_aus = self._probe()
            au_names = [f"au{i}" for i in range(n_aus)]
        if mode == "exact" and (missing := [s.name or s.urls[0] for s in self.sources if s.samples is None]):
            raise ValueError(f"exact mode needs per-shard sample counts (a manifest) for: {', '.join(missing)}")
        if scale is None:  # decode no larger than the resize needs: DCT scaling is nearly free
            scale = dct_scale_for(size, resize) if resize else 1
        self.cfg = StreamConfig(
            frames=frames, stride=stride, batch_size=batch_size, mode=mode, seed=seed, slots=slots, scale=scale,
            resize=resize, size=size, rank=rank, world=world, workers=max(1, num_workers), au_names=list(au_names),
        )  # fmt: skip
        self._check_servable()
        self.num_workers = num_workers
        self.loader_kwargs = dict(
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            multiprocessing_context=multiprocessing_context,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            worker_init_fn=_leave_stop_signals_to_the_trainer if num_workers > 0 else None,
        )
        self._consumed = 0  # batches consumed this epoch
        self._states: dict[int, dict] = {}
        self.epoch_done = False

    def _probe(self) -> tuple[tuple[int, int], int]:
        """Frame size and AU count of the first readable sample, for sources without a manifest."""
        for i in range(len(self.sources)):  # a mixture may start with an unreadable source
            try:
                meta, n_aus, _ = self._first_sample(i)
                return tuple(meta["size"]), n_aus
            except ValueError as e:
                failure = e
        raise failure

    def _first_sample(self, i: int) -> tuple[dict, int, dict]:
        """Metadata, AU count and members of source i's first readable clip (in its first 8
        shards): what a source without a manifest, or with an older one, does not say."""
        if i not in self._firsts:
            self._firsts[i] = first_sample(self.sources[i].urls[:8])
        return self._firsts[i]

    def _stored_frames(self, i: int) -> int:
        """Frames stored per clip in source i: its manifest's count (0: lengths vary), else its
        first clip's."""
        manifest = self.sources[i].manifest
        return manifest.frames_per_clip if manifest else len(self._first_sample(i)[0]["frame_index"])

    def _check_servable(self) -> None:
        """Refuse, before any worker starts, sources that cannot give one sample: no clips, or
        clips shorter than the window (frames - 1) * stride + 1 that `pick_frames` takes. Streamed,
        every sample would be skipped as bad_shape and the run die on bad data, not say why."""
        frames, stride = self.cfg.frames, self.cfg.stride
        span = (frames - 1) * stride + 1
        for i, source in enumerate(self.sources):
            if not source.urls or source.total == 0:
                raise ValueError(f"{source.origin}: lists no clips: nothing to stream")
            stored = self._stored_frames(i)
            if stored and stored < span:
                raise ValueError(
                    f"{source.origin}: clips hold {stored} frames, but frames={frames} at stride={stride} needs "
                    f"{span} ((frames - 1) * stride + 1): ask for fewer frames or a smaller stride, or build "
                    f"longer clips"
                )

    def carries(self, label: str) -> bool:
        """Whether the streamed clips carry `label` ("landmarks" or "au"), so that a trainer can
        refuse an objective its data cannot feed before it starts: true when any source does, by
        its manifest, or by its first clip where no manifest says (none, or an older one)."""
        if label not in LABEL_MEMBERS:
            raise ValueError(f"unknown label {label!r}: shards carry {', '.join(LABEL_MEMBERS)}")
        if label == "au" and not self.au_names:  # no AU names: batches hold no AU labels
            return False
        for i, source in enumerate(self.sources):
            known = source.manifest.carries(label) if source.manifest else None
            if known or (known is None and f"{label}.npy" in self._first_sample(i)[2]):
                return True
        return False

    @property
    def au_names(self) -> list[str]:
        return self.cfg.au_names

    def __len__(self) -> int:
        """Batches per epoch on this rank (exact mode only)."""
        if self.cfg.mode != "exact":
            raise TypeError("a resampled stream is infinite")
        counts = [n for s in self.sources for n in s.samples]
        _, per = exact_ranges(counts, self.cfg.world * self.cfg.workers)
        return math.ceil(per / self.cfg.batch_size) * self.cfg.workers

    def __iter__(self) -> Iterator[ClipBatch]:
        if self.epoch_done:  # a finished exact epoch: the next iteration starts a new one
            self._consumed, self._states, self.epoch_done = 0, {}, False
        dataset = _WorkerStream(self.sources, self.cfg, self._consumed % self.cfg.workers, dict(self._states))
        for batch, report in DataLoader(dataset, **self.loader_kwargs):
            self._consumed += 1
            self._states[report.logical] = report.state
            yield batch
        self.epoch_done = True
        self.log_summary()

    # -- position ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.fingerprint(), "consumed": self._consumed, "workers": dict(self._states)}

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.fingerprint():
            raise ValueError(
                "stream position belongs to another stream set-up: "
                f"saved {state['config']}, now {self.fingerprint()}"
            )
        self._consumed = state["consumed"]
        self._states = {int(k): v for k, v in state["workers"].items()}
        self.epoch_done = False

    def fingerprint(self) -> dict:
        """What this rank's stream position depends on: a saved position continues exactly only
        in a stream with the same fingerprint (a trainer checks it, less the rank, with its config
        before it resumes)."""
        c = self.cfg
        return {
            "mode": c.mode, "seed": c.seed, "rank": c.rank, "world": c.world, "workers": c.workers,
            "batch_size": c.batch_size, "frames": c.frames, "stride": c.stride, "slots": c.slots,
            "scale": c.scale, "resize": c.resize,
            "shards": sum(len(s.urls) for s in self.sources),
        }  # fmt: skip

    # -- bad data ------------------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        """Skipped items by kind, over every worker, so far."""
        total = Counter()
        for state in self._states.values():
            total.update(state["errors"])
        return {k: total[k] for k in ERROR_KINDS if total[k]}

    def log_summary(self) -> None:
        errors = self.summary()
        if errors:
            log.warning("stream skipped bad data: %s", ", ".join(f"{k}={v}" for k, v in errors.items()))
        else:
            log.info("stream read %d batches with no bad data", self._consumed)
