"""`python -m pretrain.bench`: what one pretraining step costs, against a bare timm step.

In one process, on the CPU (and on the GPU when there is one, in bf16 autocast):

* the full step: a real `pretrain.train.Run` built from the composed Hydra config (DeepSpeed
  engine, streaming reader on a small synthetic set, views, encoder, objectives), timed by
  `Run.train_step` and split into data wait, views (windows and augmentation), forward, objectives,
  backward and optimizer;
* the baseline: `timm.create_model(arch)` forward + backward + AdamW on the same number of
  frames (2 views x B clips x L frames, channels-last input) and image size;
* the overhead of the full step over the baseline, without the data wait (which the loader
  hides when it keeps up) and with it;
* memory: host RSS, the GPU's peak allocation, and a split into weights, gradients, optimizer
  state and activations; model FLOPs per frame and, on a GPU, model FLOP utilisation (MFU).

Full and baseline steps alternate, and medians are reported, so that a busy machine slows both
alike. On a GPU every timed region is bracketed by `torch.cuda.synchronize()`.

`--mining` times the memory bank instead (`bench_mining`): per bank size, FAISS exact search
against torch matmul + top-k in the same run, the IVF index's search time, training time and
recall@k against exact, a full mining step (add the global batch, mine positives and negatives)
and its share of the baseline training step, and the bank's bytes per entry.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "views", "forward", "objectives", "backward", "optimizer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", help="timm architecture (model.arch)")
    p.add_argument("--size", type=int, default=56, help="frame side in pixels (data.resize)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (data.frames); views take 3/4 of them")
    p.add_argument("--batch", type=int, default=16, help="clips per step (train.batch_size)")
    p.add_argument("--steps", type=int, default=20, help="measured steps of each kind")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps of each kind first")
    p.add_argument("--objectives", default="temporal",
                   help="an objective config group (configs/objective/NAME.yaml) or comma-separated objective names")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the config's)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--clips", type=int, default=64, help="clips in the synthetic set")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the accelerator's peak TFLOP/s for MFU (default: H100 SXM bf16 dense)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--stages", action="store_true",
                   help="compare ZeRO stages 0, 1 and 2 instead (run under torchrun with 2 or more ranks)")
    p.add_argument("--mining", action="store_true", help="time memory-bank mining instead (FAISS against torch)")
    p.add_argument("--bank-sizes", default="",
                   help="--mining: comma-separated bank sizes (default 16384,65536,262144, and 1M, 10M on a GPU)")
    p.add_argument("--default-bank", type=int, default=16384,
                   help="--mining: the bank size the 10%% target is for (MiningConfig.capacity)")
    p.add_argument("--dim", type=int, default=128, help="--mining: embedding dimension (model.embed_dim)")
    p.add_argument("--k", type=int, default=8, help="--mining: cross-identity positives per anchor")
    p.add_argument("--negatives", type=int, default=4, help="--mining: identity-hard negatives per anchor")
    p.add_argument("--nprobe", type=int, default=32, help="--mining: IVF lists searched per query")
    p.add_argument("--faiss-threads", type=int, default=1, help="--mining: FAISS OpenMP threads (0: torch's count)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- config


def compose_config(args, run_dir: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from pretrain.config import register
    from pretrain.objectives import OBJECTIVES

    register()
    groups = {f.stem for f in (ROOT / "configs" / "objective").glob("*.yaml")}
    names = None if args.objectives in groups else [n.strip() for n in args.objectives.split(",") if n.strip()]
    overrides = [
        f"model.arch={args.arch}", f"data.resize={args.size}", f"data.frames={args.frames}",
        f"train.batch_size={args.batch}", f"train.run_dir={run_dir}", "train.steps=100000", "eval.enabled=false",
        f"data.synthetic.clips={args.clips}", "data.synthetic.identities=8", "data.synthetic.shard_samples=16",
        f"data.synthetic.size={args.size}",
    ]  # fmt: skip
    if names is None:
        overrides.append(f"objective={args.objectives}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="pretrain", overrides=overrides)
        span = (args.frames - 1) * cfg.data.stride + 1
        cfg = compose(config_name="pretrain", overrides=[*overrides, f"data.synthetic.frames={max(16, span)}",
                                                         *args.override])  # fmt: skip
    if names is not None:
        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown or not names:
            raise SystemExit(f"--objectives: unknown {unknown or names}; "
                             f"groups {sorted(groups)}, names {sorted(OBJECTIVES)}")
        with open_dict(cfg):
            chosen = {n: cfg.objectives[n] if n in cfg.objectives else {} for n in names}
            cfg.objectives = chosen
    return cfg


# ---------------------------------------------------------------------------------- timing


class Clock:
    """Wall time; on a GPU, synchronised first so that queued kernels are counted."""

    def __init__(self, cuda: bool):
        import torch

        self.sync = torch.cuda.synchronize if cuda else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def make_baseline(arch: str, size: int, frames: int, device, cuda: bool):
    """A bare timm step on `frames` images: forward, backward, AdamW; returns step()."""
    import timm
    import torch

    from pretrain.model import backbone_args

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **backbone_args(arch, size)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(frames, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def step(clock=None) -> dict:
        clock = clock or time.perf_counter
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(x).float().square().mean()
        t1 = clock()
        loss.backward()
        t2 = clock()
        opt.step()
        t3 = clock()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "wall": t3 - t0}

    return model, opt, step


# ---------------------------------------------------------------------------------- memory


def _storage_key(t):
    try:
        s = t.untyped_storage()
        return (s.device.type, s.data_ptr()), s.nbytes()
    except (RuntimeError, NotImplementedError):  # opaque tensors (mkldnn): count the tensor
        return ("id", id(t)), t.numel() * t.element_size()


def param_bytes(model) -> tuple[int, int]:
    """(bytes of all parameters, bytes of the trainable ones' gradients)."""
    params = list(model.parameters())
    return (sum(p.numel() * p.element_size() for p in params),
            sum(p.numel() * p.element_size() for p in params if p.requires_grad))  # fmt: skip


def optimizer_bytes(optimizer, model) -> int:
    """Bytes of tensors that the optimizer (and a DeepSpeed mixed-precision wrapper) holds besides
    the model's own parameters and gradients: moments, step counts, fp32 master weights, flat
    gradient buffers."""
    import torch

    seen = set()
    for p in model.parameters():
        seen.add(_storage_key(p)[0])
        if p.grad is not None:
            seen.add(_storage_key(p.grad)[0])
    total = 0

    def walk(obj, depth: int):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            key, nbytes = _storage_key(obj)
            if key not in seen:
                seen.add(key)
                total += nbytes
        elif depth > 0 and isinstance(obj, dict):
            for value in obj.values():
                walk(value, depth - 1)
        elif depth > 0 and isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value, depth - 1)

    layer, layers = optimizer, []
    while layer is not None and layer not in layers:
        layers.append(layer)
        layer = getattr(layer, "optimizer", None)
    for layer in layers:
        if isinstance(layer, torch.optim.Optimizer):
            walk(dict(layer.state), 3)
            walk([g["params"] for g in layer.param_groups], 2)  # master copies, if not the model's
        else:  # a wrapper: its flat buffers and fp32 copies
            walk({k: v for k, v in vars(layer).items() if k != "optimizer"}, 3)
    return total


