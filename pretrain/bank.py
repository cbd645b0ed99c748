"""The memory bank of cross-identity learning: recent AU embeddings with identity, video and clip ids.

A fixed-capacity FIFO ring buffer of L2-normalised fp32 embeddings and int64 ids, kept on the
training device (the GPU when there is one). `add` takes a rank's rows, detaches them and
all-gathers the global batch in rank order, so every rank's bank holds the same rows in the same
slots; `mine` returns, per anchor, cross-identity positives and identity-hard negatives (see
`pretrain.mining`). The negatives are the person's other clips farthest from the anchor, so
surely another AU state; `negatives_from="nearest"` takes the nearest instead, the ones identity
holds close, which often share the anchor's AU state: on the toy world of
tests/test_cross_identity.py they left identity-probe accuracy at 0.56 where the farthest gave 0.21.
`PretrainModel` mines once a step when an objective asks (`Objective.mines`); by hand:

    mined = bank.mine(z, batch.identity, k, video=batch.video, clip=clip_ids(batch.keys))
    mined.positives.embedding  # [B, L, k, D], mined.positives.valid [B, L, k]
    bank.add(z, batch.identity, video=batch.video, clip=clip_ids(batch.keys), valid=batch.valid)

Mine before adding the step's rows: the bank then holds earlier steps only, and an anchor's own
clip never crowds its neighbourhood (mining excludes it either way; it only costs search width).

Resumption restores the bank, it does not rebuild it: `state_dict()` (tensors only, so
safetensors can hold it) has the rows, the FIFO position, the step count and the trained IVF
index, and `load_state_dict` brings back a bank that mines exactly as the saved one would have.
Rebuilding from the next steps would mine from an emptier bank than the uninterrupted run and so
change the run. Every rank's bank is the same, so rank 0 may save it once for all.

Identity comes from the shard metadata. Where a clip has none (-1) and `identity_fallback` is
"video", its video id stands in: clips of one video are then never each other's cross-identity
positives, but two videos of one unnamed person may be. The bank logs a warning the first time,
and `identity_source` ("identity", "video" or "identity+video") says what the run used, for its
log and its model card; with `identity_fallback="none"` a missing identity is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pretrain.config import MiningConfig
from pretrain.distributed import all_gather_rows
from pretrain.mining import (ExactSearch, IVFSearch, Mined, cross_identity_positives, default_nlist,
                             identity_hard_negatives)  # fmt: skip
from shards.format import stable_id

log = logging.getLogger("pretrain.bank")


def clip_ids(keys: list[str]) -> torch.Tensor:
    """int64 clip ids for a batch's sample keys (the same hash as identity and video ids)."""
    return torch.tensor([stable_id(k) for k in keys], dtype=torch.long)


@dataclass
class Mining:
    positives: Mined  # cross-identity: nearest entries of another identity
    negatives: Mined  # identity-hard: farthest (or nearest) entries of the same identity, another clip


