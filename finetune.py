"""`accelerate launch finetune.py key=value ...` (or `python finetune.py ...`) from the repository root.

Hydra config: configs/finetune.yaml; see finetune/train.py for the job.
"""

import os
import sys
from pathlib import Path

import hydra

from finetune.config import register

register()


@hydra.main(config_path=str(Path(__file__).resolve().parent / "configs"), config_name="finetune", version_base=None)
def main(cfg) -> None:
    from finetune.train import fit

    fit(cfg)


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) != 0:
        sys.argv += ["hydra/job_logging=stdout"]  # one rank writes the run's files
    main()
