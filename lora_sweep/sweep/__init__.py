"""The sweep: an Optuna study whose trials are launched jobs.

    loop.py       `run` / `worker`: study set-up, the slots' loop, stopping, the summary
    trial.py      one trial's whole life: ask -> heartbeat -> launch -> follow -> tell or requeue
    search.py     the sampler (seeded per draw) and the pruner, from the config
    storage.py    optuna storages, the workers' claim, trial owners, the study's folder
    records.py    what the sweep records on its study, and how the views read it back
    holdout.py    the winner scored once on test.json, bootstrap intervals
    warmstart.py  an earlier study's trials seed the sampler
    trackers.py   the sweep's side of MLflow / W&B / TensorBoard
"""
