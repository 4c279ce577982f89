"""Data as other tools' users bring it: Alpaca records (Axolotl's and LLaMA-Factory's `instruction`,
`input`, `output`, with `system` and `history`) and ShareGPT records (`conversations` of {from, value}),
read by `data.format` (or recognised by `auto`) into the chat samples every later step uses. Each file
is written here as those tools' own examples are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import chat, job_tree, load, memorization_samples, run_cli, study_tree, write_yaml
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.config.job import ConfigError, DataSection
from lora_sweep.config.files import load_job


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
    assert S.read_samples(path, fmt) == (ALPACA_AS_CHAT, [])


@pytest.mark.parametrize("fmt", ["auto", "sharegpt"])
def test_sharegpt_records_become_chat_samples(tmp_path, fmt):
    path = write_lines(tmp_path / "train.json", SHAREGPT)
    assert S.read_samples(path, fmt) == (SHAREGPT_AS_CHAT, [])


def test_a_json_array_is_read_as_llama_factory_writes_it(tmp_path):
    # LLaMA-Factory's data/alpaca_en_demo.json: one array, indented, not ASCII-escaped
    path = tmp_path / "alpaca_en_demo.json"
    path.write_text(json.dumps(ALPACA, indent=2, ensure_ascii=False), encoding="utf-8")
    assert S.read_samples(path) == (ALPACA_AS_CHAT, [])
    # each problem at the line its record starts on; a syntax error ends the array
    text = json.dumps([ALPACA[0], {"instruction": "x"}, ALPACA[1]], indent=2) + "\n"
    path.write_text(text.replace('"Bonjour"', '"Bonjour",'), encoding="utf-8")
    samples, problems = S.read_samples(path, "alpaca")
    assert samples == ALPACA_AS_CHAT[:1]
    assert problems == [f'{path}:7: no field "output" (fields: instruction)',
                        f"{path}:14: not valid JSON (Expecting property name enclosed in double quotes at column 3)"]
    path.write_text("[]", encoding="utf-8")
    assert S.read_samples(path) == ([], [f"{path}: has no samples"])


def test_auto_keeps_chat_files_as_they_were(tmp_path):
    path = write_lines(tmp_path / "train.json", memorization_samples())
    assert S.read_samples(path) == S.read_samples(path, "chat") == (memorization_samples(), [])


def test_every_bad_record_is_reported_with_file_and_line(tmp_path):
    alpaca = write_lines(tmp_path / "alpaca.json", [
        ALPACA[0],
        {"instruction": "no answer", "input": ""},
        {"instruction": "x", "output": 3},
        {"instruction": "x", "output": "y", "history": [["only one"]]},
        "a string",
    ])
    assert S.read_samples(alpaca, "alpaca") == ([ALPACA_AS_CHAT[0]], [
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
    assert S.read_samples(sharegpt, "sharegpt") == ([SHAREGPT_AS_CHAT[0]], [
        f'{sharegpt}:2: "conversations" must be a non-empty list of {{"from", "value"}} objects',
        f'{sharegpt}:3: conversations[0].from must be "human", "gpt" or "system", got \'bot\'',
        f"{sharegpt}:3: conversations[1].value must be a string, got int",
        f"{sharegpt}:4: has no assistant message: there is nothing to learn from it",
    ])
    # a format given is kept: an Alpaca record in a file said to be chat is a chat sample's problem
    assert S.read_samples(alpaca, "chat")[1][0] == (
        f'{alpaca}:1: "messages" must be a non-empty list of {{"role", "content"}} objects')


def test_the_format_is_part_of_the_cache_key(tmp_path, tiny_llama):
    from lora_sweep.job.models import load_tokenizer

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
    assert run_cli(["validate", str(job)]).stdout.splitlines()[:4] == [  # then the first sample, rendered
        f"{job}: valid job config (8 train and 8 test samples)",
        f"{folder / 'train.json'}: alpaca (recognised from line 1: fields instruction, input, output)",
        f"{folder / 'test.json'}: alpaca (recognised from line 1: fields instruction, input, output)",
        "the first training sample as the model sees it; the loss is on what [[ ]] marks:"]
    from lora_sweep.job import train as T

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


TONES = [{"phrase": "What a lovely day!", "tone": "joy"}, {"phrase": "I lost my keys again.", "tone": "sadness"},
         {"phrase": "How dare you!", "tone": "anger"}]
TONE_COLUMNS = {"prompt": "Which tone is this? {phrase}", "answer": "{tone}", "system": "Answer with one word."}
TONES_AS_CHAT = [chat(f"Which tone is this? {t['phrase']}", t["tone"], system="Answer with one word.") for t in TONES]


def columns_section(tmp_path: Path, **update) -> DataSection:
    return DataSection(train_file=str(tmp_path / "t"), test_file=str(tmp_path / "t"), columns=TONE_COLUMNS, **update)


def test_columns_fill_the_templates_from_each_record(tmp_path):
    # the AI Toolkit's Phi-3 tone data: {"phrase", "tone"} per line, text_cols and a text_template
    path = write_lines(tmp_path / "tone.json", TONES + [{"phrase": "Hm.", "label": "neutral"}, {"phrase": None, "tone": "x"}])
    columns = columns_section(tmp_path).columns
    assert S.read_samples(path, "columns", columns) == (TONES_AS_CHAT, [
        f'{path}:4: no field "tone" (fields: phrase, label)',
        f'{path}:5: field "phrase" is null',
    ])
    assert S.read_samples(path, "auto", columns)[0] == TONES_AS_CHAT  # data.columns given: columns


def test_a_csv_saved_by_a_spreadsheet_program(tmp_path):
    # Excel's "CSV UTF-8": a byte-order mark, CRLF, a quoted cell with a comma and one with a line end
    path = tmp_path / "tone.csv"
    path.write_bytes("\ufeffphrase,tone\r\n"
                     "What a lovely day!,joy\r\n"
                     '"Well, I lost my keys\r\nagain.",sadness\r\n'
                     "\r\n"
                     "only one cell\r\n"
                     "How dare you!,anger\r\n".encode("utf-8"))
    columns = columns_section(tmp_path).columns
    samples, problems = S.read_samples(path, "columns", columns)
    assert samples == [TONES_AS_CHAT[0], chat("Which tone is this? Well, I lost my keys\r\nagain.", "sadness",
                                              system="Answer with one word."), TONES_AS_CHAT[2]]
    assert problems == [f"{path}:6: has 1 cells, the header row 2 (phrase, tone)"]
    # an Alpaca spreadsheet, tab-separated, recognised by its header
    tsv = tmp_path / "alpaca.tsv"
    tsv.write_text("instruction\tinput\toutput\nTranslate to French.\tGood morning\tBonjour\n", encoding="utf-8")
    assert S.read_samples(tsv) == ([ALPACA_AS_CHAT[1]], [])
    broken = tmp_path / "broken.csv"
    broken.write_text('phrase,tone\n"never closed,joy\n', encoding="utf-8")
    assert S.read_samples(broken, "columns", columns) == ([], [f"{broken}:2: not valid CSV (unexpected end of data)"])


def test_columns_and_their_templates_are_checked_with_the_config(tmp_path):
    with pytest.raises(ValueError, match=r'data.format: columns needs data.columns, e.g. \{prompt: "\{phrase\}"'):
        DataSection(train_file="t", test_file="t", format="columns")
    with pytest.raises(ValueError, match="data.columns is read with data.format: columns, not alpaca"):
        columns_section(tmp_path, format="alpaca")
    with pytest.raises(ValueError, match=r"\{a.b\}: name a field of the record, e.g. \{phrase\}"):
        DataSection(train_file="t", test_file="t", columns={"prompt": "{a.b}", "answer": "{tone}"})
    with pytest.raises(ValueError, match=r"not a template \(expected '\}' before end of string\)"):
        DataSection(train_file="t", test_file="t", columns={"prompt": "{phrase", "answer": "{tone}"})


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["alpaca", "columns"])
def test_a_sweep_runs_on_alpaca_and_on_columns_data(tiny_llama, tmp_path, kind):
    folder = tmp_path / "data"
    folder.mkdir()
    pairs = [(s["messages"][0]["content"], s["messages"][1]["content"]) for s in memorization_samples()]
    tree = study_tree(tiny_llama, folder, tmp_path / "studies", n_trials=1)
    tree["training"].update(num_training_steps=4, eval_steps=4, save_steps=4)
    if kind == "alpaca":
        for name in ("train.json", "test.json"):
            write_lines(folder / name, [{"instruction": q, "input": "", "output": a} for q, a in pairs])
    else:  # a spreadsheet of questions and answers, through data.columns
        for name in ("train.csv", "test.csv"):
            rows = "".join(f'"{q}","{a}"\r\n' for q, a in pairs)
            (folder / name).write_text("question,answer\r\n" + rows, encoding="utf-8")
        tree["data"].update(dataset=None, train_file=str(folder / "train.csv"), test_file=str(folder / "test.csv"),
                            columns={"prompt": "{question}", "answer": "{answer}"})
    tree["objective"] = {"metric": "token_f1", "max_new_tokens": 6, "baseline": False}
    config = write_yaml(tmp_path / "study.yaml", tree)
    proc = run_cli(["run", str(config)], cwd=tmp_path)  # in this process: the trial's job is launched
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path / "studies")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    for trial in study.trials:  # the answers scored are the records' answers
        records = Path(trial.user_attrs["trial_dir"], "predictions.jsonl").read_text().splitlines()
        assert sorted(json.loads(r)["reference"] for r in records) == sorted(a for _, a in pairs)


def test_convert_writes_the_ai_toolkits_chat_files_from_any_format(tiny_llama, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "tone.csv").write_text("phrase,tone\n" + "".join(f"{t['phrase']},{t['tone']}\n" for t in TONES),
                                     encoding="utf-8")
    tree = job_tree(tiny_llama, folder, tmp_path / "out")
    tree["data"].update(dataset=None, train_file=str(folder / "tone.csv"), test_file=str(folder / "tone.csv"),
                        columns=TONE_COLUMNS)
    job = write_yaml(tmp_path / "job.yaml", tree)
    assert D.main(["convert", str(job), str(tmp_path / "aitk")]) == 0
    for name in ("train.json", "test.json"):  # what the AI Toolkit (and data.format: chat) reads
        assert S.read_samples(tmp_path / "aitk" / name, "chat") == (TONES_AS_CHAT, [])
    # a second time: the files are there; bad data: refused; nothing written either way
    before = (tmp_path / "aitk" / "train.json").read_bytes()
    with pytest.raises(ConfigError) as err:
        S.convert(load_job(job).data, tmp_path / "aitk")
    assert err.value.problems == [f"{tmp_path / 'aitk' / name}: exists: give a new or empty folder"
                                  for name in ("train.json", "test.json")]
    assert (tmp_path / "aitk" / "train.json").read_bytes() == before
    capsys.readouterr()
    assert D.main(["convert", str(job), str(tmp_path / "other"), "data.columns.answer=a {label}"]) == 2
    assert capsys.readouterr().err.splitlines()[:2] == [
        "error: data: 6 problems:", f'  - {folder / "tone.csv"}:2: no field "label" (fields: phrase, tone)']
    assert not (tmp_path / "other").exists()


def test_show_says_the_format_found_and_how_the_first_sample_renders(tiny_llama, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_lines(folder / "train.json", ALPACA)
    write_lines(folder / "test.json", SHAREGPT)
    job = write_yaml(tmp_path / "job.yaml", job_tree(tiny_llama, folder, tmp_path / "out"))
    assert D.main(["show", str(job), "data.system_prompt=Be kind."]) == 0
    assert capsys.readouterr().out == (
        f"{folder / 'train.json'}: alpaca (recognised from line 1: fields instruction, input, output)\n"
        f"{folder / 'test.json'}: sharegpt (recognised from line 1: fields conversations)\n"
        "the first training sample as the model sees it; the loss is on what [[ ]] marks:\n"
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nGive three tips for staying healthy.<|im_end|>\n"
        "<|im_start|>assistant\n[[Eat well, sleep, move.<|im_end|>\n]]\n")
    assert not (tmp_path / "out").exists()
