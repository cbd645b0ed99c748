"""`python -m pretrain.bench mining`: the memory bank's cost. Per bank size: FAISS exact search
against torch matmul + top-k in the same run, the IVF index's search time, training time and
recall@k against exact, a full mining step (add the global batch, mine positives and negatives)
and its share of the baseline training step (`step.make_baseline`), and the bank's bytes per
entry."""

from __future__ import annotations

import argparse

from pretrain.bench.config import add_shape_flags
from pretrain.bench.step import make_baseline
from pretrain.provenance import view_length
from shards.timing import Clock, median_time


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_shape_flags(p)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--bank-sizes", default="",
                   help="comma-separated bank sizes (default 16384,65536,262144, and 1M, 10M on a GPU)")
    p.add_argument("--default-bank", type=int, default=16384,
                   help="the bank size the 10%% target is for (MiningConfig.capacity)")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension (model.embed_dim)")
    p.add_argument("--k", type=int, default=8, help="cross-identity positives per anchor")
    p.add_argument("--negatives", type=int, default=4, help="identity-hard negatives per anchor")
    p.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query")
    p.add_argument("--faiss-threads", type=int, default=1, help="FAISS OpenMP threads (0: torch's count)")  # fmt: skip


def synthetic_embeddings(n: int, dim: int, gen, device, states: int = 512, identities: int = 2000):
    """Unit embeddings clustered by AU state, each shifted towards its identity's direction (the
    identity bias that cross-identity mining works against); returns (rows, identity ids)."""
    import torch

    g = torch.Generator().manual_seed(12345)  # the same states and identities in every call
    centres, people = torch.randn(states, dim, generator=g), torch.randn(identities, dim, generator=g)
    s, who = torch.randint(0, states, (n,), generator=gen), torch.randint(0, identities, (n,), generator=gen)
    rows = centres[s] + 0.5 * people[who] + 0.5 * torch.randn(n, dim, generator=gen)
    return torch.nn.functional.normalize(rows, dim=1).to(device), who.to(device)


def main(args: argparse.Namespace) -> dict:
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
    length = view_length(args.frames)
    anchors = 2 * args.batch * length
    sizes = [int(float(x)) for x in args.bank_sizes.split(",") if x] or (
        [16384, 65536, 262144] + ([1_000_000, 10_000_000] if cuda else []))  # fmt: skip

    def timed(fn) -> float:
        return median_time(fn, args.steps, args.warmup, clock)

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
    width = 3 * args.k  # the first search of mining asks for k + margin = 3k
    for n in sizes:
        bank = MemoryBank(n, args.dim, device, index="flat", threads=args.faiss_threads)
        for start in range(0, n, 1 << 18):
            rows, who = synthetic_embeddings(min(1 << 18, n - start), args.dim, gen, device)
            bank.add(rows, who, clip=torch.arange(rows.shape[0], device=device) + start)
        q, qid = synthetic_embeddings(anchors, args.dim, gen, device)
        qclip = torch.arange(anchors, device=device) // length  # frames of one clip share its id
        exact = timed(lambda: bank.search(q, width, exact=True))
        brute = timed(lambda: torch_search(q, bank.emb[: bank.count], width))
        ivf = IVFSearch(args.dim, default_nlist(n), args.nprobe, threads=args.faiss_threads)
        train = clock.time(lambda: ivf.train(bank.emb, bank.count, 0))
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
