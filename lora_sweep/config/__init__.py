"""The shared base: typed configuration, every problem reported at once.

    job.py     the job config (one fine-tune): its groups and fields, under the reference's names
    study.py   the study config (a sweep): storage, budget, sampler, pruner, slots, launcher, Ray
    space.py   the search space: its names, distributions, checks, and how a trial's params apply
    files.py   YAML files, `key=value` overrides, the AI Toolkit's flat lora.yaml, error lines, and
               the explicit checks of a loaded config (its user scorer imported)
    places.py  where a study lives: storage URLs and folders, checked before anything is written
    splits.py  data.dataset's folder as train / test files (train.json, a DatasetDict's or Parquet splits)
"""
