"""Launching a job and following its events, wherever it runs.

    local.py      `accelerate launch` (or a direct interpreter) on this machine, and `follow`, the
                  one loop that follows a job's events to its end, local or on Ray
    warm.py       the warm runner: imports once, forks a fresh process per single-process job
    ray_tasks.py  a job as a Ray task on a node of the cluster
"""
