"""Checkpoints that are complete or absent, and automatic resumption from the newest good one.

Layout under `RUN_DIR/checkpoints/`:

    step_000100/            DeepSpeed's files (model, optimizer shards of every ZeRO stage)
                 rank_00000.json ...   each rank's own state: step, samples seen, data stream
                                        position, torch/numpy/python RNG states
                 bank.safetensors       state every rank holds alike (the memory bank), by rank 0
                 run.json               the config entries resumption depends on, and their digest
                 COMPLETE               written last, by rank 0, once every rank has saved
    complete.json           the complete tags, oldest first (replaced atomically)

A crash while saving leaves a tag without COMPLETE, which resumption ignores and the next save
removes; `complete.json` still names the previous checkpoint. When the newest complete checkpoint
cannot be loaded, resumption says which file failed and falls back to the one before.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist

from pretrain.config import digest, resume_conflicts
from pretrain.distributed import barrier
from shards.atomic import atomic_open, write_text_atomic

log = logging.getLogger("pretrain.checkpoint")
INDEX = "complete.json"


def rng_state() -> dict:
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), np.uint8).copy()))
    np.random.set_state(("MT19937", np.array(state["numpy"], np.uint32), state["numpy_pos"], 0, 0.0))
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["cuda"]), np.uint8).copy()))


class ResumeRefused(SystemExit):
    """The run directory holds a checkpoint of a run with another config."""


class Checkpointer:
    def __init__(self, run_dir: str | Path, keep: int, rank: int, config_view: dict):
        self.root = Path(run_dir) / "checkpoints"
        self.keep, self.rank, self.view = max(1, keep), rank, config_view
        self.root.mkdir(parents=True, exist_ok=True)
        self.resumed_from: Path | None = None

    def complete_tags(self) -> list[str]:
        try:
            tags = json.loads((self.root / INDEX).read_text())
        except FileNotFoundError:
            return []
        return [t for t in tags if (self.root / t / "COMPLETE").exists()]

    def save(self, engine, step: int, rank_state: dict, shared: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        """Every rank calls this; returns when the checkpoint is complete on disk. `shared`:
        state that every rank holds alike (the memory bank), written once by rank 0 as
        NAME.safetensors."""
        tag = f"step_{step:06d}"
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        write_text_atomic(self.root / tag / f"rank_{self.rank:05d}.json", json.dumps({**rank_state, "rng": rng_state()}))
        barrier()  # every rank's files are written
        if self.rank == 0:
            for name, tensors in (shared or {}).items():
                with atomic_open(self.root / tag / f"{name}.safetensors") as f:
                    f.write(safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
            write_text_atomic(self.root / tag / "run.json", json.dumps({"config": self.view, "digest": digest(self.view)}))
            write_text_atomic(self.root / tag / "COMPLETE", f"{step}\n")
            tags = [t for t in self.complete_tags() if t != tag] + [tag]
            keep, drop = tags[-self.keep :], tags[: -self.keep]
            write_text_atomic(self.root / INDEX, json.dumps(keep))
            for old in drop + self._incomplete(keep):
                shutil.rmtree(self.root / old, ignore_errors=True)
        barrier()

    def load_shared(self, name: str) -> dict[str, torch.Tensor]:
        """The `shared` state NAME saved with the checkpoint that `resume` loaded."""
        path = self.resumed_from / f"{name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the checkpoint has no {name} state; this run needs it to resume exactly")
        return safetensors.torch.load_file(str(path))

    def _incomplete(self, keep: list[str]) -> list[str]:
        return [p.name for p in self.root.glob("step_*") if p.is_dir() and p.name not in keep]

    def resume(self, engine) -> dict | None:
        """Load the newest loadable complete checkpoint into `engine` (and the RNGs); returns
        this rank's saved state, or None when there is nothing to resume."""
        tags = self.complete_tags()
        if not tags:
            return None
        saved = json.loads((self.root / tags[-1] / "run.json").read_text())["config"]
        conflicts = resume_conflicts(saved, self.view)
        if conflicts:
            raise ResumeRefused(
                f"{self.root.parent} holds a checkpoint of a run with another config; resuming it "
                "would not continue that run. Changed:\n  " + "\n  ".join(conflicts)
                + "\nUse another train.run_dir, or restore these settings."
            )  # fmt: skip
        for tag in reversed(tags):
            try:
                state = json.loads((self.root / tag / f"rank_{self.rank:05d}.json").read_text())
                _, client = engine.load_checkpoint(str(self.root), tag=tag, load_lr_scheduler_states=False)
                if client is None:
                    raise RuntimeError("DeepSpeed found no checkpoint files")
            except Exception as e:  # noqa: BLE001 - any failure to load means: try the one before
                ok = torch.tensor([0])
                log.error("checkpoint %s is unreadable (%s: %s); trying the one before", self.root / tag, type(e).__name__, e)
            else:
                ok = torch.tensor([1])
            if dist.is_initialized():
                dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank must load the same tag
            if ok.item():
                set_rng_state(state["rng"])
                self.resumed_from = self.root / tag
                log.info("resumed from %s", self.resumed_from)
                return state
        raise RuntimeError(f"no checkpoint under {self.root} could be loaded: {tags}")
