"""The memory bank and FAISS mining (issue 7): identity rules of the miners, exact search equal to
torch's brute force, IVF recall, the FIFO, gathering from two ranks, exact resumption and the
identity fallback. Real FAISS throughout; the two-rank test runs two gloo processes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pretrain.bank import MemoryBank
from pretrain.distributed import free_port
from pretrain.mining import torch_search

DIM = 32


def unit(*shape, gen) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


def filled_bank(n: int, identities: torch.Tensor, gen, capacity: int | None = None, **kw) -> MemoryBank:
    bank = MemoryBank(capacity or n, DIM, "cpu", **kw)
    bank.add(unit(n, DIM, gen=gen), identities, video=torch.arange(n) // 4, clip=torch.arange(n) // 2)
    return bank


def masked_topk(q, emb, mask, k, largest=True):
    """Brute force: top-k of q @ emb.T among entries where mask is True."""
    s = (q @ emb.T).masked_fill(~mask, float("-inf") if largest else float("inf"))
    return s.topk(k, dim=1, largest=largest)


def test_positives_never_share_the_anchor_identity():
    gen = torch.Generator().manual_seed(0)
    # three identities, one holding 90% of the bank: its anchors must search past many of their own
    ident = torch.where(torch.rand(3000, generator=gen) < 0.9, 0, torch.randint(1, 3, (3000,), generator=gen))
    bank = filled_bank(3000, ident, gen)
    anchors, anchor_id = unit(400, DIM, gen=gen), torch.randint(0, 3, (400,), generator=gen)
    pos = bank.mine(anchors, anchor_id, 10, negatives=0).positives
    assert pos.valid.all()
    assert (pos.identity != anchor_id[:, None]).all()
    assert (bank.identity[pos.slot] != anchor_id[:, None]).all()
    # and they are the nearest such entries: equal to a masked brute-force search
    ref, _ = masked_topk(anchors, bank.emb, bank.identity[None, :] != anchor_id[:, None], 10)
    torch.testing.assert_close(pos.score, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(pos.embedding, bank.emb[pos.slot])


def test_positives_fewer_than_k_are_masked():
    gen = torch.Generator().manual_seed(1)
    ident = torch.zeros(500, dtype=torch.long)
    ident[[7, 99, 300]] = 5  # only three entries of another identity
    bank = filled_bank(500, ident, gen)
    pos = bank.mine(unit(4, DIM, gen=gen), torch.zeros(4, dtype=torch.long), 8, negatives=0).positives
    assert pos.valid.sum(1).tolist() == [3] * 4
    assert sorted(pos.slot[0, :3].tolist()) == [7, 99, 300] and (pos.slot[:, 3:] == -1).all()
    assert pos.score[:, 3:].isnan().all() and (pos.embedding[:, 3:] == 0).all()


def test_exact_faiss_equals_torch_brute_force():
    gen = torch.Generator().manual_seed(2)
    bank = filled_bank(5000, torch.randint(0, 50, (5000,), generator=gen), gen, capacity=6000, index="flat")
    q = unit(100, DIM, gen=gen)
    scores, slots = bank.search(q, 20)
    ref_scores, ref_slots = torch_search(q, bank.emb[: bank.count], 20)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    same = slots == ref_slots
    assert same.float().mean() > 0.99  # ties aside: where they differ, the scores are equal
    torch.testing.assert_close((q[:, None] * bank.emb[slots]).sum(-1)[~same], ref_scores[~same], atol=1e-5, rtol=0)
    assert slots.max() < bank.count  # never an empty slot


def clustered(n, centres, gen, noise=0.15):
    c = centres[torch.randint(0, centres.shape[0], (n,), generator=gen)]
    return F.normalize(c + noise * torch.randn(n, DIM, generator=gen) / DIM**0.5, dim=1)


def test_ivf_recall_on_clustered_data():
    gen = torch.Generator().manual_seed(3)
    centres = unit(64, DIM, gen=gen)
    bank = MemoryBank(20000, DIM, "cpu", index="ivf", nlist=64, nprobe=8, threads=1)
    for _ in range(5):
        bank.add(clustered(4000, centres, gen), torch.randint(0, 100, (4000,), generator=gen))
    assert bank.ivf.index is not None and bank.ivf.index.ntotal == 20000
    q = clustered(200, centres, gen)
    _, approx = bank.search(q, 10)
    _, exact = bank.search(q, 10, exact=True)
    recall = sum(len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist())) / exact.numel()
    assert recall > 0.9, recall


def test_fifo_order_and_capacity():
    bank = MemoryBank(10, DIM, "cpu")
    rows = [F.normalize(torch.randn(4, DIM), dim=1) for _ in range(3)]
    for i, r in enumerate(rows):
        bank.add(r, torch.full((4,), i), clip=torch.arange(4) + 10 * i)
    assert (bank.count, bank.ptr, bank.steps) == (10, 2, 3)
    # slots 0..3 batch 0, 4..7 batch 1, 8..9 batch 2's first two, its last two overwrote slots 0, 1
    assert bank.clip.tolist() == [22, 23, 2, 3, 10, 11, 12, 13, 20, 21]
    torch.testing.assert_close(bank.emb[:2], rows[2][2:])
    # one add larger than the bank keeps its newest rows
    big = F.normalize(torch.randn(25, DIM), dim=1)
    bank.add(big, torch.zeros(25), clip=torch.arange(25))
    assert bank.count == 10 and sorted(bank.clip.tolist()) == list(range(15, 25))
    torch.testing.assert_close(bank.emb, big[bank.clip])


@pytest.mark.parametrize("negatives_from", ["nearest", "farthest"])
def test_identity_hard_negatives_same_identity_other_clip_nearest_or_farthest(negatives_from):
    with pytest.raises(ValueError, match="negatives_from"):
        MemoryBank(8, DIM, "cpu", negatives_from="random")
    gen = torch.Generator().manual_seed(4)
    bank = filled_bank(2000, torch.randint(0, 6, (2000,), generator=gen), gen, negatives_from=negatives_from)
    q, qid, qclip = unit(50, DIM, gen=gen), torch.randint(0, 6, (50,), generator=gen), torch.randint(0, 1000, (50,), generator=gen)
    neg = bank.mine(q, qid, 2, clip=qclip, negatives=5).negatives
    assert neg.valid.all()
    assert (bank.identity[neg.slot] == qid[:, None]).all() and (bank.clip[neg.slot] != qclip[:, None]).all()
    mask = (bank.identity[None, :] == qid[:, None]) & (bank.clip[None, :] != qclip[:, None])
    ref, _ = masked_topk(q, bank.emb, mask, 5, largest=negatives_from == "nearest")
    torch.testing.assert_close(neg.score, ref, atol=1e-5, rtol=0)


def test_per_clip_ids_broadcast_to_frames():
    gen = torch.Generator().manual_seed(5)
    bank = MemoryBank(256, DIM, "cpu")
    z = torch.randn(4, 6, DIM, generator=gen)  # [clips, frames, D], ids per clip
    bank.add(z, torch.tensor([1, 2, 3, 1]), video=torch.arange(4), clip=torch.arange(4), valid=torch.tensor([1, 1, 1, 0]).bool())
    assert bank.count == 18 and bank.identity[:18].tolist() == [1] * 6 + [2] * 6 + [3] * 6
    mined = bank.mine(z, torch.tensor([1, 2, 3, 1]), 3, clip=torch.arange(4), negatives=2)
    assert mined.positives.slot.shape == (4, 6, 3) and mined.positives.embedding.shape == (4, 6, 3, DIM)
    assert (mined.positives.identity != torch.tensor([1, 2, 3, 1])[:, None, None]).all()
    # clip 0's only same-identity rows are its own frames: no negatives; clip 3 (padding) finds clip 0's
    assert not mined.negatives.valid[0].any() and mined.negatives.valid[3].all()


def test_identity_fallback_to_video(caplog):
    gen = torch.Generator().manual_seed(6)
    bank = MemoryBank(100, DIM, "cpu")
    video = torch.arange(40) // 10
    with caplog.at_level(logging.WARNING, logger="pretrain.bank"):
        bank.add(unit(40, DIM, gen=gen), torch.full((40,), -1), video=video, clip=torch.arange(40))
    assert "video ids stand in" in caplog.text
    assert bank.identity_source == "video" and bank.identity[:40].tolist() == video.tolist()
    pos = bank.mine(unit(8, DIM, gen=gen), torch.full((8,), -1), 5, video=torch.arange(8) % 4, negatives=0).positives
    assert (pos.identity != (torch.arange(8) % 4)[:, None]).all()
    bank.add(unit(2, DIM, gen=gen), torch.tensor([7, 8]), video=torch.tensor([0, 0]))
    assert bank.identity_source == "identity+video"
    strict = MemoryBank(100, DIM, "cpu", identity_fallback="none")
    with pytest.raises(ValueError, match="without identity"):
        strict.add(unit(2, DIM, gen=gen), torch.full((2,), -1), video=torch.zeros(2))


def _steps(bank, gen, steps, centres):
    """Add a batch then mine, `steps` times; returns what was mined."""
    out = []
    for _ in range(steps):
        ident = torch.randint(0, 20, (64,), generator=gen)
        bank.add(clustered(64, centres, gen), ident, clip=torch.randint(0, 10**6, (64,), generator=gen))
        q, qid = clustered(16, centres, gen), torch.randint(0, 20, (16,), generator=gen)
        m = bank.mine(q, qid, 4, clip=torch.arange(16), negatives=2)
        out.append((m.positives.slot, m.positives.score, m.negatives.slot))
    return out


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_resume_from_state_dict_is_exact(tmp_path, index):
    kw = dict(index=index, nlist=16, nprobe=2, refresh_every=3, threads=1)
    centres = unit(16, DIM, gen=torch.Generator().manual_seed(9))
    whole = _steps(MemoryBank(1000, DIM, "cpu", **kw), torch.Generator().manual_seed(7), 24, centres)
    gen = torch.Generator().manual_seed(7)
    first = MemoryBank(1000, DIM, "cpu", **kw)
    before = _steps(first, gen, 13, centres)
    if index == "ivf":
        assert first.ivf.index is not None  # trained at steps 10 and 13, retrained after resume at 16, 19, 22
    save_file(first.state_dict(), tmp_path / "bank.safetensors")  # tensors only: a checkpoint can hold it
    resumed = MemoryBank(1000, DIM, "cpu", **kw)
    resumed.load_state_dict(load_file(tmp_path / "bank.safetensors"))
    after = _steps(resumed, gen, 11, centres)
    for got, want in zip(before + after, whole):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, equal_nan=True)


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        bank = MemoryBank(64, DIM, "cpu", index="ivf", nlist=1, nprobe=1, threads=1)
        n = 3 + 2 * rank  # ranks may add different row counts
        rows = torch.full((n, DIM), float(rank + 1))
        bank.add(rows, torch.full((n,), rank), video=torch.full((n,), 10 + rank), clip=torch.arange(n) + 100 * rank)
        for step in range(6):  # 8 rows a step: the IVF index trains (on rank 0) once 40 rows are in
            bank.add(torch.randn(n, DIM), torch.full((n,), rank), clip=torch.arange(n) + 1000 * step)
        save_file(bank.state_dict(), f"{folder}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_bank_gathers_from_two_ranks(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    banks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for key in banks[0]:
        torch.testing.assert_close(banks[0][key], banks[1][key])  # the same bank, IVF bytes included
    b = banks[0]
    assert b["clip"][:8].tolist() == [0, 1, 2, 100, 101, 102, 103, 104]  # rank 0's rows, then rank 1's
    assert b["identity"][:8].tolist() == [0] * 3 + [1] * 5 and b["video"][:8].tolist() == [10] * 3 + [11] * 5
    torch.testing.assert_close(b["emb"][:3], torch.full((3, DIM), DIM**-0.5))  # L2-normalised
    assert "ivf.trained" in b and int(b["counters"][1]) == 56


class _MinesInWorker(torch.utils.data.Dataset):
    def __init__(self, bank):
        self.bank = bank

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.bank.search(torch.randn(1, DIM), 1)[0]


def test_faiss_threads_explicit_and_refused_in_dataloader_workers():
    bank = filled_bank(50, torch.zeros(50, dtype=torch.long), torch.Generator().manual_seed(8), threads=1)
    before = torch.get_num_threads()
    assert bank.search(torch.randn(1, DIM), 1)[1].shape == (1, 1)
    assert torch.get_num_threads() == before  # FAISS's count does not leak into torch's (one OpenMP runtime)
    loader = torch.utils.data.DataLoader(_MinesInWorker(bank), num_workers=1, multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        next(iter(loader))
