"""The benchmarks in bench/ are not tests; these are smoke runs of each (tiny model, a few steps,
results to a temporary file) so that they cannot rot. Nothing here asserts on a timing. The smoke
runs build a model and train, generate or launch jobs: integration tests."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import benchlib  # noqa: E402
import big_inputs  # noqa: E402
import data_pipeline  # noqa: E402
import demo_seeds  # noqa: E402
import generation  # noqa: E402
import job_throughput  # noqa: E402
import peer_search  # noqa: E402
import rescore  # noqa: E402
import search_quality  # noqa: E402
import sweep_efficiency  # noqa: E402
import sweep_surrogate  # noqa: E402
import trial_cost  # noqa: E402
import variant_cost  # noqa: E402


@pytest.fixture(autouse=True)
def library_settings():
    """The benchmarks quieten transformers for the whole process: give the other tests it back."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    yield
    hf_logging.set_verbosity(verbosity)
    hf_logging.enable_progress_bar()


@pytest.fixture(scope="module", autouse=True)
def real_results_untouched():
    path = REPO / "bench" / "RESULTS.md"
    before = path.read_bytes() if path.is_file() else None
    yield
    assert (path.read_bytes() if path.is_file() else None) == before, "a smoke run wrote to bench/RESULTS.md"


def smoke(module, tmp_path: Path, capsys, *extra: str) -> tuple[dict, str, Path]:
    """Run a benchmark's main with --smoke; its return value, its stdout and the results file."""
    results = tmp_path / "RESULTS.md"
    out = module.main(["--smoke", "--results", str(results), "--workdir", str(tmp_path / "work"), *extra])
    return out, capsys.readouterr().out, results


table_rows = benchlib.read_results


