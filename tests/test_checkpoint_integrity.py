"""Checkpoints are verified before they are trusted, and one start at a time holds a run
directory: real DeepSpeed engines (a tiny MLP, gloo, in this process or in two spawned ranks)
saved and resumed by pretrain.checkpoint.Checkpointer, damaged the ways disks and people damage
them, and a second process that tries to take a held run directory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain import checkpoint as ck
from shards import runlock

ROOT = Path(__file__).resolve().parents[1]
VIEW = {"model.arch": "mlp", "optim.lr": 0.01}
CONFIG = {"train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True, "steps_per_print": 1 << 30}


def make_engine(seed: int, stage: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCAL_RANK", os.environ.get("LOCAL_RANK", "0"))  # DeepSpeed insists; no launcher here
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                          config={**CONFIG, "zero_optimization": {"stage": stage}})  # fmt: skip
    return engine


def weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def train_and_save(run_dir: Path, engine, steps: int) -> dict[int, dict[str, torch.Tensor]]:
    """One optimizer step then a checkpoint, `steps` times; returns the weights saved at each step."""
    ckpt, saved = ck.Checkpointer(run_dir, keep=2, rank=0, config_view=VIEW), {}
    for step in range(1, steps + 1):
        loss = engine(torch.randn(2, 64)).pow(2).mean()
        engine.backward(loss)
        engine.step()
        ckpt.save(engine, step, {"step": step})
        saved[step] = weights(engine)
    return saved


def resume(run_dir: Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """A fresh engine (other initial weights) resumed from `run_dir`: (saved state, its weights)."""
    engine = make_engine(seed=99)
    state = ck.Checkpointer(run_dir, keep=2, rank=0, config_view=VIEW).resume(engine)
    return state, weights(engine)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    # A process group of one without the launcher's environment variables: a MASTER_PORT left in
    # os.environ would reach the `python -m pretrain` subprocesses of other test modules.
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


@pytest.fixture
def run_dir(tmp_path):
    yield tmp_path / "run"
    runlock.unlock_run_dir(tmp_path / "run")  # resume took it, for this process's life otherwise


@pytest.fixture
def two_saved(run_dir) -> dict[int, dict[str, torch.Tensor]]:
    return train_and_save(run_dir, make_engine(seed=0), steps=2)


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


@pytest.mark.slow
def test_the_marker_records_every_file_with_its_sha256(run_dir, two_saved):
    folder = checkpoint(run_dir, 2)
    files = json.loads((folder / "COMPLETE").read_text())["files"]
    on_disk = {p.name for p in folder.iterdir()} - {"COMPLETE"}
    assert set(files) == on_disk == {"mp_rank_00_model_states.pt", "rank_00000.json", "run.json"}
    for name, saved in files.items():
        data = (folder / name).read_bytes()
        assert saved == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.slow
def test_flipped_bytes_in_the_newest_model_states_fall_back_to_the_previous(run_dir, two_saved, caplog):
    """600 bytes flipped inside a weight tensor: torch.load reads them without complaint, so only
    the digest can tell; resumption takes step 1, with its weights, and says which file is bad."""
    model_file = checkpoint(run_dir, 2) / "mp_rank_00_model_states.pt"
    data = bytearray(model_file.read_bytes())
    start = data.find(two_saved[2]["0.weight"].numpy().tobytes())
    assert start >= 0, "the weight's bytes are not stored as they are in memory"
    for i in range(start + 1000, start + 1600):
        data[i] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint"):
        state, loaded = resume(run_dir)
    assert state["step"] == 1
    assert_same(loaded, two_saved[1])
    assert f"{model_file}: sha256" in warnings_of(caplog) and "step_000002 is unreadable" in warnings_of(caplog)


@pytest.mark.slow
def test_a_damaged_run_json_in_the_newest_falls_back_to_the_previous(run_dir, two_saved, caplog):
    (checkpoint(run_dir, 2) / "run.json").write_text('{"config": {"model.ar')  # cut short
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint"):
        state, loaded = resume(run_dir)
    assert state["step"] == 1
    assert_same(loaded, two_saved[1])
    assert f"{checkpoint(run_dir, 2) / 'run.json'}:" in warnings_of(caplog)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut short", "missing"])
def test_a_damaged_or_missing_index_is_rebuilt_from_the_markers(run_dir, two_saved, caplog, damage):
    index = run_dir / "checkpoints" / "complete.json"
    if damage == "missing":
        index.unlink()
    else:
        index.write_text('["step_000001", "step_0')
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint"):
        state, loaded = resume(run_dir)
    assert state["step"] == 2  # the newest: nothing was wrong with the checkpoints themselves
    assert_same(loaded, two_saved[2])
    assert f"{index}: " in warnings_of(caplog) and "rebuilt the index" in warnings_of(caplog)
    # the next save writes the index again, keeping the checkpoints it was rebuilt from
    engine = make_engine(seed=0)
    ck.Checkpointer(run_dir, keep=3, rank=0, config_view=VIEW).save(engine, 3, {"step": 3})
    assert json.loads(index.read_text()) == ["step_000001", "step_000002", "step_000003"]


@pytest.mark.slow
def test_when_every_checkpoint_is_damaged_resumption_stops_and_keeps_them(run_dir, two_saved, caplog):
    """Starting afresh would delete the damaged checkpoints at its first save (they are not in
    the new index), and a filesystem that failed for a moment would cost the whole run: refuse."""
    model_file = checkpoint(run_dir, 2) / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    (checkpoint(run_dir, 1) / "rank_00000.json").unlink()
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint"), pytest.raises(ck.NoUsableCheckpoint) as refused:
        resume(run_dir)
    message = str(refused.value)
    assert f"{model_file}: 1000 bytes" in message and f"{checkpoint(run_dir, 1) / 'rank_00000.json'}: missing" in message
    assert "Not starting afresh" in message
    assert checkpoint(run_dir, 1).exists() and checkpoint(run_dir, 2).exists()


@pytest.mark.slow
def test_a_marker_without_digests_still_resumes_unverified(run_dir, two_saved, caplog):
    (checkpoint(run_dir, 2) / "COMPLETE").write_text("2\n")  # as checkpoints were marked before digests
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint"):
        state, loaded = resume(run_dir)
    assert state["step"] == 2
    assert_same(loaded, two_saved[2])
    assert "records no digests" in warnings_of(caplog)


# ---------------------------------------------------------------- two ranks


def _rank(rank: int, folder: str) -> None:  # runs in a spawned process
    folder = Path(folder)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", store=dist.FileStore(str(folder / "store"), 2), rank=rank, world_size=2)
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("pretrain.checkpoint").addHandler(handler)
    run_dir = folder / "run"
    ckpt = ck.Checkpointer(run_dir, keep=2, rank=rank, config_view=VIEW)
    engine = make_engine(seed=0, stage=1)  # ZeRO-1: each rank saves its own optimizer partition
    for step in (1, 2):
        engine.backward(engine(torch.randn(2, 64)).pow(2).mean())
        engine.step()
        ckpt.save(engine, step, {"step": step, "rank": rank})
    if rank == 0:  # rank 1's partition of the newest checkpoint rots
        part = checkpoint(run_dir, 2) / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    dist.barrier()
    state = ck.Checkpointer(run_dir, keep=2, rank=rank, config_view=VIEW).resume(make_engine(seed=99, stage=1))
    marker = json.loads((checkpoint(run_dir, 2) / "COMPLETE").read_text())
    result = {"state": state, "files": sorted(marker["files"]), "warnings": messages}
    (folder / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_cover_every_partition_and_fall_back_together(tmp_path):
    """Rank 0 hashes the folder after every rank has saved, so rank 1's optimizer partition is
    in the marker; rank 0's verdict on it sends both ranks back to step 1."""
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["state"]["step"] for r in results] == [1, 1] and [r["state"]["rank"] for r in results] == [0, 1]
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "rank_00000.json", "rank_00001.json"} <= set(results[0]["files"])  # fmt: skip
    assert any("zero_pp_rank_1_mp_rank_00_optim_states.pt: sha256" in m for m in results[0]["warnings"])


