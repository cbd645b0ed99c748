"""SLURM: submitit launchers, SLURM environment to torch.distributed, requeue, a local test
cluster. Filled by the SLURM issue."""
