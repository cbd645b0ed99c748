"""Objectives built from the config, and `PretrainModel`: the encoder and its objectives as one
module with one forward, the one that training (through the DeepSpeed engine), the benchmarks
and the tests all call."""

from __future__ import annotations

import inspect
import time
from dataclasses import replace

import torch
from torch import nn

from pretrain.bank import clip_ids
from pretrain.objectives.registry import OBJECTIVES
from pretrain.views import Encoded, View


def build_objectives(spec: dict, embed_dim: int, feature_dim: int = 0, patch_size: int = 0
                     ) -> tuple[nn.ModuleDict, dict[str, float]]:  # fmt: skip
    """Objectives and their weights from the config: {name: {weight: w, ...arguments}}. The
    arguments are typed by each objective's constructor (an unknown one is refused); each also
    gets the sizes it asks for by name: `embed_dim` (AU embedding), `feature_dim` (backbone),
    `patch_size` (a ViT's patches, 0 for backbones without)."""
    modules, weights = nn.ModuleDict(), {}
    for name, args in spec.items():
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
        args = dict(args or {})
        weights[name] = float(args.pop("weight", 1.0))
        sizes = {"embed_dim": embed_dim, "feature_dim": feature_dim, "patch_size": patch_size}
        wanted = inspect.signature(OBJECTIVES[name]).parameters
        try:
            modules[name] = OBJECTIVES[name](**{k: v for k, v in sizes.items() if k in wanted}, **args)
        except TypeError as e:
            raise ValueError(f"objective {name!r}: {e}") from None
    if not modules:
        raise ValueError("no objectives configured")
    return modules, weights


def mines(objectives: nn.ModuleDict) -> bool:
    """Whether any objective reads the memory bank's mining (and so the run needs a bank)."""
    return any(o.mines for o in objectives.values())


class PretrainModel(nn.Module):
    """The encoder and its objectives as one module, so DeepSpeed holds every trained weight.

    `forward(views, batch) -> (total, {name: loss})`: encode both views, mine, score. With a
    memory `bank` (required when an objective mines, refused otherwise), each step first mines
    every anchor frame's cross-identity positives and identity-hard negatives from the bank
    (`encoded.mining`), and after the losses adds the step's embeddings to it (so the bank holds
    earlier steps only; see `pretrain.bank`). The bank is a plain attribute, not a module:
    DeepSpeed neither syncs nor saves it (every rank's is the same; checkpoints save it apart)."""

    def __init__(self, encoder: nn.Module, objectives: nn.ModuleDict, weights: dict[str, float], bank=None):
        super().__init__()
        miners = [name for name, o in objectives.items() if o.mines]
        if miners and bank is None:
            raise ValueError(f"objective {', '.join(miners)} mines a memory bank: give PretrainModel a bank")
        if bank is not None and not miners:
            raise ValueError("a memory bank but no objective that mines it")
        self.encoder, self.objectives, self.weights, self.bank = encoder, objectives, weights, bank
        self.maps = any(o.maps for o in objectives.values())
        # Each objective's forward time in the last step (`Run` gives a clock that waits for the
        # GPU), which the training log and `python -m pretrain.bench` report as its share.
        self.clock, self.times = time.perf_counter, {}

    def encode(self, views: list[View]) -> Encoded:
        # Both views in one backbone pass: half the kernel launches and better batching.
        frames = torch.cat([v.input for v in views], dim=0)
        out = self.encoder(frames, maps=True) if self.maps else self.encoder(frames)
        n = views[0].input.shape[0]
        return Encoded([replace(v, **{k: t[i * n : (i + 1) * n] for k, t in out.items()}) for i, v in enumerate(views)],
                       encoder=self.encoder)  # fmt: skip

    def losses(self, batch, encoded: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and every named loss of the objectives on `encoded`."""
        if self.bank is not None:
            anchors, clips = encoded.anchors(), clip_ids(batch.keys)
            encoded.mining = self.bank.mine(anchors, batch.identity, video=batch.video, clip=clips)
        losses = {}
        for name, objective in self.objectives.items():
            start = self.clock()
            losses.update(objective(batch, encoded))
            self.times[name] = self.clock() - start
        total = sum(self.weights[name] * loss for name, loss in losses.items() if name in self.weights)
        if self.bank is not None and self.training:
            self.bank.add(anchors, batch.identity, video=batch.video, clip=clips, valid=batch.valid)
        return total, losses

    def forward(self, views: list[View], batch=None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        encoded = self.encode(views)
        encoded.generator = generator
        return self.losses(batch, encoded)
