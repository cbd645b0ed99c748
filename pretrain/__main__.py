"""`python -m pretrain [hydra overrides]` (also under torchrun, the deepspeed launcher and SLURM)."""

from __future__ import annotations

import os
import sys

import hydra

from finetune.config import CONFIG_DIR, log_to_stdout_off_rank_zero
from pretrain.config import register

register()


@hydra.main(config_path=CONFIG_DIR, config_name="pretrain", version_base=None)
def main(cfg) -> None:
    from pretrain.config import ConfigError
    from pretrain.train import STOPPED_EXIT, fit

    try:
        result = fit(cfg)
    except ConfigError as e:  # a value that cannot run: one line naming the key, not a traceback
        print(f"python -m pretrain: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    if "stopped_at" in result:
        sys.exit(STOPPED_EXIT)


if __name__ == "__main__":
    # The deepspeed launcher appends --local_rank=N (it also exports LOCAL_RANK); Hydra takes
    # only overrides.
    for arg in [a for a in sys.argv[1:] if a.startswith("--local_rank")]:
        sys.argv.remove(arg)
        os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
    log_to_stdout_off_rank_zero(sys.argv)
    main()
