"""Several workers on one study through a real PostgreSQL server: the multi-machine set-up,
with processes standing in for machines. The server is started here from the machine's
PostgreSQL binaries (`.ci/run` installs them); without them the test is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from helpers import REPO, load, run_module, study_tree, write_yaml
from lora_sweep.sweep.storage import load_existing

pytestmark = pytest.mark.integration  # worker processes, a PostgreSQL server


def test_workers_join_a_postgresql_study(postgres_url, tiny_llama, chat_data, tmp_path):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    # a worker waiting for the other's trial fails it once its heartbeat is late by the grace
    # period: on a loaded test machine 2 s can pass between beats, and this test is not about that
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=1, name=name, storage=postgres_url,
                      grace_period=30)
    config = write_yaml(tmp_path / "study.yaml", tree)
    first = run_module(["run", str(config)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    # two workers, as on two machines, share the rest of a 3-trial budget: a trial each, at once
    workers = [subprocess.Popen([sys.executable, "-m", "lora_sweep", "worker", str(config), "study.n_trials=3"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3  # no overshoot, no failure
    assert all(" COMPLETE " in err for _, err in outputs)  # each worker ran trials
    assert len({t.user_attrs["trial_dir"] for t in study.trials}) == 3


# A worker whose trials take no time: the claim (count the study's trials, then create the next)
# is all it does, so several of them started at the same instant race for the budget's last
# trials. A pause between the count and the creation stands for a slow sampler (GP, CMA-ES or
# TPE on a long history take seconds there), which widens the race.
QUICK_WORKER = """
import os, sys, threading, time
from pathlib import Path
from lora_sweep.config import space as S
from lora_sweep.config.study import load_study
from lora_sweep.sweep.search import make_pruner, make_sampler
from lora_sweep.sweep.loop import Sweep, start_study

class Quick(Sweep):
    def needs_trial(self):
        wanted = super().needs_trial()
        time.sleep(0.2)
        return wanted

    def run(self, trial, params, slot):
        self.study.tell(trial, 0.0)

config = load_study(sys.argv[1])
space = S.build_space(config)
study = start_study(config, space, make_sampler(config, space), make_pruner(config))
ready = Path(sys.argv[2])  # start together: once every worker has opened the study
(ready / str(os.getpid())).touch()
deadline = time.time() + 60  # a worker that crashed never comes
while len(list(ready.iterdir())) < int(sys.argv[3]) and time.time() < deadline:
    time.sleep(0.01)
quick = Quick(config, space, study)
slots = [threading.Thread(target=quick.work, args=(None, None)) for _ in range(config.study.parallel)]
for slot in slots:
    slot.start()
for slot in slots:
    slot.join()
"""


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def race_storage(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path}/race.db" if request.param == "sqlite" else str(tmp_path / "race.log")


def test_workers_started_together_never_overshoot_the_budget(race_storage, tiny_llama, chat_data, tmp_path):
    name = f"race-{uuid.uuid4().hex[:8]}"
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=12, name=name, storage=race_storage)
    config = write_yaml(tmp_path / "study.yaml", tree)
    (tmp_path / "ready").mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", QUICK_WORKER, str(config), str(tmp_path / "ready"), "4"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, "\n".join(errors)[-3000:]
    study = load_existing(race_storage, name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 12
    # the study and its defaults trial were created once, by whichever worker came first
    assert [t.number for t in study.trials if t.user_attrs.get("baseline") == "documented defaults"] == [0]


# each storage (whose claim makes the trial count every worker sees) and each sampler, at least once
@pytest.mark.parametrize(("race_storage", "sampler"), [("sqlite", "tpe"), ("sqlite", "random"), ("journal", "random"),
                                                        ("postgresql", "tpe")], indirect=["race_storage"])
def test_workers_sharing_a_seed_never_draw_the_same_params(race_storage, sampler, tiny_llama, chat_data, tmp_path):
    # two workers of two slots each, one study seed (the demo and the deploy recipes set one):
    # each draw has its own stream, so no two trials share their params
    name = f"seeds-{uuid.uuid4().hex[:8]}"
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", n_trials=6, name=name, storage=race_storage,
                      parallel=2, sampler={"type": sampler, "seed": 0})
    config = write_yaml(tmp_path / "study.yaml", tree)
    (tmp_path / "ready").mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", QUICK_WORKER, str(config), str(tmp_path / "ready"), "2"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(errors)[-3000:]
    trials = load_existing(race_storage, name).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    drawn = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(drawn)) == 6, drawn


def test_one_worker_repeats_its_sweep_from_the_same_seed(tiny_llama, chat_data, tmp_path):
    params = []
    for run in ("a", "b"):
        tree = study_tree(tiny_llama, chat_data, tmp_path / run, n_trials=4, sampler={"type": "tpe", "seed": 7})
        config = write_yaml(tmp_path / f"{run}.yaml", tree)
        (tmp_path / run / "ready").mkdir(parents=True)
        worker = subprocess.run([sys.executable, "-c", QUICK_WORKER, str(config), str(tmp_path / run / "ready"), "1"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr[-3000:]
        params.append([t.params for t in load(tmp_path / run).trials])
    assert len(params[0]) == 4 and params[0] == params[1]
    assert len({json.dumps(p, sort_keys=True) for p in params[0]}) == 4


def test_a_trials_end_is_one_database_write(race_storage):
    # what a trial records when its job ends: one transaction on an RDB storage (one lock and one
    # fsync for SQLite, one round trip for PostgreSQL), all or nothing
    import sqlalchemy
    from optuna.storages import RDBStorage

    from lora_sweep.config.study import StudySection
    from lora_sweep.sweep.storage import make_storage, set_trial_attrs

    name = f"attrs-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=make_storage(race_storage, StudySection()), study_name=name)
    backend = getattr(study._storage, "_backend", study._storage)
    commits = []
    if isinstance(backend, RDBStorage):
        sqlalchemy.event.listen(backend.engine, "commit", lambda conn: commits.append(1))
    trial = study.ask()
    attrs = {"eval_curve": [[2, 1.5], [4, 1.25]], "steps_run": 4, "wall_time_s": 3.5, "stop_reason": "pruned"}
    commits.clear()
    set_trial_attrs(study, trial._trial_id, attrs)
    assert len(commits) == (1 if isinstance(backend, RDBStorage) else 0)
    assert load_existing(race_storage, name).trials[0].user_attrs == attrs

    # a finished trial refuses them: nothing of the batch is written
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError, match="has already finished and can not be updated"):
        set_trial_attrs(study, trial._trial_id, {"late": 1, "eval_curve": []})
    assert load_existing(race_storage, name).trials[0].user_attrs == attrs