class MemoryBank:
    """FIFO bank of `capacity` embeddings of `dim`; see the module docstring."""

    def __init__(self, capacity: int, dim: int, device=None, *, index: str = "auto", approx_from: int = 1_000_000,
                 nlist: int = 0, nprobe: int = 32, codec: str = "Flat", refresh_every: int = 1000, threads: int = 1,
                 identity_fallback: str = "video", seed: int = 0, k: int = 8, negatives: int = 4,
                 negatives_from: str = "farthest"):  # fmt: skip
        if identity_fallback not in ("video", "none"):
            raise ValueError(f"identity_fallback must be 'video' or 'none', not {identity_fallback!r}")
        if index not in ("auto", "flat", "ivf"):
            raise ValueError(f"index must be 'auto', 'flat' or 'ivf', not {index!r}")
        if negatives_from not in ("nearest", "farthest"):
            raise ValueError(f"negatives_from must be 'nearest' or 'farthest', not {negatives_from!r}")
        self.capacity, self.dim, self.k, self.negatives = capacity, dim, k, negatives
        self.negatives_from = negatives_from
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.identity_fallback, self.refresh_every = identity_fallback, refresh_every
        self.emb = torch.zeros(capacity, dim, dtype=torch.float32, device=self.device)
        self.identity, self.video, self.clip = (torch.full((capacity,), -1, dtype=torch.long, device=self.device)
                                                for _ in range(3))  # fmt: skip
        self.ptr = self.count = self.steps = 0  # next slot, filled slots, add() calls
        self.rows_named = self.rows_fallback = 0  # rows with their own identity / with the video's
        self.exact = ExactSearch(capacity, dim, self.device, threads)
        approx = index == "ivf" or (index == "auto" and capacity >= approx_from)
        self.ivf = IVFSearch(dim, nlist or default_nlist(capacity), nprobe, codec, seed, threads) if approx else None

    @classmethod
    def from_config(cls, cfg: MiningConfig, dim: int, device=None) -> "MemoryBank":
        return cls(dim=dim, device=device, **vars(cfg))

    @property
    def identity_source(self) -> str:
        """What identity mining used: 'identity', 'video' or 'identity+video' (for the model card)."""
        return identity_source(self.rows_named, self.rows_fallback)

    def resolve_identity(self, identity: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
        """Identity ids with the fallback applied where they are unknown (-1)."""
        missing = identity < 0
        if not bool(missing.any()):
            return identity
        if self.identity_fallback == "none" or video is None:
            raise ValueError("clips without identity (-1) reached the memory bank and identity_fallback is "
                             f"{self.identity_fallback!r}{'' if video is not None else ' (no video ids given)'}")  # fmt: skip
        return torch.where(missing, video.to(identity.device), identity)

    # ------------------------------------------------------------------------------ filling

    @torch.no_grad()
    def add(self, emb: torch.Tensor, identity: torch.Tensor, video: torch.Tensor | None = None,
            clip: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Add this rank's rows ([..., D] embeddings; ids of shape [...] or a prefix of it, e.g.
        per clip for per-frame embeddings), gathered from every rank; a collective, so every rank
        calls it every step. `valid` False rows (padding) are left out. Returns the slots written."""
        lead = emb.shape[:-1]
        rows = torch.nn.functional.normalize(emb.detach().float().reshape(-1, self.dim), dim=1)
        none = torch.full(lead, -1, dtype=torch.long)
        ids = torch.stack([_expand(t if t is not None else none, lead).to(rows.device, torch.long)
                           for t in (identity, video, clip)], dim=1)  # fmt: skip
        if valid is not None:
            keep = _expand(valid, lead).to(rows.device)
            rows, ids = rows[keep], ids[keep]
        # one collective for both: fp32 rows and int64 ids travel as int32 words
        packed = torch.cat([rows.view(torch.int32), ids.view(torch.int32)], dim=1).to(self.device)
        packed = all_gather_rows(packed)[-self.capacity :]
        rows = packed[:, : self.dim].contiguous().view(torch.float32)
        ids = packed[:, self.dim :].contiguous().view(torch.long)
        named = int((ids[:, 0] >= 0).sum())
        if named < ids.shape[0]:
            ids[:, 0] = self.resolve_identity(ids[:, 0], ids[:, 1])
            if self.rows_fallback == 0:
                log.warning("%d of %d rows added to the memory bank have no identity: their video ids stand in "
                            "(identity_fallback=video); say so in the run's log and model card",
                            ids.shape[0] - named, ids.shape[0])  # fmt: skip
        self.rows_named += named
        self.rows_fallback += ids.shape[0] - named
        n, filled = rows.shape[0], self.count
        slots = (self.ptr + torch.arange(n, device=self.device)) % self.capacity
        self.emb[slots], self.identity[slots], self.video[slots], self.clip[slots] = rows, *ids.unbind(1)
        self.ptr, self.count, self.steps = (self.ptr + n) % self.capacity, min(self.count + n, self.capacity), self.steps + 1
        self.exact.update(slots, rows)
        if self.ivf is not None:
            if self.ivf.due(self.count, self.steps, self.refresh_every):
                self.ivf.train(self.emb, self.count, self.steps)
            else:
                self.ivf.update(slots, rows, filled)
        return slots

    # ------------------------------------------------------------------------------ search

    def search(self, queries: torch.Tensor, k: int, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, slots) [Q, k] of the bank's best inner products; approximate once an IVF index
        is trained, unless `exact`. Slots are -1 where the search found fewer than k."""
        queries = torch.nn.functional.normalize(queries.detach().float(), dim=-1).to(self.device)
        if self.ivf is not None and self.ivf.index is not None and not exact:
            return self.ivf.search(queries, k)
        return self.exact.search(queries, self.emb, self.count, k)

    @torch.no_grad()
    def mine(self, anchors: torch.Tensor, identity: torch.Tensor, k: int | None = None, *,
             video: torch.Tensor | None = None, clip: torch.Tensor | None = None,
             negatives: int | None = None) -> Mining:
        """Per anchor ([..., D]; ids of shape [...] or a prefix of it): `k` cross-identity
        positives and `negatives` identity-hard negatives (0: none; the latter need `clip`).
        Results are detached, shaped [..., k] (embeddings [..., k, D]) and on the bank's device."""
        k = self.k if k is None else k
        negatives = self.negatives if negatives is None else negatives
        lead = anchors.shape[:-1]
        q = torch.nn.functional.normalize(anchors.detach().float().reshape(-1, self.dim), dim=1).to(self.device)
        ident = _expand(identity, lead).to(self.device)
        ident = self.resolve_identity(ident, None if video is None else _expand(video, lead))
        rounds = 3 if self.ivf is not None and self.ivf.index is not None else 1  # see cross_identity_positives
        pos = cross_identity_positives(self.search, q, ident, self.emb, self.identity, self.count, k, rounds=rounds)
        if negatives and clip is None:
            raise ValueError("identity-hard negatives need the anchors' clip ids (clip=...)")
        neg = identity_hard_negatives(q, ident, _expand(clip, lead).to(self.device) if negatives else ident,
                                      self.emb, self.identity, self.clip, self.count, negatives,
                                      nearest=self.negatives_from == "nearest")  # fmt: skip
        return Mining(*(Mined.take(*m, self.emb, self.identity).reshape(*lead) for m in (pos, neg)))

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only: the rows, the FIFO position and counters, and the trained IVF index."""
        state = {"emb": self.emb, "identity": self.identity, "video": self.video, "clip": self.clip,
                 "counters": torch.tensor([self.ptr, self.count, self.steps, self.rows_named, self.rows_fallback])}  # fmt: skip
        if self.ivf is not None:
            state.update({f"ivf.{k}": v for k, v in self.ivf.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["emb"].shape) != (self.capacity, self.dim):
            raise ValueError(f"memory bank state holds {tuple(state['emb'].shape)} rows x dim, "
                             f"this bank {(self.capacity, self.dim)}")  # fmt: skip
        for name in ("emb", "identity", "video", "clip"):
            getattr(self, name).copy_(state[name])
        self.ptr, self.count, self.steps, self.rows_named, self.rows_fallback = (int(v) for v in state["counters"])
        self.exact.update(torch.arange(self.capacity), self.emb)
        if self.ivf is not None:
            ivf = {k.removeprefix("ivf."): v for k, v in state.items() if k.startswith("ivf.")}
            self.ivf.load_state_dict(ivf, self.emb, self.count)


def identity_source(rows_named: int, rows_fallback: int) -> str:
    """'identity' when every row had its own, 'video' when none had, else 'identity+video'."""
    if rows_fallback == 0:
        return "identity"
    return "video" if rows_named == 0 else "identity+video"


def saved_identity_source(state: dict[str, torch.Tensor]) -> str:
    """`identity_source` of a bank from its saved `state_dict()` (a checkpoint's bank.safetensors)."""
    counters = state["counters"].tolist()
    return identity_source(counters[3], counters[4])


def _expand(t: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """Ids given per leading index (e.g. per clip) broadcast to every anchor, flattened."""
    t = torch.as_tensor(t)
    return t.reshape(*t.shape, *([1] * (len(lead) - t.dim()))).expand(lead).reshape(-1)

