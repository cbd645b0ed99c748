"""The pretraining loop on a DeepSpeed engine: stream, views, objectives, checkpoints, probes,
publishing. One code path for one CPU process, torchrun, the deepspeed launcher and SLURM."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pretrain import distributed
from pretrain.augment import make_views, step_generator
from pretrain.checkpoint import Checkpointer, lock_run_dir_on_rank0
from pretrain.fatal import PeerFailures, end_after_fatal_error
from finetune.config import save_run_config
from pretrain.config import ConfigError, check_values, resume_view
from pretrain.model import ClipEncoder
from pretrain.objectives import PretrainModel, build_objectives, check_inputs, mines
from pretrain.provenance import Provenance
from shards.geometry import align_clips
from shards.manifest import Manifest
from shards.stream import STOP_SIGNALS, ClipStream, resize_frames
from shards.timing import Clock

log = logging.getLogger("pretrain")

# Signals that ask a run to stop early (shards.stream.STOP_SIGNALS, which the data workers
# block): SLURM's warning before a time limit or preemption
# (`--signal`), and the SIGTERM that schedulers and torchrun send before killing. The run saves a
# checkpoint at the next step boundary, agreed by every rank, and `python -m pretrain` exits
# with STOPPED_EXIT so that a launcher knows to requeue it; the next start resumes there.
STOPPED_EXIT = 75  # EX_TEMPFAIL: not finished, try again
_stop_requested: list[int] = []
_peers: PeerFailures | None = None  # this start's failure markers, once the run has its directory


def request_stop(signum: int = signal.SIGTERM, frame=None) -> None:
    """Ask the running `fit` to checkpoint and return at its next step boundary (a signal handler)."""
    _stop_requested.append(signum)


def install_stop_handlers() -> None:
    _stop_requested.clear()
    for sig in STOP_SIGNALS:
        try:
            signal.signal(sig, request_stop)
        except ValueError:  # not the main thread: the caller decides how to stop
            return


def lr_at(step: int, cfg, global_batch: int) -> float:
    """Linear warmup to the peak (scaled by the global batch), then cosine decay: step alone decides."""
    o = cfg.optim
    peak = o.lr * global_batch / o.lr_batch
    if step <= o.warmup_steps:
        return peak * step / max(1, o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.train.steps - o.warmup_steps))
    return peak * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: norms, biases and other vectors are left alone."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_config(cfg, cuda: bool) -> dict:
    bucket = int(cfg.deepspeed.bucket_mb * 1e6)
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.stage, "overlap_comm": cfg.deepspeed.overlap_comm and cuda,
                              "reduce_bucket_size": bucket, "allgather_bucket_size": bucket},  # fmt: skip
        # bf16 comes from torch.autocast in the step, not from DeepSpeed's bf16 mode, which would
        # cast the weights themselves (BatchNorm statistics stay fp32) and publish rounded weights.
        "bf16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }


def data_source(cfg, rank: int) -> str:
    """The clip shards to pretrain on: `data=shards`, or the synthetic set (rendered by rank 0
    into the cache while the others wait, then found there by all)."""
    if cfg.data.kind == "shards":
        return str(cfg.data.source)
    if cfg.data.kind != "synthetic":
        raise ValueError(f"pretraining reads clip shards (data=synthetic or data=shards), not data={cfg.data.kind}; "
                         "write the videos into shards first")  # fmt: skip
    if rank == 0:
        instantiate(cfg.data.synthetic)
    distributed.barrier()
    return str(instantiate(cfg.data.synthetic))


def build_encoder(cfg, image_size: int) -> ClipEncoder:
    torch.manual_seed(cfg.train.seed)  # every rank starts from the same weights
    m = cfg.model
    encoder = ClipEncoder(m.arch, m.embed_dim, m.temporal, image_size, m.drop_path, m.channels_last,
                          OmegaConf.to_container(m.args))  # fmt: skip
    if m.compile:
        encoder.backbone.compile()  # in place: the state dict keeps timm's keys
    return encoder


class Run:
    """Everything one rank holds for a run."""

    def __init__(self, cfg):
        import deepspeed

        self.cfg = cfg
        self.rank, self.world, self.device = distributed.init()
        # On a GPU the host runs ahead of the kernels: the clock waits for them so that each phase
        # is timed where it runs (a few synchronisations a step, for a true data-wait share).
        self._clock = Clock(cuda=self.device.type == "cuda")
        self.run_dir = Path(cfg.train.run_dir)
        lock_run_dir_on_rank0(self.run_dir, self.rank)  # before anything is rendered or written
        global _peers
        _peers = PeerFailures(self.run_dir, self.rank, self.world)
        self.source = data_source(cfg, self.rank)
        manifest = Manifest.load(self.source) if Path(self.source).exists() else None  # URLs: none
        self.provenance = Provenance.derive(cfg, self.source, manifest)
        # Aligned frames are warped from the decoded ones on the device (the landmarks are in
        # their pixels), so the workers do not resize them first.
        self.align = cfg.train.align
        steady = cfg.train.align_steady
        self.align_steady = self.provenance.steady_alignment if steady is None else steady
        try:
            self.stream = ClipStream(
                self.source, split=cfg.data.train_split, frames=cfg.data.frames, stride=cfg.data.stride,
                batch_size=cfg.train.batch_size, mode="resampled", seed=cfg.train.seed,
                num_workers=cfg.data.num_workers, slots=cfg.data.slots, resize=None if self.align else cfg.data.resize,
                rank=self.rank, world=self.world,
            )  # fmt: skip
        except ValueError as e:  # data and config that do not fit (frames, stride, splits): one line
            raise ConfigError(f"data: {e}") from None
        # what the objectives can read: landmarks reach them only through alignment
        carried = {"landmarks"} if self.align and self.stream.carries("landmarks") else set()
        check_inputs(cfg.objectives, carried, f"{self.source} (train.align={self.align})")
        self.probes = cfg.eval.enabled and self.stream.carries("au")
        if cfg.eval.enabled and not self.probes:
            log.warning("%s carries no AU labels: the AU probes are skipped", self.source)
        split = cfg.data.eval_split
        if self.probes and manifest and split and split not in manifest.splits:
            raise ConfigError(f"data.eval_split={split}: {self.source} has the splits {sorted(manifest.splits)}; "
                              "build with --heldout above 0 for probes on unseen people, or set data.eval_split=null")  # fmt: skip
        encoder = build_encoder(cfg, self.provenance.image_size)
        self.mean, self.std = encoder.backbone.pretrained_cfg["mean"], encoder.backbone.pretrained_cfg["std"]
        objectives, weights = build_objectives(OmegaConf.to_container(cfg.objectives, resolve=True), cfg.model.embed_dim,
                                               encoder.num_features, encoder.patch_size)  # fmt: skip
        bank = None
        if mines(objectives):
            from pretrain.bank import MemoryBank

            bank = MemoryBank.from_config(OmegaConf.to_object(cfg.mining), cfg.model.embed_dim, self.device)
        # Inputs go channels-last (ClipEncoder); weights stay contiguous, as DeepSpeed's
        # broadcasts and ZeRO's flat buffers need.
        model = PretrainModel(encoder, objectives, weights, bank).to(self.device)
        model.clock = self._clock
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=0.0,
                                           betas=tuple(cfg.optim.betas))  # fmt: skip
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=self.optimizer, config=deepspeed_config(cfg, self.device.type == "cuda")
        )
        self.global_batch = cfg.train.batch_size * self.world * cfg.optim.grad_accum
        # One rule for resuming: the config entries, and what the stream's position depends on
        # (its worker count, the world size, the shards: the same on every rank but the rank).
        stream = {f"stream.{k}": v for k, v in self.stream.fingerprint().items() if k != "rank"}
        self.ckpt = Checkpointer(self.run_dir, cfg.train.keep, self.rank, {**resume_view(cfg), **stream},
                                 provenance=self.provenance.to_dict())  # fmt: skip
        self.step, self.samples = 0, 0
        state = self.ckpt.resume(self.engine)
        if self.rank == 0:  # the directory is this run's (locked, and any checkpoint its own)
            save_run_config(cfg, self.run_dir)
        if state is not None:
            self.step, self.samples = state["step"], state["samples"]
            self.stream.load_state_dict(state["stream"])
            if model.bank is not None:  # restored, not rebuilt: the run mines as it would have
                model.bank.load_state_dict(self.ckpt.load_shared("bank"))
        self.metrics_path = self.run_dir / "metrics.jsonl"

    @property
    def model(self) -> PretrainModel:
        return self.engine.module

    def rank_state(self) -> dict:
        return {"step": self.step, "samples": self.samples, "stream": self.stream.state_dict()}

    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns losses and timings."""
        cfg = self.cfg
        times = {"data": 0.0, "views": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        bf16 = self.device.type == "cuda" and cfg.deepspeed.bf16
        lr = lr_at(self.step + 1, cfg, self.global_batch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logged: dict[str, float] = {}
        for micro in range(cfg.optim.grad_accum):
            marks = [self._clock()]
            batch = next(batches).to(self.device)
            marks.append(self._clock())
            g = step_generator(cfg.train.seed, self.step + 1, self.rank, micro, self.device)
            frames, landmarks = batch.frames, None
            if self.align and batch.landmarks is not None:
                frames, landmarks = align_clips(batch.frames, batch.landmarks, self.provenance.image_size,
                                                self.align_steady)  # fmt: skip
            elif self.align and frames.shape[-1] != self.provenance.image_size:  # shards without landmarks
                frames = resize_frames(frames, self.provenance.image_size)
            views = make_views(frames, batch.frame_index, self.mean, self.std, g, self.provenance.view_length, cfg.train.augment,
                               cfg.train.frame_jitter, cfg.train.augment_strength, landmarks)  # fmt: skip
            marks.append(self._clock())
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                total, losses = self.engine(views, batch, generator=g)  # PretrainModel.forward: encode, mine, score
            marks.append(self._clock())
            self.engine.backward(total)
            marks.append(self._clock())
            self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            marks.append(self._clock())
            for key, start, end in zip(times, marks, marks[1:]):
                times[key] += end - start
            for name, seconds in self.model.times.items():  # within the forward
                times[f"objective:{name}"] = times.get(f"objective:{name}", 0.0) + seconds
            for name, value in {"loss": total, **losses}.items():
                logged[name] = logged.get(name, 0.0) + float(value.detach()) / cfg.optim.grad_accum
            self.samples += len(batch) * self.world
        self.step += 1
        return {**logged, "lr": lr, **{f"time/{k}": v for k, v in times.items()}}

    def save(self) -> None:
        bank = self.model.bank
        self.ckpt.save(self.engine, self.step, self.rank_state(), shared={"bank": bank.state_dict()} if bank else None)

    def evaluate(self) -> dict[str, float]:
        """Probes on rank 0 (the labelled evaluation sets are small); every rank waits."""
        from pretrain.evaluate import probe_encoder

        results = {}
        if self.rank == 0 and self.probes:
            results = probe_encoder(self.model.encoder, self.cfg, self.source, self.provenance.image_size, self.mean,
                                    self.std, self.device)  # fmt: skip
        distributed.barrier()
        return results

    def log(self, record: dict, writer) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": self.step, **record}) + "\n")
        if writer is not None:
            for key, value in record.items():
                writer.add_scalar(key, value, self.step)


def publish(run: Run, results: dict) -> Path:
    """The final weights into RUN_DIR/published/NAME (card and index entry included), replacing
    an earlier publication of this run."""
    from pretrain.publish import auforge_block, backbone_config, backbone_state, publish_backbone

    bank = run.model.bank
    objectives = OmegaConf.to_container(run.cfg.objectives, resolve=True)
    auforge = auforge_block(objectives, run.provenance, run.step, run.samples, results,
                            identity_source=bank.identity_source if bank else None)  # fmt: skip
    config = backbone_config(run.model.encoder, run.provenance.image_size, run.mean, run.std, auforge)
    state = backbone_state(run.model.encoder.backbone)
    return publish_backbone(run.run_dir / "published", run.cfg.train.publish_name, state, config, overwrite=True)


def fit(cfg) -> dict:
    """Train to `train.steps` (resuming from the run directory), then probe and publish. A fatal
    error ends the data workers too, so that the process exits with it."""
    check_values(cfg)
    try:
        return _fit(cfg)
    except BaseException as e:
        if _peers is not None:  # the peers, blocked in a collective, end on seeing it
            _peers.report(e)
        end_after_fatal_error()
        raise


def _fit(cfg) -> dict:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    run = Run(cfg)
    lead = run.rank == 0
    writer = SummaryWriter(str(run.run_dir / "tb")) if lead else None
    bar = tqdm(total=cfg.train.steps, initial=run.step, disable=not lead, dynamic_ncols=True, desc="pretrain")
    batches = iter(run.stream)
    install_stop_handlers()
    first_step, started = run.step, time.perf_counter()
    while run.step < cfg.train.steps:
        t0 = time.perf_counter()
        record = run.train_step(batches)
        wall = time.perf_counter() - t0
        record["throughput/clips_per_s"] = run.global_batch / wall
        record["time/data_share"] = record["time/data"] / wall
        run.log(record, writer)
        if run.step % cfg.train.log_every == 0 or run.step == cfg.train.steps:
            shown = distributed.all_reduce_mean({k: v for k, v in record.items() if "/" not in k}, run.device)
            bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown.items() if k != "lr"},
                             "clips/s": f"{record['throughput/clips_per_s']:.0f}",
                             "data": f"{record['time/data_share']:.0%}"})  # fmt: skip
        bar.update(1)
        saved = run.step % cfg.train.ckpt_every == 0 or run.step == cfg.train.steps
        if saved:
            run.save()
        if cfg.train.eval_every and run.step % cfg.train.eval_every == 0 and run.step < cfg.train.steps:
            run.log(run.evaluate(), writer)
        if distributed.any_rank(bool(_stop_requested), run.device) and run.step < cfg.train.steps:
            if not saved:
                run.save()
            bar.close()
            log.warning("stop requested (signal %s): saved step %d of %d; starting again resumes there",
                        _stop_requested[0] if _stop_requested else "on another rank", run.step, cfg.train.steps)
            return {"stopped_at": run.step}
    bar.close()
    timing = {"train_s": time.perf_counter() - started, "steps": run.step - first_step}
    run.stream.log_summary()
    started = time.perf_counter()
    results = run.evaluate()
    if lead and results and cfg.eval.random_baseline:
        from pretrain.evaluate import probe_encoder

        baseline = build_encoder(cfg, run.provenance.image_size).to(run.device)
        results.update({f"random_init/{k.split('/', 1)[1]}": v for k, v in
                        probe_encoder(baseline, cfg, run.source, run.provenance.image_size, run.mean, run.std,
                                      run.device).items()})  # fmt: skip
    run.log(results, writer)
    if lead:
        folder = publish(run, results)
        timing["probes_s"] = time.perf_counter() - started
        print(summary(run, results, folder, timing), flush=True)
        writer.close()
    distributed.barrier()
    return results