@contextlib.contextmanager
def saved_for_backward(exclude):
    """Bytes of the distinct storages autograd saves for backward (activations), leaving out
    `exclude` (the parameters)."""
    import torch

    skip = {_storage_key(t)[0] for t in exclude}
    sizes: dict = {}

    def pack(t):
        key, nbytes = _storage_key(t)
        if key not in skip:
            sizes[key] = max(nbytes, sizes.get(key, 0))
        return t

    box = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box
    box["bytes"] = sum(sizes.values())


def backbone_flops(arch: str, size: int) -> float:
    """Forward FLOPs of the backbone for one frame (FlopCounterMode: 2 per multiply-add)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.model import backbone_args

    model = timm.create_model(arch, pretrained=False, num_classes=0, **backbone_args(arch, size)).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------- report


def mib(n: float) -> str:
    return f"{n / 2**20:9.1f} MiB"


def med(values) -> float:
    return statistics.median(values) if values else float("nan")


def compare_stages(args) -> dict:
    """Step time of ZeRO stages 0, 1 and 2 on the same model and data, engines alternating step by
    step in one process group; rank 0 prints medians and the ratio to stage 0."""
    import torch.distributed as dist

    from pretrain.train import Run

    runs, times = {}, {}
    for stage in (0, 1, 2):
        run_dir = tempfile.mkdtemp(prefix=f"auforge-bench-zero{stage}-")
        args_s = argparse.Namespace(**{**vars(args), "override": [*args.override, f"deepspeed=zero{stage}"]})
        run = Run(compose_config(args_s, run_dir))
        runs[stage], times[stage] = (run, iter(run.stream)), []
    try:
        for i in range(args.warmup + args.steps):
            for stage, (run, batches) in runs.items():
                record = run.train_step(batches)
                if i >= args.warmup:
                    times[stage].append(sum(v for k, v in record.items() if k.startswith("time/") and k != "time/data"))
        rank, world = dist.get_rank(), dist.get_world_size()
        base = med(times[0])
        if rank == 0:
            print(f"ZeRO stages, {args.arch} at {args.size} px, {world} ranks x {args.batch} clips, "
                  f"median of {args.steps} steps (data wait excluded):")  # fmt: skip
            for stage in runs:
                t = med(times[stage])
                clips = args.batch * world / t
                print(f"  stage {stage}: {t * 1e3:8.1f} ms/step  {clips:7.1f} clips/s  {t / base:6.3f} x stage 0")
        return {stage: med(t) for stage, t in times.items()}
    finally:
        for run, batches in runs.values():
            batches.close()
            shutil.rmtree(run.run_dir, ignore_errors=True)


def synthetic_embeddings(n: int, dim: int, gen, device, states: int = 512, identities: int = 2000):
    """Unit embeddings clustered by AU state, each shifted towards its identity's direction (the
    identity bias that cross-identity mining works against); returns (rows, identity ids)."""
    import torch

    g = torch.Generator().manual_seed(12345)  # the same states and identities in every call
    centres, people = torch.randn(states, dim, generator=g), torch.randn(identities, dim, generator=g)
    s, who = torch.randint(0, states, (n,), generator=gen), torch.randint(0, identities, (n,), generator=gen)
    rows = centres[s] + 0.5 * people[who] + 0.5 * torch.randn(n, dim, generator=gen)
    return torch.nn.functional.normalize(rows, dim=1).to(device), who.to(device)


def bench_mining(args) -> dict:
    """Mining one global batch against a bank of each size; see the module docstring."""
    import torch  # before faiss (see pretrain.mining)

    import faiss  # isort: skip

    from pretrain.bank import MemoryBank
    from pretrain.mining import IVFSearch, default_nlist, faiss_has_gpu, torch_search

    if args.threads:
        torch.set_num_threads(args.threads)
    faiss_threads = args.faiss_threads or torch.get_num_threads()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    clock = Clock(cuda)
    length = max(2, args.frames * 3 // 4)  # as pretrain.train.Run.view_length
    anchors = 2 * args.batch * length
    sizes = [int(float(x)) for x in args.bank_sizes.split(",") if x] or (
        [16384, 65536, 262144] + ([1_000_000, 10_000_000] if cuda else []))  # fmt: skip

    def timed(fn, reps=args.steps) -> float:
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return med(times)

    _, _, base_step = make_baseline(args.arch, args.size, anchors, device, cuda)
    step = timed(lambda: base_step(clock))
    where = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"mining bench on {where}, FAISS {faiss.__version__} ({'GPU' if faiss_has_gpu() else 'CPU'} build,"
          f" {faiss_threads} threads)\n"
          f"  global batch: {args.batch} clips x 2 views x {length} frames = {anchors} anchors, dim {args.dim},"
          f" k={args.k} positives + {args.negatives} negatives; medians of {args.steps} runs\n"
          f"  training step: bare timm {args.arch} forward + backward + AdamW on {anchors} frames at {args.size} px:"
          f" {step * 1e3:.1f} ms\n", flush=True)  # fmt: skip
    head = (f"{'bank':>10} {'exact FAISS':>12} {'torch':>10} {'IVF':>10} {'recall@' + str(3 * args.k):>10}"
            f" {'IVF train':>10} {'mine+add':>10} {'share':>7}  index")  # fmt: skip
    print(head, flush=True)
    gen = torch.Generator().manual_seed(0)
    results = {}
    for n in sizes:
        bank = MemoryBank(n, args.dim, device, index="flat", threads=args.faiss_threads)
        for start in range(0, n, 1 << 18):
            rows, who = synthetic_embeddings(min(1 << 18, n - start), args.dim, gen, device)
            bank.add(rows, who, clip=torch.arange(rows.shape[0], device=device) + start)
        q, qid = synthetic_embeddings(anchors, args.dim, gen, device)
        qclip = torch.arange(anchors, device=device) // length  # frames of one clip share its id
        width = 3 * args.k  # the first search of mining asks for k + margin = 3k
        exact = timed(lambda: bank.search(q, width, exact=True))
        brute = timed(lambda: torch_search(q, bank.emb[: bank.count], width))
        ivf = IVFSearch(args.dim, default_nlist(n), args.nprobe, threads=args.faiss_threads)
        t0 = clock()
        ivf.train(bank.emb, bank.count, 0)
        train = clock() - t0
        approx = timed(lambda: ivf.search(q, width))
        _, want = bank.search(q, width, exact=True)
        _, got = ivf.search(q, width)
        recall = sum(len(set(a) & set(e)) for a, e in zip(got.tolist(), want.tolist())) / want.numel()
        use_ivf = n >= 1_000_000  # MiningConfig.approx_from: the index a run of this size mines with
        if use_ivf:
            bank.ivf = ivf

        batches = [synthetic_embeddings(anchors, args.dim, gen, device) for _ in range(args.warmup + args.steps)]

        def mine_step():  # a step's work: mine for a fresh global batch, then add it
            rows, who = batches.pop()
            bank.mine(rows, who, args.k, clip=qclip, negatives=args.negatives)
            bank.add(rows, who, clip=qclip)

        mine = timed(mine_step)
        results[n] = {"exact_s": exact, "torch_s": brute, "ivf_s": approx, "ivf_recall": recall, "ivf_train_s": train,
                      "mine_s": mine, "share": mine / step, "index": "ivf" if use_ivf else "flat",
                      "ivf_bytes_per_entry": ivf.index.code_size + 8}  # fmt: skip
        print(f"{n:>10} {exact * 1e3:9.1f} ms {brute * 1e3:7.1f} ms {approx * 1e3:7.1f} ms {recall:10.3f}"
              f" {train:8.2f} s {mine * 1e3:7.1f} ms {mine / step:7.1%}  {'IVF' if use_ivf else 'exact'}"
              f" (IVF{ivf.nlist},Flat nprobe {args.nprobe})", flush=True)  # fmt: skip
        bank = ivf = None  # free this size before the next
    bank_bytes = 4 * args.dim + 3 * 8
    share = results.get(args.default_bank, {}).get("share")
    print(f"\nmemory per entry: the bank {bank_bytes} B (4 x {args.dim} fp32 + identity, video, clip int64); exact"
          f" search reads it in place (a CUDA bank with CPU-only FAISS keeps a host mirror: +{4 * args.dim} B of"
          f" host memory).\n  IVF,Flat adds {4 * args.dim + 8} B (its own copy of the vector + an int64 id), IVF,SQ8"
          f" {args.dim + 8} B, each plus about 16 B for the id hash table and nlist x {4 * args.dim} B of centroids.\n"
          f"  times: search of {width} neighbours for {anchors} anchors; mine+add = mine positives and"
          f" negatives for a fresh global batch, then add it (the exact index below 1M entries, IVF from 1M); share = mine+add / training step")  # fmt: skip
    if share is not None:
        print(f"target: mining under 10% of the step at the default bank ({args.default_bank}): {share:.1%},"
              f" {'met' if share < 0.10 else 'NOT met'}")  # fmt: skip
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.stages:
        return compare_stages(args)
    if args.mining:
        return bench_mining(args)
    import psutil
    import torch

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    run_dir = tempfile.mkdtemp(prefix="auforge-bench-")
    batches = None
    try:
        cfg = compose_config(args, run_dir)
        from pretrain.train import Run

        run = Run(cfg)
        cuda = run.device.type == "cuda"
        clock = Clock(cuda)
        n_frames = 2 * cfg.train.batch_size * run.view_length
        base_model, base_opt, base_step = make_baseline(cfg.model.arch, run.image_size, n_frames, run.device, cuda)
        batches = iter(run.stream)
        full, base = [], []

        def full_step() -> dict:
            # train_step times its own phases (synchronising on a GPU), views included
            t0 = clock()
            record = run.train_step(batches)
            record["wall"] = clock() - t0
            return record

        def base_step_timed() -> dict:
            return base_step(clock)

        for _ in range(args.warmup):
            full_step(), base_step_timed()
        for i in range(args.steps):  # alternate, and swap the order each round
            if i % 2:
                base.append(base_step_timed())
                full.append(full_step())
            else:
                full.append(full_step())
                base.append(base_step_timed())
        # memory: activations saved for backward, and the GPU's peak in one step of each
        mem = {}
        for name, fn, model in (("full", full_step, run.model), ("baseline", base_step, base_model)):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            with saved_for_backward(list(model.parameters())) as saved:
                fn()
            mem[name] = {"saved": saved["bytes"]}
            if cuda:
                torch.cuda.synchronize()
                mem[name].update(before=before, peak=torch.cuda.max_memory_allocated())
        flops_frame = backbone_flops(cfg.model.arch, run.image_size)
        results = report(args, cfg, run, full, base, mem, flops_frame, n_frames, base_model, base_opt, proc, rss_start)
    finally:
        if batches is not None:
            batches.close()  # stops the loader's workers
        shutil.rmtree(run_dir, ignore_errors=True)
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return results


def report(args, cfg, run, full, base, mem, flops_frame, n_frames, base_model, base_opt, proc, rss_start) -> dict:
    import psutil
    import torch

    cuda = run.device.type == "cuda"
    b, length = cfg.train.batch_size, run.view_length
    device = torch.cuda.get_device_name(run.device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    objectives = " + ".join(f"{w:g} x {n}" for n, w in run.model.weights.items())
    wall = med([r["wall"] for r in full])
    compute = med([r["wall"] - r["time/data"] for r in full])
    baseline = med([r["wall"] for r in base])
    lines = [
        f"pretrain bench: {cfg.model.arch} at {run.image_size} px on {device}{', bf16 autocast' if cuda else ', fp32'}",
        f"  step: {b} clips x 2 views x {length} frames = {n_frames} frames; objectives {objectives}",
        f"  {args.steps} measured steps of each kind after {args.warmup} warm-up, full and baseline alternating;"
        " medians",
        "",
        f"                                      {'full step':>12} {'share':>7}   {'baseline':>12} {'share':>7}",
        f"step time                             {wall * 1e3:9.1f} ms {1:7.1%}   {baseline * 1e3:9.1f} ms {1:7.1%}",
    ]
    for phase in PHASES:
        t = med([r[f"time/{phase}"] for r in full])
        row = f"  {phase:<36}{t * 1e3:9.1f} ms {t / wall:7.1%}"
        if phase in base[0]:
            tb = med([r[phase] for r in base])
            row += f"   {tb * 1e3:9.1f} ms {tb / baseline:7.1%}"
        lines.append(row)
    lines += [
        "  (medians of each phase on its own: they need not add up to the step's median)",
        f"throughput                            {b / wall:8.2f} clips/s    {b / baseline:8.2f} clips/s"
        f"   (full step without data wait: {b / compute:.2f} clips/s)",
        f"baseline: bare timm {cfg.model.arch} forward + backward + AdamW on {n_frames} channels-last frames",
        f"overhead without data wait            {compute / baseline:9.3f} x   (target <= 1.15 on the CPU:"
        f" {'met' if compute / baseline <= 1.15 else 'NOT met'})",
        f"overhead with data wait               {wall / baseline:9.3f} x",
    ]
    # memory
    weights, grads = param_bytes(run.model)
    opt_state = optimizer_bytes(run.optimizer, run.model)
    b_weights, b_grads = param_bytes(base_model)
    b_opt = optimizer_bytes(base_opt, base_model)
    workers = 0  # unique set size: pages a worker shares with the trainer (fork) are not counted twice
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            workers += child.memory_full_info().uss
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lines += [
        "",
        f"memory                                {'full step':>13} {'baseline':>13}",
        f"  weights                             {mib(weights):>13} {mib(b_weights):>13}",
        f"  gradients                           {mib(grads):>13} {mib(b_grads):>13}",
        f"  optimizer state                     {mib(opt_state):>13} {mib(b_opt):>13}",
        f"  saved for backward (activations)    {mib(mem['full']['saved']):>13} {mib(mem['baseline']['saved']):>13}",
    ]
    if cuda:
        for key, label in (("peak", "GPU peak allocated in one step"),):
            lines.append(f"  {label:<35} {mib(mem['full'][key]):>13} {mib(mem['baseline'][key]):>13}")
        act = {k: mem[k]["peak"] - mem[k]["before"] for k in ("full", "baseline")}
        act["full"] -= grads if all(p.grad is None for p in run.model.parameters()) else 0
        act["baseline"] -= b_grads
        lines.append(f"  activations ~ peak - resident - grads {mib(act['full']):>11} {mib(act['baseline']):>13}"
                     "   (approximate: includes temporaries and workspace)")  # fmt: skip
    lines.append(f"host RSS: now {mib(proc.memory_info().rss).strip()}, process peak {mib(peak_rss).strip()},"
                 f" at start {mib(rss_start).strip()} (both models share this process);"
                 f" data workers {mib(workers).strip()} (USS)")  # fmt: skip
    if not cuda:
        rest = weights + grads + opt_state + b_weights + b_grads + b_opt
        lines.append("  activations ~ peak RSS - RSS at start - weights, gradients, optimizer state of both models:"
                     f" {mib(peak_rss - rss_start - rest).strip()}")  # fmt: skip
    lines.append("  (activations are approximate: peak-based figures also hold temporaries, allocator caches and,"
                 " on the host, libraries loaded after start; 'saved for backward' counts the distinct tensors"
                 " autograd keeps for backward, without temporaries)")  # fmt: skip
    # FLOPs
    step_flops = 3 * flops_frame * n_frames  # forward + backward (about twice the forward)
    lines += [
        "",
        f"backbone FLOPs: {flops_frame / 1e9:.3f} GFLOP per frame forward (FlopCounterMode); "
        f"{step_flops / 1e12:.3f} TFLOP per step (x3 for forward + backward)",
        f"  achieved: full step {step_flops / compute / 1e12:.3f} TFLOP/s without data wait,"
        f" baseline {step_flops / baseline / 1e12:.3f} TFLOP/s",
    ]
    if cuda:
        peak = args.peak_tflops * 1e12
        lines.append(f"  MFU (peak {args.peak_tflops:g} TFLOP/s): full step {step_flops / wall / peak:.2%}"
                     f" ({step_flops / compute / peak:.2%} without data wait),"
                     f" baseline {step_flops / baseline / peak:.2%}")  # fmt: skip
    print("\n".join(lines), flush=True)
    return {"full_s": wall, "full_compute_s": compute, "baseline_s": baseline, "overhead": compute / baseline,
            "overhead_with_data": wall / baseline, "flops_per_frame": flops_frame}  # fmt: skip


if __name__ == "__main__":
    main()