def check(printed: str, results: Path, bench: str) -> dict[str, str]:
    """The printed ratio is a positive finite number and one well-formed row was appended."""
    found = re.search(r"^ratio: (\S+) \((.+)\)$", printed, re.M)
    assert found, printed
    ratio = float(found.group(1))
    assert math.isfinite(ratio) and ratio > 0
    assert re.search(r"^target: .+: (met|NOT met|n/a)$", printed, re.M)
    rows = table_rows(results)
    assert len(rows) == 1 and list(rows[0]) == benchlib.COLUMNS
    row = rows[0]
    assert row["bench"] == bench and row["setup"].startswith("smoke, ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row["date"])
    assert row["machine"] and all(f"{lib} " in row["versions"] for lib in ("torch", "transformers", "peft", "optuna"))
    assert float(row["ratio"].split()[0]) == pytest.approx(ratio, rel=1e-2)
    assert row["met"] in ("yes", "no")
    return row


def test_results_file_gets_a_header_once_then_rows(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("# notes kept above\n", encoding="utf-8")
    for n in (1, 2):
        benchlib.append_result(path, "x", "s", "a | b", 0.5 * n, "what", "t", n == 2)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# notes kept above\n") and text.count("| date | bench |") == 1
    rows = table_rows(path)
    assert [r["ratio"] for r in rows] == ["0.5 (what)", "1 (what)"] and [r["met"] for r in rows] == ["no", "yes"]
    assert rows[0]["figures"] == "a / b"  # a pipe would break the table


def test_steps_to_reach():
    points = [{"steps": 20, "best": 0.2}, {"steps": 30, "best": 0.2}, {"steps": 50, "best": 0.6},
              {"steps": 70, "best": 0.6}]
    assert sweep_efficiency.steps_to_reach(points, 0.6, maximize=True) == 50
    assert sweep_efficiency.steps_to_reach(points, 0.7, maximize=True) == math.inf
    assert sweep_efficiency.steps_to_reach([{"steps": 5, "best": None}, {"steps": 9, "best": 1.5}], 2.0,
                                           maximize=False) == 9


def test_curve_counts_every_trial_s_steps_and_only_complete_values(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize")
    folder = tmp_path / "t2"
    folder.mkdir()
    (folder / "events.jsonl").write_text('{"event": "train", "step": 7}\n{"event": "eval", "step": 6}\n')
    for state, value, attrs in [(TrialState.COMPLETE, 0.3, {"steps_run": 20}),
                                (TrialState.PRUNED, None, {"steps_run": 10}),  # its value never counts
                                (TrialState.PRUNED, None, {"steps_run": 5, "trial_dir": str(folder)}),
                                (TrialState.FAIL, None, {"steps_run": 3}),
                                (TrialState.COMPLETE, 0.5, {"steps_run": 20})]:
        study.add_trial(create_trial(state=state, value=value, params={"x": 0.0}, user_attrs=attrs,
                                     distributions={"x": FloatDistribution(0, 1)},
                                     intermediate_values={} if value else {1: 0.9}))
    points = sweep_efficiency.curve(study, maximize=True)
    assert [p["steps"] for p in points] == [20, 30, 37, 40, 60]  # trial 2: its last train event, not the attr
    assert [p["best"] for p in points] == [0.3, 0.3, 0.3, 0.3, 0.5]
    assert sweep_efficiency.steps_to_reach(points, 0.5, maximize=True) == 60
    assert [sweep_efficiency.best_within(points, n) for n in (0, 1, 4, 5, 9)] == [None, 0.3, 0.3, 0.5, 0.5]


@pytest.mark.integration
def test_job_throughput(tmp_path, capsys):
    out, printed, results = smoke(job_throughput, tmp_path, capsys)
    check(printed, results, "1 job throughput")
    assert out["same_start"], "both sides must train the same rows from the same model (same first loss)"
    for side in ("ours", "plain"):
        assert len(out["runs"][side]) == 2
        for run in out["runs"][side]:
            assert run["steady_tokens"] == 3 * 2 * 32 and run["steady_s"] > 0 and run["tokens"] == 4 * 2 * 32
    assert "ours steady" in printed and "plain steady" in printed


@pytest.mark.integration
def test_trial_cost(tmp_path, capsys):
    out, printed, results = smoke(trial_cost, tmp_path, capsys, "--trials", "1")
    check(printed, results, "2 trial fixed cost")
    assert sorted(out["by_launcher"]) == ["accelerate", "warm"] and "study.launcher: accelerate" in printed
    assert out["ratio"] == pytest.approx(out["fixed_by"]["warm"] / out["fixed_by"]["accelerate"])
    (trial,) = out["trials"]
    parts = trial_cost.FIXED + trial_cost.USEFUL
    assert sum(trial[p] for p in parts) == pytest.approx(trial["wall"], abs=1e-6)
    for part in ("launch + imports", "model load", "training steps", "evaluations", "checkpoint saves"):
        assert trial[part] > 0, part
    assert trial["steps"] == 2 and out["tokenized"] == 0
    assert out["fixed_s"] + sum(trial[p] for p in trial_cost.USEFUL) == pytest.approx(trial["wall"], abs=1e-6)
    assert "what dominates the fixed cost" in printed


@pytest.mark.integration
def test_variant_cost(tmp_path, capsys):
    out, printed, results = smoke(variant_cost, tmp_path, capsys)  # lora and dora+qlora-nf4, 2 steps each
    row = check(printed, results, "10 variant cost")
    lora, other = out["rows"]
    assert (lora["variant"], other["variant"]) == ("lora", "dora+qlora-nf4") and out["slowest"] in ("lora", "dora+qlora-nf4")
    assert lora["step_x"] == 1.0 and out["ratio"] == max(lora["step_x"], other["step_x"])
    for r in out["rows"]:
        assert r["step_s"] > 0 and r["load_s"] > 0 and r["peak_mb"] > 100 and r["peak_is_this_jobs"]
    assert other["trainable"] > lora["trainable"]  # DoRA's magnitudes on top of the same LoRA
    assert "dora+qlora-nf4" in row["figures"] and "x LoRA" in printed


@pytest.mark.integration
def test_demo_seeds(tmp_path, capsys):
    out, printed, results = smoke(demo_seeds, tmp_path, capsys)  # seed 0, 1 trial of the tiny model
    (r,) = out["results"]
    assert (r["seed"], r["n_trials"], r["complete"] + r["pruned"]) == (0, 1, 1)
    assert r["best"] < demo_seeds.DEMO_BEST and r["passed"] is False  # a random tiny model writes no JSON
    assert out["ratio"] == 0 and "0 of 1 seeds passed (all 1 trials within 10 minutes, best json_fields >= 0.6)" in printed
    (row,) = table_rows(results)
    assert row["bench"] == "8 demo seeds" and row["met"] == "no" and row["setup"].startswith("smoke, ")
    assert (tmp_path / "work" / "demo-s0.log").read_text().count("best: trial") == 1  # the demo's own summary
    # a finished seed is read back from its record, not run again
    again = demo_seeds.main(["--smoke", "--results", str(results), "--workdir", str(tmp_path / "work")])
    assert again["results"] == out["results"]


@pytest.mark.integration
def test_sweep_efficiency(tmp_path, capsys):
    out, printed, results = smoke(sweep_efficiency, tmp_path, capsys)  # 1 seed, 1 trial per arm, both at once
    row = check(printed, results, "3 sweep efficiency")
    assert "demo (tpe independent 3 startup + median pruner, eval every 1), seeds 0," in row["setup"]
    assert out["plot"] == tmp_path / "sweep_efficiency.html"
    html = out["plot"].read_text(encoding="utf-8")
    assert "plotly" in html and "random (seed 0)" in html and "demo (seed 0)" in html
    for arm in ("random", "demo"):
        points = out["results"][(arm, 0)]["points"]
        assert [(p["number"], p["state"], p["steps"]) for p in points] == [(0, "COMPLETE", 2)]
    (row,) = out["rows"]
    assert row[2] == row[4] == 2 and row[5] == out["ratio"] == 1  # both ran the enqueued defaults first
    assert "would have stopped 0 of 1 complete trials" in printed  # the pruner's start-up trials

    # bench 7 on the same work folder: bench 3's sweeps are reused, the Trainer's own search runs
    peer = peer_search.main(["--smoke", "--results", str(tmp_path / "PEER.md"), "--workdir", str(tmp_path / "work")])
    (row,) = table_rows(tmp_path / "PEER.md")
    assert row["bench"] == "7 peer search" and row["setup"].startswith("smoke, ")
    for arm in ("random", "demo"):
        assert peer["results"][(arm, 0)]["points"] == out["results"][(arm, 0)]["points"]  # not run again
    (hf,) = peer["results"][("hf", 0)]["timeline"]
    assert (hf["number"], hf["state"], hf["steps"]) == (0, "COMPLETE", 2) and hf["seconds"] > 0
    assert [r[0] for r in peer["rows"]] == ["random", "demo", "hf"]
    assert "hf (seed 0)" in peer["plot"].read_text(encoding="utf-8")
    # its finished search is read back, not run again: the same trials at the same times
    again = peer_search.main(["--smoke", "--results", str(tmp_path / "PEER.md"), "--workdir", str(tmp_path / "work")])
    assert again["results"][("hf", 0)]["timeline"] == peer["results"][("hf", 0)]["timeline"]

    # re-scoring the demo sweep's kept adapter with other objective settings, without training
    capsys.readouterr()
    (row,) = rescore.main(["--sweeps", str(tmp_path / "work" / "sweeps"), "--study", "demo-s0", "--out",
                           str(tmp_path / "rescored"), "objective.max_new_tokens=2"])
    (trial,) = [p for p in out["results"][("demo", 0)]["points"]]
    assert row[:2] == (0, trial["best"]) and 0 <= row[2] <= 1
    scored = json.loads((tmp_path / "rescored/demo-s0/0/rescored.json").read_text())
    assert scored["score"] == row[2]
    assert "with objective.max_new_tokens=2" in capsys.readouterr().out
    # ... into a copy of the study that bench 3 reads back as the arm's sweep
    into = tmp_path / "work48" / "sweeps"
    rescore.main(["--sweeps", str(tmp_path / "work" / "sweeps"), "--study", "demo-s0", "--out",
                  str(tmp_path / "rescored"), "--into", str(into), "objective.max_new_tokens=2"])
    import optuna

    copy = optuna.load_study(study_name="demo-s0", storage=f"sqlite:///{into / 'demo-s0.db'}")
    (trial,) = copy.get_trials()
    assert trial.value == row[2] and copy.user_attrs["rescored"] == "objective.max_new_tokens=2"
    assert trial.user_attrs["predictions_path"] == str(tmp_path / "rescored/demo-s0/0/rescored_predictions.jsonl")
    assert sweep_efficiency.curve(copy, True)[0]["best"] == row[2]
    with pytest.raises(SystemExit, match="demo-s0.db exists: nothing re-scored"):
        rescore.main(["--sweeps", str(tmp_path / "work" / "sweeps"), "--study", "demo-s0", "--into", str(into),
                      "objective.max_new_tokens=2"])


def test_pruning_check_replays_the_pruner_on_complete_trials():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize")
    # what the demo reports under prune_on eval_loss: minus the loss, at steps 10 and 20
    for loss, value in [(1.0, 0.5), (1.2, 0.2), (1.5, 0.6), (0.9, 0.1)]:
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)},
                                     intermediate_values={10: -loss, 20: -loss + 0.1}))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    # trial 2's loss at step 10 is worse than the median of trials 0 and 1: stopped, though it ended best
    assert sweep_efficiency.pruning_check(study, pruner) == {"trials": 4, "stopped": 1, "top": 2, "top_stopped": 1}

    # ties on the metric (most of a random sweep scores 0) are broken by the last loss, as a trial's evaluations
    tied = optuna.create_study(direction="maximize")
    for loss in (0.5, 1.5, 1.4, 1.6):
        tied.add_trial(create_trial(state=TrialState.COMPLETE, value=0.0, params={"x": 0.5},
                                    distributions={"x": FloatDistribution(0, 1)},
                                    intermediate_values={10: -loss, 20: -loss}))
    # the top half: trials 0 and 2 (the lowest losses); stopped: trial 2 (1.4 against the median 1.0 of trials
    # 0 and 1) and trial 3 (1.6 against 1.4)
    assert sweep_efficiency.pruning_check(tied, pruner) == {"trials": 4, "stopped": 2, "top": 2, "top_stopped": 1}