# ---------------------------------------------------------------- one start per run directory

HOLDER = """
import os, sys, time
from shards.runlock import lock_run_dir
lock_run_dir(sys.argv[1])
worker = os.fork()  # as a DataLoader worker is forked: it must not keep the lock
if worker == 0:
    time.sleep(120)
    os._exit(0)
print(worker, flush=True)
time.sleep(120)
"""


def test_a_second_start_is_refused_naming_the_holder_until_the_holder_dies(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    worker = int(holder.stdout.readline())  # the lock is held from here on
    try:
        who = f"pid {holder.pid} on {socket.gethostname()}"
        with pytest.raises(runlock.RunInUse, match=who):
            runlock.lock_run_dir(run_dir)
        with pytest.raises(runlock.RunInUse, match=who):  # as train.py's start meets it: before any checkpoint is read
            ck.Checkpointer(run_dir, keep=2, rank=0, config_view=VIEW).resume(engine=None)
        holder.kill()  # SIGKILL: nothing unlocks, the lock file stays
        holder.wait()
        os.kill(worker, 0)  # its forked worker lives on
        runlock.lock_run_dir(run_dir)
        assert f"pid {os.getpid()} on " in (run_dir / "run.lock").read_text()
        runlock.lock_run_dir(run_dir)  # again in the same process: already held
    finally:
        holder.kill()
        os.kill(worker, signal.SIGKILL)
