"""LoRA variants (issue 24; docs/research/lora-variants/README.md): each trains the tiny model in this
process through the real job, its kept adapter loads elsewhere with PEFT on the ORIGINAL base and
gives the job's evaluation again, and merges; bad values and combinations are refused, every one at
once, before anything is written, also when a study searches them."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import job_tree, run_cli, study_tree, write_yaml
from lora_sweep.config.files import validate_job
from lora_sweep.config.job import ConfigError
from lora_sweep.events import read_events
from lora_sweep.job import data as D
from lora_sweep.job import train as T
from lora_sweep.job.evaluate import eval_loss

VARIANTS = {  # name the job records -> the lora group's keys
    "dora+rslora": {"use_dora": True, "use_rslora": True},
    "gaussian": {"init_lora_weights": "gaussian"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "mica": {"init_lora_weights": "mica"},
    "pissa": {"init_lora_weights": "pissa"},
    "rslora+pissa_niter_2": {"use_rslora": True, "init_lora_weights": "pissa_niter_2"},
    "olora": {"init_lora_weights": "olora"},
    "dora+lora+": {"use_dora": True, "loraplus_lr_ratio": 16},
}
CONVERTED = {"pissa", "rslora+pissa_niter_2", "olora"}


def batch(tokenizer) -> dict:
    rows = [tokenizer.apply_chat_template([{"role": "user", "content": f"colour of the {a}?"}], tokenize=False)
            for a in ("cat", "owl")]
    return tokenizer(rows, return_tensors="pt", padding=True)


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits[inputs["attention_mask"].bool()]  # real positions only


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_trains_reloads_on_the_original_base_and_merges(name, tiny_llama, chat_data, tmp_path):
    out = tmp_path / "out"
    tree = job_tree(tiny_llama, chat_data, out, num_training_steps=8, eval_steps=4, save_steps=4,
                    learning_rate=2e-2, weight_decay=0.01, early_stopping_patience=0)
    tree["lora"].update({"r": 8, "alpha": 16, **VARIANTS[name]})
    job = validate_job(tree)
    result = T.run(job)

    events = read_events(out / "events.jsonl")
    start = next(e for e in events if e["event"] == "start")
    assert start["variant"]["name"] == result["variant"]["name"] == name
    assert json.loads((out / "result.json").read_text())["variant"] == result["variant"]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < losses[0] - 0.05, losses  # it learns

    # the kept adapter, by PEFT alone on a fresh copy of the original base: the job's best evaluation again
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    adapter = out / "adapter"
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter).eval()
    rows = D.prepare(job.data, job.training.seed, tokenizer).test
    assert eval_loss(loaded, rows, job.data.test_batch_size, tokenizer.pad_token_id) == pytest.approx(
        result["best_eval_loss"], rel=1e-5)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    if name in CONVERTED:  # a plain LoRA of rank 2r against the original base
        assert (saved["r"], saved["init_lora_weights"], saved["use_dora"]) == (16, True, False)
        assert result["variant"]["saved"] == "converted to a plain LoRA of rank 16"
        assert (out / "adapter_init/adapter_config.json").is_file()
    else:
        assert (saved["r"], saved["init_lora_weights"]) == (8, VARIANTS[name].get("init_lora_weights", True))
        assert saved["use_dora"] == VARIANTS[name].get("use_dora", False) and not (out / "adapter_init").exists()

    # merged into the base: the same logits as base + adapter, within 1e-4
    inputs = batch(tokenizer)
    expected = logits(loaded, inputs)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter).merge_and_unload()
    assert not isinstance(merged, PeftModel)
    assert (logits(merged.eval(), inputs) - expected).abs().max().item() < 1e-4
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), inputs)
    assert (base - expected).abs().max().item() > 1e-3  # the adapter did change the model

    if name == "dora+lora+":  # PEFT's LoRA+ groups in the Trainer's checkpoint: B at 16 x the rate, decay kept
        groups = torch.load(out / "checkpoints/checkpoint-8/optimizer.pt", weights_only=False)["param_groups"]
        rates = sorted((g["initial_lr"], g["weight_decay"], len(g["params"])) for g in groups if g["params"])
        # 14 A matrices (7 projections x 2 layers); 14 B matrices and, as PEFT groups them, DoRA's 14 magnitudes
        assert rates == [(2e-2, 0.01, 14), (2e-2 * 16, 0.01, 28)], rates


REFUSED = [  # lora group -> the lines `train` prints, every problem at once
    ({"use_dora": True, "init_lora_weights": "olora", "loraplus_lr_ratio": 0.5}, [
        'lora.use_dora: not with lora.init_lora_weights "olora": the adapter kept for use is converted to a plain '
        "LoRA against the original base, and PEFT's conversion drops DoRA's magnitudes (silently wrong, by 0.5-0.7 "
        "in logits)",
        "lora.loraplus_lr_ratio: must be >= 1 (the B matrices' learning rate over A's), got 0.5"]),
    ({"init_lora_weights": "mica", "use_dora": True}, [
        "lora.use_dora: not with lora.init_lora_weights mica: PEFT has no DoRA form of MiCA (get_peft_model: "
        "\"Invalid or unsupported variant combination: ('mica', 'use_dora')\")"]),
    ({"init_lora_weights": "orthogonal", "r": 7}, ["lora.init_lora_weights: orthogonal needs an even lora.r, got r 7"]),
    ({"init_lora_weights": False}, [
        "lora.init_lora_weights: false is refused: PEFT's debugging start, not the base model (its logits are 0.88 "
        "off before any step)"]),
    ({"init_lora_weights": "eva"}, [
        'lora.init_lora_weights: "eva" is refused: needs the training data at initialization, which this job does '
        "not pass yet"]),
    ({"init_lora_weights": "loftq"}, [
        'lora.init_lora_weights: "loftq" is refused: needs CUDA and bitsandbytes, and replaces the base weights '
        "with quantized ones"]),
    ({"init_lora_weights": "pissa_niter_x", "loraplus_lr_ratio": 4}, [
        "lora.init_lora_weights: must be true, gaussian, orthogonal, mica, pissa, pissa_niter_<N> (N a whole "
        'number >= 1) or olora, got "pissa_niter_x"']),
    ({"init_lora_weights": "mica", "loraplus_lr_ratio": 4}, [
        "lora.loraplus_lr_ratio: not with lora.init_lora_weights mica: MiCA freezes B, so the ratio would change "
        "nothing"]),
    ({"load_in_4bit": True, "init_lora_weights": "pissa_niter_4", "use_dora": True}, [
        'lora.use_dora: not with lora.init_lora_weights "pissa_niter_4": the adapter kept for use is converted to a '
        "plain LoRA against the original base, and PEFT's conversion drops DoRA's magnitudes (silently wrong, by "
        "0.5-0.7 in logits)",
        'lora.load_in_4bit: not with lora.init_lora_weights "pissa_niter_4": PEFT refuses it on a 4-bit base '
        '("Please initialize PiSSA under float32, float16, or bfloat16")']),
    ({"load_in_4bit": True, "init_lora_weights": "orthogonal", "r": 7}, [
        "lora.init_lora_weights: orthogonal needs an even lora.r, got r 7",
        'lora.load_in_4bit: not with lora.init_lora_weights "orthogonal": PEFT fails on a 4-bit base ("Only Tensors '
        'of floating point and complex dtype can require gradients")']),
    ({"load_in_4bit": True, "init_lora_weights": "olora"}, [
        'lora.load_in_4bit: not with lora.init_lora_weights "olora": OLoRA takes its start out of the base and PEFT '
        "quantizes the rest again, so the job would not start at the base model and its kept adapter would be off "
        "(by 0.05 in logits, silently)"]),
    ({"load_in_4bit": True, "init_lora_weights": "mica"}, [
        'lora.load_in_4bit: not with lora.init_lora_weights "mica": PEFT refuses it on a 4-bit base ("Please '
        'initialize MiCA under float32, float16, or bfloat16")']),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, [
        "lora.bnb_4bit_quant_type: Input should be 'nf4' or 'fp4' (got 'int4')"]),
]


@pytest.mark.parametrize("lora, lines", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_bad_variants_are_refused_with_why_and_nothing_written(lora, lines, tiny_llama, chat_data, tmp_path, capsys):
    tree = job_tree(tiny_llama, chat_data, tmp_path / "out")
    tree["lora"].update(lora)
    path = write_yaml(tmp_path / "job.yaml", tree)
    assert T.main([str(path)]) == 2
    assert capsys.readouterr().err == f"error: {ConfigError(lines, str(path))}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "job.yaml"]  # no out/, no cache/


def test_without_bitsandbytes_a_4bit_base_is_refused_with_the_install_line(tiny_llama, chat_data, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed: find_spec gives None
    tree = job_tree(tiny_llama, chat_data, tmp_path / "out")
    tree["lora"].update({"load_in_4bit": True, "init_lora_weights": "mica"})
    path = write_yaml(tmp_path / "job.yaml", tree)
    assert T.main([str(path)]) == 2
    assert capsys.readouterr().err == "error: " + str(ConfigError([
        "lora.load_in_4bit: needs bitsandbytes, which is not installed: pip install 'lora-sweep[qlora]' (or pip "
        "install bitsandbytes)",
        'lora.load_in_4bit: not with lora.init_lora_weights "mica": PEFT refuses it on a 4-bit base ("Please '
        'initialize MiCA under float32, float16, or bfloat16")'], str(path))) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "job.yaml"]


def test_a_study_searching_dora_and_init_is_refused_where_a_pair_is_forbidden(tiny_llama, chat_data, tmp_path):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", base_space="none")
    tree["search_space"] = {"use_dora": {"type": "categorical", "choices": [False, True]},
                            "init_lora_weights": {"type": "categorical", "choices": [True, "gaussian", "pissa", "olora"]},
                            "r": {"type": "int", "low": 4, "high": 8}}
    config = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["validate", str(config)], cwd=tmp_path)
    dora = ("lora.use_dora: not with lora.init_lora_weights \"{}\": the adapter kept for use is converted to a plain "
            "LoRA against the original base, and PEFT's conversion drops DoRA's magnitudes (silently wrong, by "
            "0.5-0.7 in logits)")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: " + str(ConfigError([
        f"search_space: use_dora True with init_lora_weights '{init}' can be drawn together, and is not a valid "
        f"job: {dora.format(init)}" for init in ("pissa", "olora")], str(config))) + "\n"
    assert not (tmp_path / "studies").exists()

    # orthogonal beside a searched r: an odd r between even bounds is found too
    tree["search_space"]["init_lora_weights"]["choices"] = [True, "gaussian", "orthogonal"]
    proc = run_cli(["validate", str(write_yaml(config, tree))], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: {config}: search_space: init_lora_weights 'orthogonal' with r 5 can be drawn together, and is not "
        "a valid job: lora.init_lora_weights: orthogonal needs an even lora.r, got r 5\n")

    tree["search_space"]["r"]["step"] = 2  # 4, 6, 8: every pair is a valid job
    proc = run_cli(["validate", str(write_yaml(config, tree))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


LR_PER_INIT = {"depends_on": "init_lora_weights", "cases": {
    True: {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "pissa_niter_2": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}}


def test_a_learning_rate_range_per_init_is_drawn_per_choice(tiny_llama, chat_data, tmp_path):
    import optuna

    from lora_sweep.config.space import build_space, default_params, suggest
    from lora_sweep.config.study import load_study

    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", base_space="none")
    tree["search_space"] = {"learning_rate": LR_PER_INIT,
                            "init_lora_weights": {"type": "categorical", "choices": [True, "pissa_niter_2"]}}
    config = load_study(write_yaml(tmp_path / "study.yaml", tree))
    space = build_space(config)
    defaults, notes = default_params(config, space)  # the default 2e-4 moved into plain LoRA's own range
    assert defaults == {"init_lora_weights": True, "learning_rate": 1e-3}
    assert notes == ["learning_rate 0.0002 is outside [0.001, 0.01]: runs as 0.001"]
    # a SQLite study, as a sweep keeps it: optuna takes a float range per trial under one name
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'lr.db'}", sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, space)
        low, high = (1e-3, 1e-2) if params["init_lora_weights"] is True else (1e-5, 1e-4)
        assert low <= params["learning_rate"] <= high, params
        drawn.add(params["init_lora_weights"])
        study.tell(trial, params["learning_rate"])
    assert drawn == {True, "pissa_niter_2"}


@pytest.mark.parametrize("entry, line", [
    ({"depends_on": "use_dora", "cases": {}},
     "search_space.learning_rate.depends_on: must name a searched categorical of search_space, got 'use_dora'"),
    ({"depends_on": "init_lora_weights", "cases": {True: LR_PER_INIT["cases"][True], "olora": {"type": "float", "low": 1e-5, "high": 1e-4}}},
     "search_space.learning_rate.cases: one per choice of init_lora_weights (True, 'pissa_niter_2'); missing "
     "'pissa_niter_2'; not a choice: 'olora'"),
    ({"depends_on": "init_lora_weights", "cases": {**LR_PER_INIT["cases"], True: {"type": "float", "low": 1e-3, "high": 1e-2}}},
     "search_space.learning_rate.cases: every case must be of one type, log and step (one parameter in optuna)"),
    ({"depends_on": "init_lora_weights", "cases": {**LR_PER_INIT["cases"], True: {"type": "float", "low": -1, "high": 1e-2}}},
     "search_space.learning_rate.cases.True: value -1.0 is not valid with init_lora_weights True: Input should be "
     "greater than 0"),
    ({"depends_on": "init_lora_weights", "cases": {True: {"type": "categorical", "choices": [8, 16]},
                                                   "pissa_niter_2": {"type": "categorical", "choices": [8]}}},
     "search_space.learning_rate.cases: a float or int range per choice; optuna's storages keep one set of "
     "categorical choices per parameter and study"),
])
def test_a_bad_dependent_entry_is_refused(entry, line, tiny_llama, chat_data, tmp_path):
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", base_space="none")
    tree["search_space"] = {"learning_rate": entry,
                            "init_lora_weights": {"type": "categorical", "choices": [True, "pissa_niter_2"]}}
    config = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["validate", str(config)], cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, f"error: {config}: {line}\n")


def test_a_pissa_job_resumed_from_its_checkpoint_goes_on_as_the_whole_run(tiny_llama, chat_data, tmp_path):
    """Trainer checkpoints stay unconverted; a resumed job seeds get_peft_model again (pissa_niter_N's random
    SVD repeats), saves its start anew, and keeps the adapter converted as the uninterrupted run does."""
    def job(name: str, **more):
        tree = job_tree(tiny_llama, chat_data, tmp_path / name, num_training_steps=8, eval_steps=4, save_steps=4,
                        learning_rate=2e-2, early_stopping_patience=0, save_total_limit=2, **more)
        tree["lora"].update({"r": 8, "alpha": 16, "init_lora_weights": "pissa_niter_2"})
        return validate_job(tree)

    whole = T.run(job("whole"))
    resumed = T.run(job("resumed", resume_from_checkpoint=str(tmp_path / "whole/checkpoints/checkpoint-4")))
    assert [e["eval_loss"] for e in resumed["evals"]] == pytest.approx([e["eval_loss"] for e in whole["evals"]],
                                                                      rel=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    inputs = batch(tokenizer)
    kept = [logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / name / "adapter")
                   .eval(), inputs) for name in ("whole", "resumed")]
    assert (kept[0] - kept[1]).abs().max().item() < 1e-4


def test_the_summary_compares_each_variants_best_with_plain_loras(tmp_path):
    """Trials as the sweep records them (trial_dir with the job's result.json, predictions_path with
    per-sample scores): each variant's best against plain LoRA's best, "within noise" where the
    paired bootstrap interval spans zero."""
    import optuna

    from lora_sweep.events import JobResult
    from lora_sweep.stats import paired_bootstrap
    from lora_sweep.sweep.variants import variant_lines

    study = optuna.create_study(direction="maximize")
    per_sample = {"lora": [0, 1] * 20, "dora": [1, 1] * 20, "gaussian": [1, 0] * 20, "pissa": [0, 0] * 20}
    for number, (name, samples) in enumerate([*per_sample.items(), ("lora", [0, 0] * 20)]):
        folder = tmp_path / f"trial-{number}"
        folder.mkdir()
        JobResult(best_step=1, best_eval_loss=1.0, adapter_path="a", variant={"name": name}).write(folder / "result.json")
        (folder / "predictions.jsonl").write_text("".join(json.dumps({"score": s}) + "\n" for s in samples))
        study.add_trial(optuna.trial.create_trial(value=sum(samples) / len(samples), user_attrs={
            "trial_dir": str(folder), "predictions_path": str(folder / "predictions.jsonl")}))
    lines = variant_lines(study, "exact_match")
    assert lines[0] == "variant lora: best trial 0, exact_match 0.5000"  # the better of the two lora trials
    mean, low, high = paired_bootstrap(per_sample["dora"], per_sample["lora"])
    assert lines[1] == (f"variant dora: best trial 1, exact_match 1.0000; vs lora {mean:+.4f} (95 % paired bootstrap "
                        f"interval {low:+.4f} .. {high:+.4f}, 40 prompts: a real difference)")
    assert mean == 0.5 and low > 0
    assert lines[2].startswith("variant gaussian: best trial 2, exact_match 0.5000; vs lora +0.0000 (95 % paired "
                               "bootstrap interval -") and lines[2].endswith("40 prompts: within noise)")
    assert lines[3].startswith("variant pissa: best trial 3, exact_match 0.0000; vs lora -0.5000") \
        and lines[3].endswith("a real difference)")

    # the run's own summary ends with the same comparison
    from lora_sweep.config.study import StudyConfig
    from lora_sweep.sweep.loop import summary

    config = StudyConfig.model_validate({"data": {"dataset": "d"}, "objective": {"metric": "exact_match"}})
    assert "\n" + "\n".join(lines) + "\ndashboard: " in summary(config, study, "s.yaml")


QLORA = {  # name the job records -> the lora group's keys
    "qlora-nf4": {"load_in_4bit": True},  # double quantization, compute in the weights' dtype (float32 here)
    "dora+qlora-fp4": {"use_dora": True, "load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                       "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float32"},
}


@pytest.mark.parametrize("name", QLORA)
def test_qlora_trains_through_evaluations_reloads_and_merges(name, tiny_llama, chat_data, tmp_path):
    """QLoRA on the CPU (bitsandbytes' 4-bit layers): trains with an evaluation every 2 steps; the kept
    adapter on the 4-bit base dequantized (how generate, export --merge and the test scoring load it)
    gives the job's evaluation again and merges within 1e-4; on the original full-precision base (PEFT
    alone) it loads and still helps, off by the quantization error only."""
    from lora_sweep.job.models import load_for_inference

    out = tmp_path / "out"
    tree = job_tree(tiny_llama, chat_data, out, num_training_steps=8, eval_steps=2, save_steps=4,
                    learning_rate=2e-2, early_stopping_patience=0)
    tree["lora"].update({"r": 8, "alpha": 16, **QLORA[name]})
    job = validate_job(tree)
    result = T.run(job)

    events = read_events(out / "events.jsonl")
    assert result["variant"]["name"] == name and result["variant"]["load_in_4bit"] is True
    assert result["variant"]["bnb_4bit_quant_type"] == job.lora.bnb_4bit_quant_type
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < losses[0] - 0.05, losses  # learns, evaluated at 2, 4, 6
    evals = [e["eval_loss"] for e in result["evals"]]
    assert len(evals) == 4 and evals[-1] < evals[0], evals  # and goes on learning after each evaluation

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = D.prepare(job.data, job.training.seed, tokenizer).test
    loaded, _ = load_for_inference(job.model, out / "adapter", job.lora)
    assert eval_loss(loaded, rows, job.data.test_batch_size, tokenizer.pad_token_id) == pytest.approx(
        result["best_eval_loss"], rel=1e-5)
    inputs = batch(tokenizer)
    expected = logits(loaded, inputs)
    merged = loaded.merge_and_unload()  # what export --merge saves
    assert (logits(merged.eval(), inputs) - expected).abs().max().item() < 1e-4

    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out / "adapter").eval()
    gap = (logits(original, inputs) - expected).abs().max().item()
    assert 1e-3 < gap < 1.0, gap  # the 4-bit base's error (0.1-0.5 in logits on this random model), no more
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    on_original = eval_loss(original, rows, job.data.test_batch_size, tokenizer.pad_token_id)
    assert on_original < eval_loss(base, rows, job.data.test_batch_size, tokenizer.pad_token_id) - 0.1


def test_a_4bit_base_keeps_its_gradients_after_an_evaluation(tiny_llama):
    """bitsandbytes repacks a 4-bit layer for CPU inference at its first eval-mode forward without grad,
    after which its gradients are wrong (docs/research/lora-variants, Q4). The job's base never repacks:
    after an evaluation, LoRA's gradients equal those of the same LoRA on the dequantized weights."""
    from bitsandbytes.functional import has_avx512bf16
    from peft import get_peft_model, prepare_model_for_kbit_training

    from lora_sweep.config.job import LoraSection
    from lora_sweep.job.models import load_quantized_model
    from lora_sweep.job.variants import lora_config, quantized_base, refuse_repacked

    lora = LoraSection(r=8, alpha=16, lora_dropout=0.0, load_in_4bit=True)
    inputs = batch(AutoTokenizer.from_pretrained(tiny_llama))

    def gradients(model) -> dict:
        model.train()
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    def evaluated(model):
        with torch.no_grad():
            model.eval()(**inputs)  # as the Trainer's evaluation runs it
        return model

    def error(grads: dict, reference: dict) -> float:
        assert grads.keys() == reference.keys() and len(grads) == 28
        return max(((grads[n] - reference[n]).norm() / reference[n].norm()).item() for n in grads)

    def with_lora(base):  # the same LoRA on every base: A as seeded, B away from zero (so A gets a gradient)
        torch.manual_seed(0)
        model = get_peft_model(base, lora_config(lora))
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.1)
        return model

    model = evaluated(with_lora(quantized_base(str(tiny_llama), torch.float32, False, lora, False)))
    dequantized = load_quantized_model(str(tiny_llama), torch.float32, False, lora).dequantize(dtype=torch.float32)
    reference = gradients(with_lora(dequantized))
    assert error(gradients(model), reference) < 1e-4

    if has_avx512bf16():  # this CPU repacks: without the switch the gradients go wrong, and the check says so
        bare = with_lora(prepare_model_for_kbit_training(
            load_quantized_model(str(tiny_llama), torch.float32, False, lora), use_gradient_checkpointing=False))
        assert error(gradients(evaluated(bare)), reference) > 0.1
        layer = bare.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        layer.register_forward_pre_hook(refuse_repacked)
        with pytest.raises(RuntimeError, match="repacked for CPU inference"):
            bare(**inputs)


