"""Data as other tools' users bring it: Alpaca records (Axolotl's and LLaMA-Factory's `instruction`,
`input`, `output`, with `system` and `history`) and ShareGPT records (`conversations` of {from, value}),
read by `data.format` (or recognised by `auto`) into the chat samples every later step uses. Each file
is written here as those tools' own examples are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import chat, job_tree, memorization_samples, run_cli, write_yaml
from lora_sweep import data as D
from lora_sweep.config import ConfigError, DataSection


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


ALPACA = [  # Axolotl's alpaca type: an empty input is common; LLaMA-Factory's adds system and history
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "And now to German?", "input": "", "output": "Guten Morgen", "system": "You translate.",
     "history": [["Translate to French: Good morning", "Bonjour"]]},
]
ALPACA_AS_CHAT = [
    chat("Give three tips for staying healthy.", "Eat well, sleep, move."),
    chat("Translate to French.\nGood morning", "Bonjour"),
    {"messages": [{"role": "system", "content": "You translate."},
                  {"role": "user", "content": "Translate to French: Good morning"},
                  {"role": "assistant", "content": "Bonjour"},
                  {"role": "user", "content": "And now to German?"},
                  {"role": "assistant", "content": "Guten Morgen"}]},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"},
                       {"from": "gpt", "value": "4"}, {"from": "human", "value": "and 3+3?"},
                       {"from": "gpt", "value": "6"}]},
    {"system": "Answer in French.", "conversations": [{"from": "human", "value": "yes?"}, {"from": "gpt", "value": "oui"}]},
]
SHAREGPT_AS_CHAT = [
    chat("hi", "hello"),
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                  {"role": "assistant", "content": "6"}]},
    chat("yes?", "oui", system="Answer in French."),
]


@pytest.mark.parametrize("fmt", ["auto", "alpaca"])
def test_alpaca_records_become_chat_samples(tmp_path, fmt):
    path = write_lines(tmp_path / "train.json", ALPACA)
    assert D.read_samples(path, fmt) == (ALPACA_AS_CHAT, [])


@pytest.mark.parametrize("fmt", ["auto", "sharegpt"])
def test_sharegpt_records_become_chat_samples(tmp_path, fmt):
    path = write_lines(tmp_path / "train.json", SHAREGPT)
    assert D.read_samples(path, fmt) == (SHAREGPT_AS_CHAT, [])


def test_a_json_array_is_read_as_llama_factory_writes_it(tmp_path):
    # LLaMA-Factory's data/alpaca_en_demo.json: one array, indented, not ASCII-escaped
    path = tmp_path / "alpaca_en_demo.json"
    path.write_text(json.dumps(ALPACA, indent=2, ensure_ascii=False), encoding="utf-8")
    assert D.read_samples(path) == (ALPACA_AS_CHAT, [])
    # each problem at the line its record starts on; a syntax error ends the array
    text = json.dumps([ALPACA[0], {"instruction": "x"}, ALPACA[1]], indent=2) + "\n"
    path.write_text(text.replace('"Bonjour"', '"Bonjour",'), encoding="utf-8")
    samples, problems = D.read_samples(path, "alpaca")
    assert samples == ALPACA_AS_CHAT[:1]
    assert problems == [f'{path}:7: no field "output" (fields: instruction)',
                        f"{path}:14: not valid JSON (Expecting property name enclosed in double quotes at column 3)"]
    path.write_text("[]", encoding="utf-8")
    assert D.read_samples(path) == ([], [f"{path}: has no samples"])


def test_auto_keeps_chat_files_as_they_were(tmp_path):
    path = write_lines(tmp_path / "train.json", memorization_samples())
    assert D.read_samples(path) == D.read_samples(path, "chat") == (memorization_samples(), [])


def test_every_bad_record_is_reported_with_file_and_line(tmp_path):
    alpaca = write_lines(tmp_path / "alpaca.json", [
        ALPACA[0],
        {"instruction": "no answer", "input": ""},
        {"instruction": "x", "output": 3},
        {"instruction": "x", "output": "y", "history": [["only one"]]},
        "a string",
    ])
    assert D.read_samples(alpaca, "alpaca") == ([ALPACA_AS_CHAT[0]], [
        f'{alpaca}:2: no field "output" (fields: instruction, input)',
        f'{alpaca}:3: "output" must be a string, got int',
        f'{alpaca}:4: "history" must be a list of [instruction, answer] string pairs',
        f"{alpaca}:5: must be a JSON object, got str",
    ])
    sharegpt = write_lines(tmp_path / "sharegpt.json", [
        SHAREGPT[0],
        {"conversations": []},
        {"conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": 1}]},
        {"conversations": [{"from": "human", "value": "only a question"}]},
    ])
    assert D.read_samples(sharegpt, "sharegpt") == ([SHAREGPT_AS_CHAT[0]], [
        f'{sharegpt}:2: "conversations" must be a non-empty list of {{"from", "value"}} objects',
        f'{sharegpt}:3: conversations[0].from must be "human", "gpt" or "system", got \'bot\'',
        f"{sharegpt}:3: conversations[1].value must be a string, got int",
        f"{sharegpt}:4: has no assistant message: there is nothing to learn from it",
    ])
    # a format given is kept: an Alpaca record in a file said to be chat is a chat sample's problem
    assert D.read_samples(alpaca, "chat")[1][0] == (
        f'{alpaca}:1: "messages" must be a non-empty list of {{"role", "content"}} objects')


def test_the_format_is_part_of_the_cache_key(tmp_path, tiny_llama):
    from lora_sweep.models import load_tokenizer

    write_lines(tmp_path / "train.json", ALPACA)
    write_lines(tmp_path / "test.json", ALPACA)
    tok = load_tokenizer(str(tiny_llama))
    auto = DataSection(dataset=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    alpaca = auto.model_copy(update={"format": "alpaca"})
    assert D.cache_path(auto, 0, tok) != D.cache_path(alpaca, 0, tok)


def test_validate_and_train_read_alpaca_and_refuse_its_bad_records(tiny_llama, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    records = [{"instruction": s["messages"][0]["content"], "input": "", "output": s["messages"][1]["content"]}
               for s in memorization_samples()]
    write_lines(folder / "train.json", records)
    write_lines(folder / "test.json", records)
    tree = job_tree(tiny_llama, folder, tmp_path / "out")
    job = write_yaml(tmp_path / "job.yaml", tree)
    assert run_cli(["validate", str(job)]).stdout == f"{job}: valid job config (8 train and 8 test samples)\n"
    from lora_sweep import train as T
    from lora_sweep.config import load_job

    result = T.run(load_job(job))  # a real job: trains and evaluates on the Alpaca records
    assert result["best_eval_loss"] > 0 and Path(result["adapter_path"], "adapter_config.json").is_file()

    write_lines(folder / "test.json", [*records[:3], {"instruction": "x"}])
    tree["output_dir"], tree["data"]["cache_dir"] = str(tmp_path / "out2"), str(tmp_path / "cache2")
    job = write_yaml(tmp_path / "job.yaml", tree)
    problem = f'{folder / "test.json"}:4: no field "output" (fields: instruction)'
    assert run_cli(["validate", str(job)]).stderr == f"error: {job}: {problem}\n"
    with pytest.raises(ConfigError, match=f"^data: {problem}$".replace("(", r"\(").replace(")", r"\)")):
        T.run(load_job(job))
    assert not (tmp_path / "out2").exists() and not (tmp_path / "cache2").exists()
