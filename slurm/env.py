"""SLURM's (or submitit's local executor's) view of a task, as torch.distributed's environment.

`python -m pretrain` sets its process group up from RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT (pretrain/distributed.py), as torchrun and the deepspeed launcher export them.
On SLURM they come from SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, the first host of
SLURM_JOB_NODELIST and a port derived from SLURM_JOB_ID, read through submitit's JobEnvironment
(which parses node lists such as `gpu[01-04,07]` and knows the local executor's variables).
"""

from __future__ import annotations

PORT_BASE, PORT_SPAN = 20000, 10000  # below Linux's ephemeral ports (32768+), which clients take


def master_port(job_id: str | int) -> int:
    """The same on every task of a job and across its requeues; jobs whose ids differ by less
    than PORT_SPAN never share one."""
    return PORT_BASE + int(str(job_id).split("_")[0]) % PORT_SPAN


def distributed_env(job=None) -> dict[str, str]:
    """The torch.distributed variables for this task (inside a submitit job)."""
    from submitit import JobEnvironment

    job = job or JobEnvironment()
    nodes, tasks = job.num_nodes, job.num_tasks
    if tasks % nodes:
        raise ValueError(f"{tasks} tasks on {nodes} nodes: launch the same number of tasks on every node")
    # The local executor runs every task on this machine; on SLURM the first node hosts rank 0.
    master = "127.0.0.1" if job.cluster == "local" else job.hostnames[0]
    return {
        "RANK": str(job.global_rank),
        "LOCAL_RANK": str(job.local_rank),
        "WORLD_SIZE": str(tasks),
        "LOCAL_WORLD_SIZE": str(tasks // nodes),
        "GROUP_RANK": str(job.node),
        "NODE_RANK": str(job.node),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(master_port(job.raw_job_id)),
    }
