"""`python -m pretrain.bench [step]`: what one pretraining step costs, against a bare timm step.

In one process, on the CPU (and on the GPU when there is one, in bf16 autocast):

* the full step: a real `pretrain.train.Run` built from the composed Hydra config (DeepSpeed
  engine, streaming reader on a small synthetic set, views, encoder, objectives), timed by
  `Run.train_step` and split into its phases: data wait, views (windows and augmentation), forward
  (the encoder and the objectives: `PretrainModel`'s one forward), backward and optimizer;
* the baseline: `timm.create_model(arch)` forward + backward + AdamW on the same number of
  frames (2 views x B clips x L frames, channels-last input) and image size;
* the overhead of the full step over the baseline, without the data wait (which the loader
  hides when it keeps up) and with it;
* memory: host RSS, the GPU's peak allocation, and a split into weights, gradients, optimizer
  state and activations; model FLOPs per frame and, on a GPU, model FLOP utilisation (MFU).

Full and baseline steps alternate, and medians are reported, so that a busy machine slows both
alike. On a GPU every timed region is bracketed by `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import tempfile
import time

from pretrain.bench.config import add_run_flags, add_shape_flags, compose
from shards.timing import Clock, alternate, median, mib, peak_rss


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_shape_flags(p)
    add_run_flags(p)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the accelerator's peak TFLOP/s for MFU (default: H100 SXM bf16 dense)")  # fmt: skip


def make_baseline(arch: str, size: int, frames: int, device, cuda: bool):
    """A bare timm step on `frames` images: forward, backward, AdamW; returns (model, optimizer, step),
    step(clock) timing its phases."""
    import timm
    import torch

    from finetune.backbone import backbone_args

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

    from finetune.backbone import backbone_args

    model = timm.create_model(arch, pretrained=False, num_classes=0, **backbone_args(arch, size)).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------- the benchmark


def main(args: argparse.Namespace) -> dict:
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
        cfg = compose(args, run_dir)
        from pretrain.train import Run

        run = Run(cfg)
        cuda = run.device.type == "cuda"
        clock = Clock(cuda)
        n_frames = 2 * cfg.train.batch_size * run.provenance.view_length
        base_model, base_opt, base_step = make_baseline(cfg.model.arch, run.provenance.image_size, n_frames,
                                                        run.device, cuda)  # fmt: skip
        batches = iter(run.stream)

        def full_step() -> dict:
            # train_step times its own phases (synchronising on a GPU), views included
            t0 = clock()
            record = run.train_step(batches)
            record["wall"] = clock() - t0
            return record

        full, base = alternate(full_step, lambda: base_step(clock), args.steps, args.warmup)
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
        flops_frame = backbone_flops(cfg.model.arch, run.provenance.image_size)
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
    b, length, size = cfg.train.batch_size, run.provenance.view_length, run.provenance.image_size
    device = torch.cuda.get_device_name(run.device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    objectives = " + ".join(f"{w:g} x {n}" for n, w in run.model.weights.items())
    wall = median([r["wall"] for r in full])
    compute = median([r["wall"] - r["time/data"] for r in full])
    baseline = median([r["wall"] for r in base])
    lines = [
        f"pretrain bench: {cfg.model.arch} at {size} px on {device}{', bf16 autocast' if cuda else ', fp32'}",
        f"  step: {b} clips x 2 views x {length} frames = {n_frames} frames; objectives {objectives}",
        f"  {args.steps} measured steps of each kind after {args.warmup} warm-up, full and baseline alternating;"
        " medians",
        "",
        f"                                      {'full step':>12} {'share':>7}   {'baseline':>12} {'share':>7}",
        f"step time                             {wall * 1e3:9.1f} ms {1:7.1%}   {baseline * 1e3:9.1f} ms {1:7.1%}",
    ]
    for phase in [k.removeprefix("time/") for k in full[0] if k.startswith("time/")]:  # as train_step times them
        t = median([r[f"time/{phase}"] for r in full])
        label = f"{phase.split(':')[1]} (in forward)" if phase.startswith("objective:") else phase
        row = f"  {label:<36}{t * 1e3:9.1f} ms {t / wall:7.1%}"
        if phase in base[0]:
            tb = median([r[phase] for r in base])
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
    peak = peak_rss()
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
    lines.append(f"host RSS: now {mib(proc.memory_info().rss).strip()}, process peak {mib(peak).strip()},"
                 f" at start {mib(rss_start).strip()} (both models share this process);"
                 f" data workers {mib(workers).strip()} (USS)")  # fmt: skip
    if not cuda:
        rest = weights + grads + opt_state + b_weights + b_grads + b_opt
        lines.append("  activations ~ peak RSS - RSS at start - weights, gradients, optimizer state of both models:"
                     f" {mib(peak - rss_start - rest).strip()}")  # fmt: skip
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
        peak_flops = args.peak_tflops * 1e12
        lines.append(f"  MFU (peak {args.peak_tflops:g} TFLOP/s): full step {step_flops / wall / peak_flops:.2%}"
                     f" ({step_flops / compute / peak_flops:.2%} without data wait),"
                     f" baseline {step_flops / baseline / peak_flops:.2%}")  # fmt: skip
    print("\n".join(lines), flush=True)
    return {"full_s": wall, "full_compute_s": compute, "baseline_s": baseline, "overhead": compute / baseline,
            "overhead_with_data": wall / baseline, "flops_per_frame": flops_frame}  # fmt: skip
