"""The objectives' base class and registry: an objective is found by the name the config gives it."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.views import Encoded

OBJECTIVES: dict[str, type["Objective"]] = {}


class Objective(nn.Module):
    """A self-supervised objective: `forward(batch, encoded) -> {name: loss}`, every named loss
    logged, the one under the objective's own name weighted into the training loss. It owns its
    heads (never published). What it reads beyond pixels and time it declares here, so that a run
    is refused before it starts rather than failing at its first step:

    * `needs`: batch fields, e.g. "landmarks" (aligned ones: shards with landmarks, train.align);
    * `mines`: it reads `encoded.mining`, so the model keeps a memory bank and mines it each step;
    * `maps`: it reads the backbone's feature maps (`View.maps`), which the encoder then returns.
    """

    name: str = ""  # set by @register
    needs: tuple[str, ...] = ()
    mines: bool = False
    maps: bool = False

    def forward(self, batch, encoded: Encoded) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def register(name: str):
    def wrap(cls):
        if not issubclass(cls, Objective):
            raise TypeError(f"objective {name!r}: {cls.__name__} must subclass pretrain.objectives.Objective")
        OBJECTIVES[name] = cls
        cls.name = name
        return cls

    return wrap


def check_inputs(names, carried: set[str], where: str) -> None:
    """Refuse, before training starts, an objective that reads what the data does not carry (an
    objective's `needs`), naming what runs on such data instead."""
    from pretrain.config import ConfigError

    for name in names:
        missing = sorted(set(OBJECTIVES[name].needs if name in OBJECTIVES else ()) - carried)
        if missing:
            runnable = sorted(n for n, cls in OBJECTIVES.items() if set(cls.needs) <= carried)
            raise ConfigError(f"objective {name} needs {' and '.join(missing)}, which {where} does not give; "
                              f"objectives that run on it: {', '.join(runnable)} (e.g. objective=flow)")  # fmt: skip
