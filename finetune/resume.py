"""Whether a checkpoint in a run directory belongs to the run now starting.

A checkpoint records the flattened, resolved config it was made under, less the keys that may
change without changing what is computed; a run resumes only from a checkpoint whose record is
its own and otherwise is refused with the list of differences. Nothing of auforge is imported
here, so that pretraining can share these helpers.
"""

from __future__ import annotations

from typing import Any, Iterable

from omegaconf import OmegaConf

__all__ = ["config_view", "conflicts"]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_view(cfg, may_change: Iterable[str]) -> dict[str, Any]:
    """`{"a.b": value}` of `cfg` (a DictConfig or a plain dict), leaving out the keys in
    `may_change` and everything below them."""
    flat = _flatten(cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True))
    skip = tuple(may_change)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in skip)}


def conflicts(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two views, one 'key: saved -> now' a line."""
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in differ]
