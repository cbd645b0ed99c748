"""Cross-identity objectives: what makes the AU embedding person-independent.

Identity dominates a face image and AUs are subtle, so an embedding trained on faces alone
clusters by person. These objectives use the memory bank's mining (`pretrain.bank`): for every
anchor frame, `encoded.mining` holds its k nearest bank entries of *another* identity (the
cross-identity positives: same AU state, another person) and the farthest entries of *its own*
identity from other clips (identity-hard negatives: same person, another AU state). Anchors are
the frames of both views, concatenated along time: row n of a clip's anchors is frame n of view 0
for n < L, frame n - L of view 1 after (`Encoded.anchors`).

* `cross_identity`: pull each anchor towards its cross-identity positives, away from its
  identity-hard negatives and its own person's other clips in the global batch.
* `cross_identity_recon`: split each frame into an AU code and an identity code and reconstruct it
  from its own identity code with its cross-identity neighbour's AU code (CLP's cross-identity
  reconstruction, Li & Shan 2023). Its decoder is training-only.
* `identity_adversarial` (ablation): a gradient-reversal identity classifier on the AU embedding
  (FMAE-IAT); needs no bank.

Every head here belongs to its objective and is never published.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import IdentityAdversary
from pretrain.bank import clip_ids
from pretrain.distributed import all_gather_rows, gather_with_grad
from pretrain.model import l2n
from pretrain.objectives.registry import Objective, register
from pretrain.views import Encoded


@register("cross_identity")
class CrossIdentity(Objective):
    """Multi-positive InfoNCE that ranks other people's frames of the same AU state above the
    same person's other AU states. For an anchor a with L2-normalised AU embedding z_a, its valid
    cross-identity positives P_a and identity-hard negatives N_a from the bank (detached), and
    S_a, the frames of the *same identity's other clips* in the global batch (gathered across
    ranks, this rank's rows with their gradient), with s(x, y) = x . y / tau:

        L = mean over anchors with |P_a| > 0 of
            -1/|P_a| sum_{p in P_a} [ s(z_a, p) - log( sum_{x in P_a + N_a + S_a} exp s(z_a, x) ) ]

    Every negative is the anchor's own person, so the loss can only fall by bringing people
    together where their AUs agree and by pulling a person's AU states apart: what identity alone
    explains stops paying. Other people's frames are left out of the denominator on purpose:
    among them are the frames that show the anchor's AUs on another face, and pushing those away
    keeps identity in the embedding (measured on the toy world of tests/test_cross_identity.py:
    identity-probe accuracy 0.85 with them, 0.21 without, chance 0.08). Collapse does not pay
    either: the same person's frames would then score as high as the positives. Anchors whose
    bank holds no other identity yet (the first steps) add nothing.
    """

    mines = True

    def __init__(self, embed_dim: int, temperature: float = 0.1, batch_negatives: bool = True):
        super().__init__()
        self.temperature, self.batch_negatives = temperature, batch_negatives

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        z = l2n(encoded.anchors())  # [B, N, D]
        mined = encoded.mining
        pos, neg = mined.positives, mined.negatives
        tau = self.temperature
        s_pos = torch.einsum("bnd,bnkd->bnk", z, pos.embedding.to(z)) / tau
        s_neg = torch.einsum("bnd,bnkd->bnk", z, neg.embedding.to(z)) / tau
        terms = [s_pos.masked_fill(~pos.valid, -math.inf), s_neg.masked_fill(~neg.valid, -math.inf)]
        zero = z.sum() * 0.0
        if self.batch_negatives:
            b, n, _ = z.shape
            everyone, _ = gather_with_grad(z.flatten(0, 1))  # [G, D]
            clip, identity = clip_ids(batch.keys).to(z.device), batch.identity.to(z.device)
            their_clip = all_gather_rows(clip.repeat_interleave(n))
            their_identity = all_gather_rows(identity.repeat_interleave(n))
            s_batch = (z.flatten(0, 1) @ everyone.T / tau).view(b, n, -1)
            other = (clip[:, None] == their_clip[None, :]) | (identity[:, None] != their_identity[None, :])
            terms.append(s_batch.masked_fill(other[:, None, :], -math.inf))
            zero = everyone.sum() * 0.0  # every rank's graph goes through the gather, anchors or not
        has = pos.valid.any(-1)  # [B, N]
        if not bool(has.any()):
            return {self.name: zero}
        logits, valid = torch.cat(terms, dim=-1)[has], pos.valid[has]  # [A, K + M (+ G)], [A, K]
        log_prob = logits[:, : valid.shape[1]] - torch.logsumexp(logits, dim=-1, keepdim=True)
        per_anchor = -log_prob.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1)
        return {self.name: per_anchor.mean() + zero}


class FrameDecoder(nn.Module):
    """A light decoder from a code to a small RGB frame: a 4x4 map, then upsampling
    convolutions that halve their channels as they double the size (most pixels get the fewest
    channels, so it costs a fraction of the backbone)."""

    def __init__(self, code_dim: int, size: int = 32, channels: int = 64):
        super().__init__()
        ups = int(round(math.log2(size / 4)))
        if 4 * 2**ups != size:
            raise ValueError(f"decoder size must be 4 times a power of two (8, 16, 32, 64), not {size}")
        self.channels = channels
        self.stem = nn.Linear(code_dim, channels * 16)
        blocks, c = [], channels
        for _ in range(ups):
            out = max(16, c // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, padding=1),
                       nn.GroupNorm(1, out), nn.GELU()]  # fmt: skip
            c = out
        self.blocks = nn.Sequential(*blocks, nn.Conv2d(c, 3, 1))

    def forward(self, code: torch.Tensor) -> torch.Tensor:  # [N, code_dim] -> [N, 3, size, size]
        return self.blocks(self.stem(code).view(-1, self.channels, 4, 4))


@register("cross_identity_recon")
class CrossIdentityReconstruction(Objective):
    """Cross-identity reconstruction. Each frame x_a of the first view is split into an AU code
    u_a (its L2-normalised AU embedding, the encoder's) and an identity code i_a (this
    objective's head on the backbone features); a light decoder D rebuilds x_a, downsampled to
    `size`, from its own codes and from its own identity code with the AU code u_n(a) of its
    nearest cross-identity neighbour in the bank (another person, the same AU state):

        L = || D(i_a, u_a) - x_a ||^2 + || D(i_a, u_n(a)) - x_a ||^2     (mean over pixels and frames)

    the second term over anchors that have a neighbour. Both terms can only hold together when
    the decoder reads the person from i_a and takes from the AU code just what a's neighbour
    shares with a, so the AU code is rewarded for what people showing the same AUs have in
    common and gains nothing from carrying who they are; the identity code takes the rest. The
    neighbour's code comes from the bank and is detached: gradients reach the encoder through
    u_a and i_a. The decoder and the identity head are training-only.
    """

    mines = True

    def __init__(self, embed_dim: int, feature_dim: int, identity_dim: int = 64, size: int = 32, channels: int = 64):
        super().__init__()
        self.size = size
        self.identity_head = nn.Linear(feature_dim, identity_dim)
        self.decoder = FrameDecoder(embed_dim + identity_dim, size, channels)

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        view = encoded.views[0]
        if view.input is None:
            raise ValueError("cross_identity_recon needs the views' input frames (PretrainModel.encode keeps them)")
        target = F.interpolate(view.input.flatten(0, 1).float(), size=(self.size, self.size), mode="area")
        au = l2n(view.au.float()).flatten(0, 1)
        identity = self.identity_head(view.features.float()).flatten(0, 1)
        nearest = encoded.mining.positives
        rows = encoded.anchor_rows(0)
        neighbour = nearest.embedding[:, rows, 0].flatten(0, 1).to(au)  # view 0's anchors, best neighbour
        has = nearest.valid[:, rows, 0].flatten()
        own = F.mse_loss(self.decoder(torch.cat([identity, au], 1)), target)
        # every frame goes through the decoder, those without a neighbour weighted 0: each rank
        # then has a gradient for every weight, as the data-parallel all-reduce expects
        error = (self.decoder(torch.cat([identity, neighbour], 1)) - target).pow(2).mean((1, 2, 3))
        cross = (error * has).sum() / has.sum().clamp_min(1)
        return {self.name: own + cross, f"{self.name}/own": own.detach(), f"{self.name}/cross": cross.detach()}


@register("identity_adversarial")
class IdentityAdversarial(Objective):
    """An identity classifier on the AU embedding behind a gradient reversal (FMAE-IAT): the
    classifier learns to name the person, the encoder gets the negated, `scale`d gradient and so
    learns to hide who it is. Identities are hashed into `classes` buckets (ids are 63-bit hashes;
    a few collisions only merge people); clips with no identity use their video id:

        L = mean over frames of CE( classifier(GRL(z)), identity mod classes )
    """

    def __init__(self, embed_dim: int, classes: int = 4096, scale: float = 1.0):
        super().__init__()
        self.classes = classes
        self.adversary = IdentityAdversary(embed_dim, classes, scale)

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        z = encoded.anchors()  # [B, N, D]
        identity = torch.where(batch.identity >= 0, batch.identity, batch.video).to(z.device)
        known = (identity >= 0)[:, None].expand(z.shape[:2]).flatten().float()
        target = (identity.clamp_min(0) % self.classes)[:, None].expand(z.shape[:2]).flatten()
        # every frame through the classifier, those of unknown people weighted 0 (see above)
        loss = F.cross_entropy(self.adversary(z.flatten(0, 1)).float(), target, reduction="none")
        return {self.name: (loss * known).sum() / known.sum().clamp_min(1)}
