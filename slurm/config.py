"""Hydra configs composed at submission time, so that a misspelt key or a bad value is refused
before anything waits in the queue."""

from __future__ import annotations

from finetune.config import CONFIG_DIR


class BadOverrides(ValueError):
    pass


def compose(config_name: str, overrides: list[str]):
    """The job's config as the job will see it (struct mode: unknown keys are errors)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if config_name == "pretrain":
        from pretrain.config import register
    elif config_name == "study":
        from finetune.study import register
    else:
        from finetune.config import register
    register()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise BadOverrides(f"{config_name} overrides {' '.join(overrides) or '(none)'}: {e}") from None


def with_override(overrides: list[str], key: str, value) -> list[str]:
    """`overrides` with `key=value` in place of any setting of `key` (Hydra refuses two)."""
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    return [*kept, f"{key}={value}"]
