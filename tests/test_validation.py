"""An honest validation set: data.validation_split / data.validation_file take over a job's
evaluations from test.json; `python -m lora_sweep.job.evaluate --split test` scores an adapter (or the
base model) on test.json afterwards; a paired bootstrap says whether a difference is noise."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from helpers import chat, job_tree, memorization_samples, write_jsonl
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.job import evaluate as E
from lora_sweep.job import train as T
from lora_sweep.config.job import ConfigError, DataSection
from lora_sweep.config.files import validate_job
from lora_sweep.events import read_events
from lora_sweep.job.models import load_for_inference
from lora_sweep.stats import paired_bootstrap


def numbered(n: int, tag: str) -> list[dict]:
    return [chat(f"{tag} question {i}?", f"{tag} answer {i}.") for i in range(n)]


@pytest.fixture
def files(tmp_path) -> DataSection:
    """10 train samples, 4 test samples, 3 validation samples in a file of their own."""
    write_jsonl(tmp_path / "train.json", numbered(10, "train"))
    write_jsonl(tmp_path / "test.json", numbered(4, "test"))
    write_jsonl(tmp_path / "val.json", numbered(3, "val"))
    return DataSection(train_file=str(tmp_path / "train.json"), test_file=str(tmp_path / "test.json"))


def answers(samples: list[dict]) -> list[str]:
    return [s["messages"][-1]["content"] for s in samples]


def test_split_by_share_and_count_is_seeded_and_disjoint(files):
    assert S.load_samples(files) == (numbered(10, "train"), numbered(4, "test"))  # no validation: test.json
    for split, held in ((0.3, 3), (4, 4), (4.0, 4)):
        section = files.model_copy(update={"validation_split": split})
        train, validation = S.load_samples(section)
        assert (len(train), len(validation)) == (10 - held, held)
        assert set(answers(train)).isdisjoint(answers(validation))
        assert sorted(answers(train) + answers(validation)) == sorted(answers(numbered(10, "train")))
        assert answers(train) == sorted(answers(train), key=lambda a: int(a.split()[-1][:-1]))  # file order
        assert S.load_samples(section) == (train, validation)  # the same every time (every trial)
        assert S.load_samples(section, "test") == (train, numbered(4, "test"))  # test.json, train still less it
        assert (S.eval_set(section), S.eval_set(section, "test")) == ("validation", "test")
    # seeded, not the first rows: the held-out samples of a share are spread over the file
    _, validation = S.load_samples(files.model_copy(update={"validation_split": 0.3}))
    assert answers(validation) != answers(numbered(3, "train"))


def test_validation_file(files, tmp_path):
    section = files.model_copy(update={"validation_file": str(tmp_path / "val.json")})
    assert S.load_samples(section) == (numbered(10, "train"), numbered(3, "val"))
    assert S.load_samples(section, "test") == (numbered(10, "train"), numbered(4, "test"))


@pytest.mark.parametrize("update, message", [
    ({"validation_split": 10}, "data: data.validation_split (10) must be below the number of train.json samples "
                               "(10): at least one must be left to train on"),
    ({"validation_split": 0.01}, "data: data.validation_split (0.01) holds out 0 of the 10 train.json samples: give "
                                 "a share that leaves at least one sample on each side, or a count"),
    ({"validation_split": 0.96}, "data: data.validation_split (0.96) holds out 10 of the 10 train.json samples: give "
                                 "a share that leaves at least one sample on each side, or a count"),
    ({"validation_file": "{tmp}/nope.json"}, "data: data.validation_file: {tmp}/nope.json: no such file"),
])
def test_bad_validation_is_refused_before_anything_is_written(files, tmp_path, tiny_llama, update, message):
    update = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in update.items()}
    with pytest.raises(ConfigError) as err:
        S.load_samples(files.model_copy(update=update))
    assert str(err.value) == message.format(tmp=tmp_path)
    tree = job_tree(tiny_llama, tmp_path, tmp_path / "out")
    tree["data"] = {**files.model_dump(), **update, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ConfigError, match="^data: data.validation_"):
        T.run(validate_job(tree))  # the job refuses it before it writes anything
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_cache_key_follows_the_evaluated_set(files, tmp_path, tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    val = str(tmp_path / "val.json")
    sections = [files, files.model_copy(update={"validation_split": 3}),
                files.model_copy(update={"validation_split": 0.3}), files.model_copy(update={"validation_split": 4}),
                files.model_copy(update={"validation_file": val}), files.model_copy(update={"packing": "bounded"})]
    paths = [D.cache_path(s, 42, tok) for s in sections]
    assert len(set(paths)) == len(paths)
    assert D.cache_path(sections[1], 42, tok) == paths[1]  # stable
    assert D.cache_path(sections[1], 42, tok, "test") not in paths  # test.json beside a held-out train side
    assert D.cache_path(files, 42, tok, "test") == paths[0]  # without validation, "eval" is test.json
    write_jsonl(tmp_path / "val.json", numbered(2, "val"))
    assert D.cache_path(sections[4], 42, tok) != paths[4]  # the validation file's content is in the key
    tokenized = D.prepare(sections[1].model_copy(update={"cache_dir": str(tmp_path / "c"),
                                                         "train_seqlen": 16, "test_seqlen": 16}), 42, tok)
    assert tokenized.stats["eval_set"] == "validation" and tokenized.stats["eval_samples"] == 3
    assert tokenized.details["train"]["samples"] == 7


def test_paired_bootstrap_against_hand_computed_cases():
    scores = [0.2, 0.9, 0.4, 0.7]
    assert paired_bootstrap(scores, scores) == (0.0, 0.0, 0.0)
    mean, low, high = paired_bootstrap([s + 0.25 for s in scores], scores)
    assert (mean, low, high) == pytest.approx((0.25, 0.25, 0.25))
    # 5 pairs whose differences are 0 or 1: a resample's mean is k/5 with k ~ Binomial(5, 0.6).
    # Exactly, by enumerating all 5^5 resamples: the 2.5 % quantile is 0.2, the 97.5 % one 1.0.
    diff = [0, 1, 0, 1, 1]
    means = sorted(np.mean([diff[i] for i in pick]) for pick in itertools.product(range(5), repeat=5))
    low_exact, high_exact = means[int(0.025 * len(means))], means[int(0.975 * len(means))]
    assert (low_exact, high_exact) == (0.2, 1.0)
    a, b = [1.0, 2.0, 0.5, 3.0, 1.5], [1.0, 1.0, 0.5, 2.0, 0.5]  # a - b == diff
    assert paired_bootstrap(a, b, n=20000, seed=1) == pytest.approx((0.6, low_exact, high_exact))
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)  # seeded
    # pairs matter: the same scores unpaired would vary far more than the paired differences do
    assert paired_bootstrap([s + 0.1 for s in scores], scores)[1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"equally long, non-empty score lists \(got 2 and 1\)"):
        paired_bootstrap([1, 2], [1])


@pytest.fixture(scope="module")
def validated_job(tiny_llama, tmp_path_factory):
    """A real job (in process) with 3 of the 8 memorization samples held out, a generation metric."""
    root = tmp_path_factory.mktemp("validated")
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.json", memorization_samples())
    write_jsonl(root / "data" / "test.json", memorization_samples() + [chat("colour of the ant?", "The ant likes grey.")])
    tree = job_tree(tiny_llama, root / "data", root / "out")
    tree["data"]["validation_split"] = 3
    tree["training"].update(num_training_steps=4, eval_steps=2, save_steps=2, learning_rate=0.03)
    tree["objective"] = {"metric": "token_f1", "max_new_tokens": 4, "generation_batch_size": 4, "baseline": False}
    config = validate_job(tree)
    return config, T.run(config)


@pytest.mark.integration
def test_a_job_evaluates_on_the_validation_rows(validated_job):
    config, result = validated_job
    start = next(e for e in read_events(Path(config.output_dir) / "events.jsonl") if e["event"] == "start")
    assert start["data"]["eval_set"] == "validation" and start["data"]["eval_samples"] == 3
    held = [json.loads(line) for line in (Path(config.output_dir) / "predictions.jsonl").read_text().splitlines()]
    assert len(held) == 3  # the generation metric answered the validation prompts
    validation = [s for s in memorization_samples() if s["messages"][-1]["content"] in {r["reference"] for r in held}]
    assert len(validation) == 3
    # the job's eval loss is the loss of the kept adapter on the validation samples' rows
    model, tok = load_for_inference(config.model, result["adapter_path"])
    template = D.chat_template(tok)

    def loss_of(samples: list[dict]) -> float:
        examples = [D.tokenize_sample(tok, s["messages"], template, train_on_prompt=False) for s in samples]
        rows, _ = D.labelled(D.pack(examples, config.data.test_seqlen, keep_tail=True))
        return E.eval_loss(model, rows, config.data.test_batch_size, tok.pad_token_id)

    assert result["best_eval_loss"] == pytest.approx(loss_of(validation), abs=1e-5)
    assert abs(result["best_eval_loss"] - loss_of(memorization_samples())) > 5e-3  # not test.json's loss


@pytest.mark.integration
def test_evaluate_scores_the_adapter_on_test_json(validated_job):
    config, result = validated_job
    job_yaml = str(Path(config.output_dir) / "config.yaml")  # what the job ran
    out = Path(config.output_dir)
    assert E.main([job_yaml, "--adapter", result["adapter_path"], "--split", "test", "--out", "test_best"]) == 0
    scored = json.loads((out / "test_best.json").read_text())
    records = [json.loads(line) for line in (out / "test_best_predictions.jsonl").read_text().splitlines()]
    assert scored["split"] == "test" and scored["n"] == 9 and len(records) == 9
    assert records[-1]["reference"] == "The ant likes grey."  # test.json's own prompts
    assert scored["score"] == pytest.approx(sum(r["score"] for r in records) / 9)
    assert scored["adapter"] == result["adapter_path"] and scored["eval_loss"] != result["best_eval_loss"]
    # the default split is the job's own: the validation set, with the loss the job reported
    assert E.main([job_yaml, "--adapter", result["adapter_path"], "--out", "validation_best"]) == 0
    again = json.loads((out / "validation_best.json").read_text())
    assert (again["split"], again["n"]) == ("validation", 3)
    assert again["eval_loss"] == pytest.approx(result["best_eval_loss"], abs=1e-5)
    assert again["score"] == pytest.approx(result["best_score"])
    # a name that is a path, or a folder without an adapter, is refused and writes nothing
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit):
        E.main([job_yaml, "--out", "../elsewhere"])
    assert E.main([job_yaml, "--adapter", str(out), "--out", "nothing"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