def summary(run: Run, r: dict, folder: Path, timing: dict) -> str:
    rate = timing["steps"] / max(timing["train_s"], 1e-9)
    lines = [f"pretrained {run.cfg.model.arch} for {run.step} steps ({run.samples} clips); published {folder}",
             f"this start trained {timing['steps']} steps in {timing['train_s']:.0f}s ({rate:.2f} steps/s), then probed "
             f"and published in {timing['probes_s']:.0f}s"]  # fmt: skip
    if r:
        lines.append("probes on held-out identities      pretrained   random init")
        fraction = f"{run.cfg.eval.label_fraction:.0%} labels"
        for key, label in (("linear_f1", f"AU linear probe, {fraction} (F1)"), ("knn_f1", "AU kNN-probe mean F1"),
                           ("identity_acc", "identity from AU embedding (acc)")):  # fmt: skip
            lines.append(f"  {label:<33} {r.get('probe/' + key, float('nan')):10.3f} {r.get('random_init/' + key, float('nan')):12.3f}")
        lines.append(f"  identity chance level             {r['probe/identity_chance']:10.3f}")
        for who in ("probe", "random_init"):  # the linear probe's draws of labelled frames
            draws = [f"{r[f'{who}/linear_f1_seed{seed}']:.3f}" for seed in run.cfg.eval.label_seeds
                     if f"{who}/linear_f1_seed{seed}" in r]  # fmt: skip
            if draws:
                lines.append(f"  linear probe per draw, {'pretrained' if who == 'probe' else 'random init'}: {' '.join(draws)}")
        keys = [f"linear_f1_seed{seed}" for seed in run.cfg.eval.label_seeds]
        if all(f"{who}/{k}" in r for who in ("probe", "random_init") for k in keys):
            gains = " ".join(f"{r[f'probe/{k}'] - r[f'random_init/{k}']:+.3f}" for k in keys)
            lines.append(f"  gain per draw over random init:    {gains}")
    return "\n".join(lines)