def test_a_study_searching_a_4bit_base_is_checked_per_init_and_its_winner_exports_the_variant(tiny_llama, chat_data,
                                                                                              tmp_path):
    """load_in_4bit is searched like any key (a pair with an init it cannot take is refused); the winner's
    lora.yaml lists every variant key it used, searched (load_in_4bit) or set in the study (use_dora), with
    its 4-bit settings: the AI Toolkit has no key for any of them."""
    import optuna

    from lora_sweep.config.space import build_space
    from lora_sweep.config.study import load_study
    from lora_sweep.views.export import aitk_yaml

    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies", base_space="none")
    tree["lora"].update({"use_dora": True, "bnb_4bit_quant_type": "fp4"})
    tree["search_space"] = {"load_in_4bit": {"type": "categorical", "choices": [False, True]},
                            "init_lora_weights": {"type": "categorical", "choices": [True, "mica"]},
                            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    path = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["validate", str(path)], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == "error: " + str(ConfigError([
        "search_space.init_lora_weights: value 'mica' is not valid for lora: lora.use_dora: not with "
        "lora.init_lora_weights mica: PEFT has no DoRA form of MiCA (get_peft_model: \"Invalid or unsupported "
        "variant combination: ('mica', 'use_dora')\")",
        "search_space: load_in_4bit True with init_lora_weights 'mica' can be drawn together, and is not a valid "
        "job: lora.load_in_4bit: not with lora.init_lora_weights \"mica\": PEFT refuses it on a 4-bit base "
        "(\"Please initialize MiCA under float32, float16, or bfloat16\")"], str(path))) + "\n"

    tree["search_space"]["init_lora_weights"]["choices"] = [True, "gaussian"]
    config = load_study(write_yaml(path, tree))
    config.folder.mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage=config.storage_url)
    study.add_trial(optuna.trial.create_trial(
        params={"load_in_4bit": True, "init_lora_weights": True, "learning_rate": 2e-3},
        distributions=build_space(config).distributions, value=1.0, user_attrs={"adapter_path": str(tmp_path)}))
    out, unmapped, _ = aitk_yaml(config, "best", str(tmp_path / "aitk" / "lora.yaml"), str(path), [])
    assert unmapped == ["load_in_4bit: true", "init_lora_weights: true", "use_dora: true", "bnb_4bit_quant_type: fp4",
                        "bnb_4bit_use_double_quant: true", "bnb_4bit_compute_dtype: auto"]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert "learning_rate: 0.002" in lines
    assert lines[-7:] == ["# searched or set here, no lora.yaml key (set them in the AI Toolkit's LoRA settings):",
                          *[f"#   {line}" for line in unmapped]]