def test_sweep_surrogate_model_and_replay(capsys):
    probed = {"learning_rate": 4e-3, "lr_scheduler_type": "linear_with_warmup", "num_warmup_steps": 0}
    assert sweep_surrogate.score(probed, 10, 20) == 0.34375  # a probed point comes back as recorded
    assert sweep_surrogate.score(probed, 20, 20) == 0.546875
    # warmup and cosine cover less of the schedule by step 20: a lower effective rate, a lower score
    assert 0.46875 < sweep_surrogate.score({**probed, "num_warmup_steps": 10}, 20, 20) < 0.546875
    assert sweep_surrogate.score({**probed, "learning_rate": 5e-4}, 20, 20) == 0.0
    out = sweep_surrogate.main(["--seeds", "3"])
    printed = capsys.readouterr().out
    assert printed.startswith("contender: sampler tpe ") and "3 seeds" in printed
    assert 0 < out["random_best"] <= 1 and 0 <= out["share_met"] <= 1 and 0 <= out["never"] <= 3
    with pytest.raises(SystemExit, match="^the probe was recorded for 20 training steps a trial$"):
        sweep_surrogate.main(["--seeds", "1", "training.num_training_steps=30", "training.save_steps=30",
                              "training.eval_steps=10"])
    with pytest.raises(SystemExit, match=r"^the loss was fitted at steps \(10, 20\): evaluate there"):
        sweep_surrogate.main(["--seeds", "1", "training.eval_steps=5", "training.save_steps=5"])


