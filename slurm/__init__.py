"""SLURM: submitit launchers (`python -m slurm pretrain|shards|finetune`), SLURM's variables as
torch.distributed's environment (slurm.env), bounded requeue on preemption and time limits with
resumption from the run's own checkpoints (slurm.task), and a two-node test cluster on one
machine (slurm/local_cluster.sh)."""
