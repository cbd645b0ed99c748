"""FAISS search over the memory bank, and the two miners of cross-identity learning.

Search (what `MemoryBank.search` delegates to):

* `ExactSearch`: exact inner-product top-k with FAISS's brute-force kernel (`faiss.knn`, the one
  `IndexFlatIP.search` runs), read straight from the bank's own storage, so the bank is not held
  twice: on the host bank without a copy, on a CUDA bank with `faiss.knn_gpu` when FAISS has GPU
  support, else from a host mirror that `update` keeps in step with the bank.
* `IVFSearch`: an approximate IVF index (`IVF{nlist},Flat` or `,SQ8`) for banks of a million and
  more. Its quantiser is trained on rank 0 from a seeded sample of the bank and broadcast as
  serialised bytes, so every rank searches the same index; it is retrained every
  `refresh_every` steps. Between retrainings the FIFO's overwrites are applied in place (ids are
  bank slots; a hash-table direct map makes removal cost what is removed, not the index size).
  It stays on the CPU (FAISS's GPU IVF cannot remove ids).

Mining (plain functions over tensors, so the bank and tests can call them alike):

* `cross_identity_positives`: the k nearest bank entries whose identity differs from the
  anchor's (same AU state, another person). It searches k + margin and drops same-identity hits;
  anchors left with fewer than k are searched wider (IVF) and then exactly with their identity
  masked out, so a valid mask is False only where the bank has fewer than k such entries.
* `identity_hard_negatives`: bank entries of the anchor's identity from another clip, the
  farthest in AU space (lowest inner product): same person, different AU state.

FAISS runs in the training process only: `check_not_in_worker` refuses DataLoader workers
(forked OpenMP pools deadlock, and the bank lives in the trainer anyway). Its OpenMP thread count
is set explicitly around each call (`faiss_threads`), and it is imported after torch: loaded
first, it brought a second OpenMP runtime that slowed torch's small CPU ops around the search
8-fold (a 16k-entry mining step: 153 ms against 20); loaded after, it shares torch's.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

import faiss  # isort: skip - after torch, see the module docstring

from pretrain.distributed import broadcast_object

log = logging.getLogger("pretrain.mining")


@contextlib.contextmanager
def faiss_threads(threads: int):
    """Run FAISS calls on `threads` OpenMP threads (0: as many as torch's intra-op pool), in the
    training process only, and give torch its own count back after.

    Imported after torch, FAISS shares torch's OpenMP runtime, so `faiss.omp_set_num_threads`
    alone would change torch's thread count for the whole run. The default of 1 thread: on two
    busy cores, a FAISS search with 2 threads next to torch ops took up to 3.5 times as long as
    alone, with 1 no longer; raise it where cores are free for FAISS (big CPU banks)."""
    check_not_in_worker()
    torch_threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads or torch_threads)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)


def check_not_in_worker() -> None:
    if torch.utils.data.get_worker_info() is not None:
        raise RuntimeError("FAISS must not run inside a DataLoader worker: mine in the training process")


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def torch_search(queries: torch.Tensor, emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force reference: matmul and top-k on the tensors' device; (scores, rows) [Q, k]."""
    return (queries.float() @ emb.T).topk(min(k, emb.shape[0]), dim=1)


class ExactSearch:
    """Exact inner-product search over the first `count` rows of the bank's storage."""

    def __init__(self, capacity: int, dim: int, device: torch.device, threads: int = 1):
        self.device, self.threads = device, threads
        self.gpu = device.type == "cuda" and faiss_has_gpu()
        self.res = None
        if self.gpu:
            import faiss.contrib.torch_utils  # noqa: F401 - lets knn_gpu read CUDA tensors in place

            self.res = faiss.StandardGpuResources()
        # a CUDA bank with CPU-only FAISS: a host copy, written row by row as the bank is
        self.mirror = np.zeros((capacity, dim), np.float32) if device.type == "cuda" and not self.gpu else None

    def update(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        if self.mirror is not None:
            self.mirror[slots.cpu().numpy()] = rows.cpu().numpy()

    def search(self, queries: torch.Tensor, emb: torch.Tensor, count: int, k: int):
        """(scores, slots) [Q, k] on the bank's device, best first."""
        k = min(k, count)
        q = queries.detach().float().contiguous()
        with faiss_threads(self.threads):
            if self.gpu:
                return faiss.knn_gpu(self.res, q, emb[:count], k, metric=faiss.METRIC_INNER_PRODUCT)
            base = self.mirror[:count] if self.mirror is not None else emb[:count].numpy()
            scores, slots = faiss.knn(q.cpu().numpy(), base, k, metric=faiss.METRIC_INNER_PRODUCT)
        return torch.from_numpy(scores).to(self.device), torch.from_numpy(slots).to(self.device)


class IVFSearch:
    """Approximate inner-product search: IVF with bank slots as ids, see the module docstring."""

    TRAIN_PER_LIST = 40  # training points per list (FAISS warns below 39)

    def __init__(self, dim: int, nlist: int, nprobe: int, codec: str = "Flat", seed: int = 0, threads: int = 1):
        self.dim, self.nlist, self.nprobe, self.codec, self.seed, self.threads = dim, nlist, nprobe, codec, seed, threads
        self.index = None
        self.trained_bytes = None  # the trained, empty index: what a checkpoint keeps
        self.trained_at = -1  # the bank's step count at the last training

    @property
    def min_train(self) -> int:
        return self.nlist * self.TRAIN_PER_LIST

    def due(self, count: int, step: int, refresh_every: int) -> bool:
        """Whether to (re)train now; the same answer on every rank, whose banks are equal."""
        if count < self.min_train:
            return False
        return self.index is None or (refresh_every > 0 and step - self.trained_at >= refresh_every)

    def train(self, emb: torch.Tensor, count: int, step: int) -> None:
        """Collective: rank 0 trains on a seeded sample of the bank, every rank loads its bytes."""
        data = None
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            rows = torch.randperm(count, generator=gen)[: min(count, self.min_train)].sort().values
            index = faiss.index_factory(self.dim, f"IVF{self.nlist},{self.codec}", faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = self.seed + 1234
            with faiss_threads(self.threads):
                index.train(emb[rows.to(emb.device)].cpu().numpy())
            data = faiss.serialize_index(index)
        self.load(broadcast_object(data), emb, count, step)

    def load(self, trained: np.ndarray, emb: torch.Tensor, count: int, step: int) -> None:
        """Take a trained empty index and fill it with the bank's first `count` rows."""
        self.trained_bytes, self.trained_at = trained, step
        self.index = faiss.deserialize_index(trained)
        self.index.nprobe = self.nprobe
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
        with faiss_threads(self.threads):
            self.index.add_with_ids(emb[:count].cpu().numpy(), np.arange(count, dtype=np.int64))

    def update(self, slots: torch.Tensor, rows: torch.Tensor, filled: int) -> None:
        """Overwrite `slots` with `rows`; `filled` rows of the bank were in the index before."""
        if self.index is None:
            return
        slots = slots.cpu().numpy().astype(np.int64)
        old = slots[slots < filled]
        with faiss_threads(self.threads):
            if old.size:
                self.index.remove_ids(old)
            self.index.add_with_ids(rows.cpu().numpy(), slots)

    def search(self, queries: torch.Tensor, k: int):
        with faiss_threads(self.threads):
            scores, slots = self.index.search(queries.detach().float().cpu().numpy(), k)
        return torch.from_numpy(scores).to(queries.device), torch.from_numpy(slots).to(queries.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.trained_bytes is None:
            return {"trained_at": torch.tensor(-1)}
        return {"trained_at": torch.tensor(self.trained_at), "trained": torch.from_numpy(self.trained_bytes.copy())}

    def load_state_dict(self, state: dict, emb: torch.Tensor, count: int) -> None:
        self.index, self.trained_bytes, self.trained_at = None, None, -1
        if "trained" in state:
            self.load(state["trained"].cpu().numpy().astype(np.uint8), emb, count, int(state["trained_at"]))


def default_nlist(capacity: int) -> int:
    """About 4 sqrt(N) lists, a power of two (FAISS's guideline for IVF sizes), and no more than
    a full bank can train (`IVFSearch.TRAIN_PER_LIST` points a list)."""
    most = 2 ** int(math.log2(max(16, capacity // IVFSearch.TRAIN_PER_LIST)))
    return min(most, 2 ** max(4, round(math.log2(4 * math.sqrt(capacity)))))


@dataclass
class Mined:
    """k mined bank entries per anchor. `slot` is -1 and `valid` False where fewer than k exist;
    `embedding` (detached, L2-normalised) is zero and `score` NaN there."""

    slot: torch.Tensor  # int64 [..., k]
    score: torch.Tensor  # float32 [..., k], inner product with the anchor
    valid: torch.Tensor  # bool [..., k]
    embedding: torch.Tensor  # float32 [..., k, D]
    identity: torch.Tensor  # int64 [..., k], -1 where not valid

    @classmethod
    def take(cls, slot, score, valid, emb, identity) -> "Mined":
        """Build from bank rows: look up embeddings and identities of the valid slots."""
        slot = torch.where(valid, slot, -1)
        safe = slot.clamp_min(0)
        return cls(slot, torch.where(valid, score, float("nan")), valid,
                   emb[safe] * valid[..., None], torch.where(valid, identity[safe], -1))  # fmt: skip

    def reshape(self, *lead: int) -> "Mined":
        k = self.slot.shape[-1]
        return Mined(self.slot.reshape(*lead, k), self.score.reshape(*lead, k), self.valid.reshape(*lead, k),
                     self.embedding.reshape(*lead, k, self.embedding.shape[-1]), self.identity.reshape(*lead, k))  # fmt: skip


def _empty(q: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.full((q, k), -1, dtype=torch.long, device=device), torch.full((q, k), float("nan"), device=device),
            torch.zeros((q, k), dtype=torch.bool, device=device))  # fmt: skip


def _put(out, rows: torch.Tensor, scores: torch.Tensor, slots: torch.Tensor, keep: torch.Tensor, k: int) -> None:
    """Write into `out` (slots, scores, valid) for `rows` the first k kept candidates, in order."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
    width = k - order.shape[1]  # fewer candidates than k: pad
    for t, got, fill in zip(out, (slots, scores.float(), keep), (-1, float("nan"), False)):
        t[rows] = torch.nn.functional.pad(got.gather(1, order), (0, width), value=fill) if width else got.gather(1, order)


def cross_identity_positives(search, queries: torch.Tensor, query_identity: torch.Tensor, emb: torch.Tensor,
                             bank_identity: torch.Tensor, count: int, k: int, margin: int | None = None,
                             rounds: int = 1):  # fmt: skip
    """(slots, scores, valid) [Q, k]: per query, the k best-scoring bank rows whose identity
    differs from the query's, best first. `search(queries, n) -> (scores, slots)` is one of the
    searches above; it is asked for k + margin (default 3k) and, for the queries left with fewer
    than k, for twice as many, `rounds` times in all; queries still short (their identity fills
    their neighbourhood) get an exact search with their identity masked out, in torch. An exact
    search costs a scan of the bank whatever its width, so it takes one round; IVF, whose cost
    is the lists it probes, takes more."""
    out = _empty(queries.shape[0], k, queries.device)
    todo = torch.arange(queries.shape[0], device=queries.device)
    want = min(k + (2 * k if margin is None else margin), count)
    if not (k and count):
        return out
    for _ in range(rounds):
        if not todo.numel():
            return out
        s, i = search(queries[todo], want)
        keep = (i >= 0) & (bank_identity[i.clamp_min(0)] != query_identity[todo, None])
        done = (keep.sum(1) >= k) | (want >= count)
        _put(out, todo[done], s[done], i[done], keep[done], k)
        todo, want = todo[~done], min(2 * want, count)
    for rows in todo.split(64):
        s = queries[rows].float() @ emb[:count].T
        s.masked_fill_(bank_identity[:count][None, :] == query_identity[rows, None], float("-inf"))
        top, i = s.topk(min(k, count), dim=1)
        _put(out, rows, top, i, torch.isfinite(top), k)
    return out


def identity_hard_negatives(queries: torch.Tensor, query_identity: torch.Tensor, query_clip: torch.Tensor,
                            emb: torch.Tensor, identity: torch.Tensor, clip: torch.Tensor, count: int, k: int,
                            block: int = 1 << 24, nearest: bool = False):  # fmt: skip
    """(slots, scores, valid) [Q, k]: per query, bank rows of the same identity but another clip,
    lowest inner product first (highest first with `nearest`). Exact, in torch on the bank's
    device: the candidates are the bank rows of the queries' identities (few, where a dataset has
    many people), scored in blocks of queries of at most `block` scores."""
    out = _empty(queries.shape[0], k, queries.device)
    wanted, ids = query_identity.unique(), identity[:count]  # sorted; (torch.isin stalled for 100s of ms here)
    cand = (wanted[torch.searchsorted(wanted, ids).clamp_max(wanted.numel() - 1)] == ids).nonzero().squeeze(1)
    if not (k and cand.numel()):
        return out
    c_emb, c_id, c_clip = emb[cand], identity[cand], clip[cand]
    for rows in torch.arange(queries.shape[0], device=queries.device).split(max(1, block // cand.numel())):
        s = queries[rows].float() @ c_emb.T  # [r, C]
        other = (c_id[None, :] != query_identity[rows, None]) | (c_clip[None, :] == query_clip[rows, None])
        top, j = s.masked_fill_(other, -math.inf if nearest else math.inf).topk(min(k, cand.numel()), dim=1,
                                                                                 largest=nearest)  # fmt: skip
        _put(out, rows, top, cand[j], torch.isfinite(top), k)
    return out