def test_sweep_surrogate_fits_the_loss_to_random_sweeps(tmp_path, capsys):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(study_name="random-s0", storage=f"sqlite:///{tmp_path / 'random-s0.db'}",
                                direction="maximize")
    space = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "num_warmup_steps": IntDistribution(0, 10),
             "lr_scheduler_type": CategoricalDistribution(["linear_with_warmup", "cosine_with_warmup"])}
    for x, losses in [(-6.75, (0.6, 0.3)), (-5.75, (0.3, 0.15))]:  # warmup 0, linear: the effective rate is lr
        lr = math.exp(x)  # the middle of a bin of the fit: the curve goes through its point
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, distributions=space,
                                     params={"learning_rate": lr, "num_warmup_steps": 0,
                                             "lr_scheduler_type": "linear_with_warmup"},
                                     intermediate_values={10: -losses[0], 20: -losses[1]}))
    assert sweep_surrogate.main(["--fit", str(tmp_path)]) == {}
    printed = capsys.readouterr().out
    assert printed == "2 trials; LOSS = {-6.75: (0.6, 0.3), -5.75: (0.3, 0.15)}\nresidual sd 0.000 (--loss-noise)\n"
    with pytest.raises(SystemExit, match="^no random-s\\*.db sweep with eval losses in "):
        sweep_surrogate.main(["--fit", str(tmp_path / "none")])


