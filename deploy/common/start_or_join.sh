#!/usr/bin/env bash
# One worker of a lora_sweep study started by a scheduler (a Slurm array task, a pod of an Indexed
# Kubernetes Job). Index 0 starts the study, or resumes it, with `run`, and runs trials like the
# others. Every other index waits until the study is in the storage, then joins it with `worker`,
# which never creates a study: a worker with a mistyped name fails instead of starting a second
# study. The storage (PostgreSQL) is the only coordinator; this script only waits.
#
#   usage: start_or_join.sh STUDY_YAML INDEX [key.sub=value ...]
#   PYTHON        the interpreter with lora_sweep installed (default: python)
#   STUDY_WAIT_S  seconds a joining worker waits for the study (default 1800); then `worker` runs
#                 anyway and says what is missing
#   STUDY_POLL_S  seconds between looks (default 15)
#
# What was run where: tests/test_deploy.py runs it on one machine against a PostgreSQL server the
# tests start (a joining worker finds the study and joins; or, waiting 0 s, gets `worker`'s own
# error). It has not run on a Slurm or Kubernetes cluster.
set -euo pipefail

config=${1:?usage: start_or_join.sh STUDY_YAML INDEX [key.sub=value ...]}
index=${2:?usage: start_or_join.sh STUDY_YAML INDEX [key.sub=value ...]}
shift 2
python=${PYTHON:-python}

if [[ $index == 0 ]]; then
    exec "$python" -m lora_sweep run "$config" "$@"
fi

# Is the study there (exit 0), not yet (1), or is the config itself wrong (2: waiting will not
# help; `worker` then says what is wrong)? Under the study's claim (the lock `run` creates a
# study under), so that this look never opens a new database's tables while the first worker
# creates them.
study_exists() {
    "$python" - "$config" "$@" <<'PY'
import sys

from lora_sweep.config.job import ConfigError
from lora_sweep.config.study import load_study
from lora_sweep.sweep.storage import StudyClaim, load_existing

try:
    config = load_study(sys.argv[1], sys.argv[2:])
except ConfigError:
    sys.exit(2)
try:
    with StudyClaim(config.storage_url, config.study.name):
        load_existing(config.storage_url, config.study.name)
except ConfigError as exc:
    print(f"waiting for the first worker to create the study: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

deadline=$((SECONDS + ${STUDY_WAIT_S:-1800}))
while true; do
    found=0
    study_exists "$@" || found=$?
    if ((found != 1 || SECONDS >= deadline)); then
        break
    fi
    sleep "${STUDY_POLL_S:-15}"
done
exec "$python" -m lora_sweep worker "$config" "$@"
