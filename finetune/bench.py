"""Throughput of the fine-tuning paths against bare timm, measured in one process.

(a) linear-probe feature extraction: uint8 frames normalised on the device, then `AUModel` in
mode=linear (frozen backbone forward under no_grad, linear head), against a bare
`timm.create_model(arch, num_classes=0)` forward under no_grad on already-normalised frames.
(b) full fine-tuning steps: normalise, `AUModel` in mode=finetune, `detection_loss` (class-balanced
BCE, unknown labels masked), backward, AdamW with timm layer-wise lr decay (`optimizer_for`),
against a bare timm forward + mean-square loss + backward + plain AdamW step on the same frames.

Full and baseline alternate each round (ABBA) so machine noise hits both; medians over `--steps`
rounds after `--warmup`; overhead = full time / baseline time (target <= 1.15). Usage:
    python -m finetune.bench --arch resnet18 --size 56 --batch 64 --steps 20 --warmup 3 --threads 0
"""

from __future__ import annotations

import argparse

import torch

from shards.timing import Clock, alternate, median

TARGET = 1.15
N_AUS = 12


def _alternate(full, base, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per call of `full` and `base`, alternated each round (ABBA)."""
    clock = Clock(device.type == "cuda")
    full_t, base_t = alternate(lambda: clock.time(full), lambda: clock.time(base), steps, warmup)
    return median(full_t), median(base_t)


def _bare(arch: str, size: int, device: torch.device) -> torch.nn.Module:
    import timm

    from finetune.backbone import backbone_args

    torch.manual_seed(0)
    return timm.create_model(arch, num_classes=0, **backbone_args(arch, size)).to(device)


def _auforge(arch: str, size: int, mode: str, device: torch.device):
    from finetune.backbone import load_backbone
    from finetune.heads import make_head
    from finetune.train import AUModel
    from shards.batch import normalize

    torch.manual_seed(0)
    backbone = load_backbone(arch, input_size=size)
    head = make_head("linear", backbone.num_features, N_AUS)
    model = AUModel(backbone.model, head, frozen=mode != "finetune", adversary=None).to(device)
    def normalise(images):  # as finetune.train.run_fold does
        return normalize(images, backbone.mean, backbone.std)

    return model, normalise


def bench(arch="resnet18", size=56, batch=64, steps=20, warmup=3, device=None) -> dict:
    from finetune.config import FinetuneConfig
    from finetune.train import detection_loss, optimizer_for

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    occ = (torch.randint(0, 3, (batch, N_AUS), generator=g) - 1).to(device)  # -1 unknown, 0, 1
    pos, neg = (occ == 1).sum(0), (occ == 0).sum(0)
    pos_weight = torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos, dtype=torch.float)).float()
    results = {}

    # (a) linear-probe feature extraction
    model, normalise = _auforge(arch, size, "linear", device)
    bare = _bare(arch, size, device).eval()
    ready = normalise(images)  # the baseline gets frames already normalised

    def full_a():
        model(normalise(images))["logits"]

    def base_a():
        with torch.no_grad():
            bare(ready)

    results["linear-probe features"] = _alternate(full_a, base_a, steps, warmup, device)
    del model, bare

    # (b) full fine-tuning steps
    cfg = FinetuneConfig(backbone=arch, mode="finetune", batch_size=batch)
    model, normalise = _auforge(arch, size, "finetune", device)  # nn.Module starts in train mode
    optimizer = optimizer_for(model, cfg)
    bare = _bare(arch, size, device).train()
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def full_b():
        loss = detection_loss(model(normalise(images))["logits"], occ, pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def base_b():
        loss = bare(ready).square().mean()
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()

    results["fine-tuning steps"] = _alternate(full_b, base_b, steps, warmup, device)
    return {"device": str(device), "results": results}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = bench(args.arch, args.size, args.batch, args.steps, args.warmup, args.device)
    print(f"auforge bench: {args.arch} {args.size}px batch {args.batch}, device {out['device']}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps after {args.warmup} warm-up")  # fmt: skip
    worst = 0.0
    for name, (full, base) in out["results"].items():
        ratio, worst = full / base, max(worst, full / base)
        print(f"{name:22s} auforge {args.batch / full:9.1f} frames/s   bare timm {args.batch / base:9.1f} frames/s   "
              f"overhead {ratio:.3f}x (target <= {TARGET}) {'OK' if ratio <= TARGET else 'OVER'}")  # fmt: skip
    print(f"worst overhead {worst:.3f}x: {'within' if worst <= TARGET else 'above'} target {TARGET}")


if __name__ == "__main__":
    main()