@pytest.mark.integration
def test_data_pipeline(tmp_path, capsys):
    out, printed, results = smoke(data_pipeline, tmp_path, capsys)
    row = check(printed, results, "4 data pipeline")
    assert out["packed_share"] == 1.0  # packed training rows hold no padding at all
    assert 0 < out["varied_share"] <= 1 and out["build_s"] > 0
    assert row["met"] == "yes"


@pytest.mark.integration
def test_big_inputs(tmp_path, capsys):
    out, printed, results = smoke(big_inputs, tmp_path, capsys)
    check(printed, results, "9 big inputs")
    assert set(out["seconds"]) == {"clean", "long"} and out["read_s"] > 0
    assert "and one line of 2 MB" in printed  # the smoke run's long line: refused (exit 2), as asserted inside


@pytest.mark.integration
def test_generation(tmp_path, capsys):
    out, printed, results = smoke(generation, tmp_path, capsys)
    check(printed, results, "5 generation")
    assert len(out["answers"][8]) == len(out["answers"][1]) == 8
    assert re.search(r"^outputs: \d+ of 8 identical between batch 8 and batch 1", printed, re.M)
    assert all(0 <= i < 8 for i in out["differ"])


def test_search_quality_hands_over_the_best_validated_trial_that_fits_the_budget():
    from optuna.trial import TrialState, create_trial

    values = [0.1, 0.5, None, 0.7, 0.6, None]  # None: pruned (trial 2 at step 10) or failed (trial 5)
    trials = {}
    for number, value in enumerate(values):
        state = TrialState.COMPLETE if value is not None else (TrialState.PRUNED if number == 2 else TrialState.FAIL)
        trial = create_trial(state=state, value=value, params={}, distributions={},
                             user_attrs={"steps_run": 10 if number == 2 else 20})
        trial.number = number
        trials[number] = trial
    arm = {"steps": search_quality.spent_steps(trials), "trials": trials, "maximize": True,
           "adapters": {n: f"/a/{n}" for n in trials}}
    # cumulative steps in number order, the failed trial costing nothing: 20, 40, 50, 70, 90
    assert [search_quality.chosen_at(arm, b) for b in (10, 20, 49, 50, 69, 70, 200)] == [None, 0, 1, 1, 1, 3, 3]
    arm["maximize"] = False
    assert search_quality.chosen_at(arm, 200) == 0
    # the bootstrap over seeds and prompts: a constant difference has no spread
    same = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    assert search_quality.bootstrap(same, [[0.5] * 4] * 2)[0] == pytest.approx(0.25)
    mean, low, high = search_quality.bootstrap([[1.0] * 64], [[0.0] * 64])
    assert (mean, low, high) == (1.0, 1.0, 1.0)


@pytest.mark.integration
def test_search_quality(tmp_path, capsys):
    out, printed, results = smoke(search_quality, tmp_path, capsys, "--task", "demo", "--arms", "default,random,defaults")
    (row,) = table_rows(results)
    assert row["bench"] == "3 search quality" and row["setup"].startswith("smoke, tiny-llama demo, seeds 0,")
    assert set(out["scores"]) == {("default", 1), ("default", 2), ("random", 1), ("random", 2), ("defaults", 1),
                                  ("defaults", 2)}
    assert all(len(per_seed) == 1 and len(per_seed[0]) == 2 for per_seed in out["scores"].values())  # 2 prompts
    assert out["chosen"][("defaults", 0, 1)] == 0 and out["chosen"][("default", 0, 1)] == 0  # trial 0 fits 1
    assert "(a) default@2 - random@2:" in printed and "(b) default@2 - random@2:" in printed
    assert "default" in out["plot"].read_text(encoding="utf-8")
    scored = sorted(p.name for p in (tmp_path / "work" / "scores").iterdir())
    assert scored[0].startswith("demo-default-s0-trial-")  # each chosen adapter scored once, kept for a re-run
