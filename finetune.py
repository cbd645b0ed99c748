"""`accelerate launch finetune.py key=value ...` (or `python finetune.py ...`) from the repository root.

Hydra config: configs/finetune.yaml; see finetune/train.py for the job.
"""

import sys

import hydra

from finetune.config import CONFIG_DIR, log_to_stdout_off_rank_zero, register

register()


@hydra.main(config_path=CONFIG_DIR, config_name="finetune", version_base=None)
def main(cfg) -> None:
    from finetune.train import fit

    fit(cfg)


if __name__ == "__main__":
    log_to_stdout_off_rank_zero(sys.argv)
    main()
