"""Data as tables: Parquet files written by pandas and datasets saved with `datasets`' save_to_disk,
each written here by the real library as its users write them, read through the same formats,
checks and messages as JSON lines (a record's place is its row, counted from 0); `validate` saying
which format it found and how the first sample renders; and `python -m lora_sweep convert`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from helpers import chat, job_tree, run_cli, write_yaml
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.config.job import DataSection
from test_formats import ALPACA, ALPACA_AS_CHAT, SHAREGPT, SHAREGPT_AS_CHAT, TONE_COLUMNS, TONES, TONES_AS_CHAT

# Alpaca as a table: every row has every column (null where a record had none)
ALPACA_ROWS = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"],
                "system": r.get("system"), "history": r.get("history")} for r in ALPACA]
SHAREGPT_ROWS = [{"system": r.get("system"), "conversations": r["conversations"]} for r in SHAREGPT]


def test_parquet_files_written_by_pandas(tmp_path):
    alpaca = tmp_path / "alpaca.parquet"
    pd.DataFrame(ALPACA_ROWS).to_parquet(alpaca)
    assert S.read_samples(alpaca) == (ALPACA_AS_CHAT, [])
    assert S.format_found(alpaca, "auto", None) == (
        "alpaca", "recognised from row 0: fields instruction, input, output, system, history")
    sharegpt = tmp_path / "sharegpt.parquet"  # a list of {from, value} per row, and a system column
    pd.DataFrame(SHAREGPT_ROWS).to_parquet(sharegpt)
    assert S.read_samples(sharegpt, "sharegpt") == (SHAREGPT_AS_CHAT, [])
    tones = tmp_path / "tones.parquet"  # the user's own columns, one of them numbers
    pd.DataFrame([{**t, "id": i} for i, t in enumerate(TONES)]).to_parquet(tones, index=False)
    columns = DataSection(train_file="t", test_file="t", columns={**TONE_COLUMNS, "prompt": "{id}: {phrase}"}).columns
    assert S.read_samples(tones, "columns", columns)[0][1] == chat(
        "1: I lost my keys again.", "sadness", system="Answer with one word.")


def test_bad_rows_of_a_parquet_file_are_reported_by_row(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame([ALPACA_ROWS[0],
                  {"instruction": "no answer", "input": "", "output": None},
                  {"instruction": None, "input": "", "output": "y"},
                  ALPACA_ROWS[1]]).to_parquet(path)
    assert S.read_samples(path, "alpaca") == ([ALPACA_AS_CHAT[0], ALPACA_AS_CHAT[1]], [
        f'{path}:row 1: field "output" is null',
        f'{path}:row 2: field "instruction" is null',
    ])
    pd.DataFrame(TONES).to_parquet(path)
    columns = DataSection(train_file="t", test_file="t", columns={"prompt": "{phrase}", "answer": "{label}"}).columns
    assert S.read_samples(path, "columns", columns)[1][0] == f'{path}:row 0: no field "label" (fields: phrase, tone)'
    path.write_text("phrase,tone\nhi,joy\n", encoding="utf-8")  # a CSV named .parquet
    assert S.read_samples(path) == ([], [f"{path}: not a Parquet file (Parquet magic bytes not found in footer. "
                                         f"Either the file is corrupted or this is not a parquet file.)"])


def saved(folder: Path, records: list[dict], shards: int = 1) -> Path:
    datasets.Dataset.from_list(records).save_to_disk(str(folder), num_shards=shards)
    return folder


def test_a_dataset_saved_to_disk_is_read_without_the_datasets_library(tmp_path):
    folder = saved(tmp_path / "alpaca", ALPACA_ROWS, shards=2)  # rows counted on across the shards
    assert len(json.loads((folder / "state.json").read_text())["_data_files"]) == 2
    assert S.read_samples(folder) == (ALPACA_AS_CHAT, [])
    bad = saved(tmp_path / "bad", [*ALPACA_ROWS, {**ALPACA_ROWS[0], "output": None}], shards=2)
    assert S.read_samples(bad) == (ALPACA_AS_CHAT, [f'{bad}:row 3: field "output" is null'])
    assert S.read_samples(saved(tmp_path / "sharegpt", SHAREGPT_ROWS)) == (SHAREGPT_AS_CHAT, [])
    # a DatasetDict (train and test splits): one split's folder is the file
    splits = tmp_path / "splits"
    datasets.DatasetDict(train=datasets.Dataset.from_list(TONES), test=datasets.Dataset.from_list(TONES)
                         ).save_to_disk(str(splits))
    columns = DataSection(train_file="t", test_file="t", columns=TONE_COLUMNS).columns
    assert S.read_samples(splits / "test", "auto", columns) == (TONES_AS_CHAT, [])
    assert S.read_samples(splits) == ([], [f"{splits}: holds a DatasetDict (dataset_dict.json, splits train, test): "
                                           f"give one split's folder, e.g. {splits / 'train'}, or the whole as "
                                           f"data.dataset"])
    (folder / "state.json").write_text("{}", encoding="utf-8")
    assert S.read_samples(folder) == ([], [f"{folder}: state.json does not list the dataset's files as save_to_disk "
                                           f"writes it (KeyError('_data_files'))"])


def test_the_cache_key_follows_a_saved_datasets_files(tmp_path, tiny_llama):
    from lora_sweep.job.models import load_tokenizer

    folder = saved(tmp_path / "d", ALPACA_ROWS)
    data = DataSection(train_file=str(folder), test_file=str(folder), cache_dir=str(tmp_path / "cache"))
    tok = load_tokenizer(str(tiny_llama))
    before = D.cache_path(data, 0, tok)
    assert D.cache_path(data, 0, tok) == before
    saved(tmp_path / "d", ALPACA_ROWS[:2])  # save_to_disk over it: the cache key changes with the data
    assert D.cache_path(data, 0, tok) != before


def table_job(tiny_llama: Path, tmp_path: Path) -> Path:
    """A job on an Alpaca Parquet file (train) and a saved ShareGPT dataset (test)."""
    pd.DataFrame(ALPACA_ROWS).to_parquet(tmp_path / "train.parquet")
    saved(tmp_path / "test", SHAREGPT_ROWS)
    tree = job_tree(tiny_llama, tmp_path, tmp_path / "out")
    tree["data"].update(dataset=None, train_file=str(tmp_path / "train.parquet"), test_file=str(tmp_path / "test"),
                        system_prompt="Be kind.", train_seqlen=128, test_seqlen=128)
    return write_yaml(tmp_path / "job.yaml", tree)


RENDERED = ("the first training sample as the model sees it; the loss is on what [[ ]] marks:\n"
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nGive three tips for staying healthy.<|im_end|>\n"
            "<|im_start|>assistant\n[[Eat well, sleep, move.<|im_end|>\n]]\n")


def test_validate_says_the_formats_found_and_renders_the_first_sample(tiny_llama, tmp_path):
    job = table_job(tiny_llama, tmp_path)
    done = run_cli(["validate", str(job)])
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"{job}: valid job config (3 train and 3 test samples)\n"
        f"{tmp_path / 'train.parquet'}: alpaca (recognised from row 0: fields instruction, input, output, system, "
        f"history)\n"
        f"{tmp_path / 'test'}: sharegpt (recognised from row 0: fields system, conversations)\n" + RENDERED)
    done = run_cli(["validate", str(job), "data.format=alpaca"])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[:2] == [
        f"error: {job}: 6 problems:",  # no instruction, no output: each of the 3 rows
        f"  - {tmp_path / 'test'}:row 0: no field \"instruction\" (fields: system, conversations)"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_the_convert_command_writes_chat_files_from_tables(tiny_llama, tmp_path):
    job = table_job(tiny_llama, tmp_path)
    out = tmp_path / "aitk"
    done = run_cli(["convert", str(job), str(out)])
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{out / 'train.json'}: 3 chat samples\n{out / 'test.json'}: 3 chat samples\n"
    assert S.read_samples(out / "train.json", "chat") == (ALPACA_AS_CHAT, [])
    assert S.read_samples(out / "test.json", "chat") == (SHAREGPT_AS_CHAT, [])
    assert D.main(["show", str(job)]) == 0  # the data module's own commands read the same
    # bad data (an override, as for every command): refused, nothing written
    other = tmp_path / "other"
    done = run_cli(["convert", str(job), str(other), "data.format=sharegpt"])
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[:2] == [
        "error: data: 3 problems:",
        f"  - {tmp_path / 'train.parquet'}:row 0: \"conversations\" must be a non-empty list of {{\"from\", \"value\"}} "
        f"objects"]
    assert not other.exists()
    done = run_cli(["convert", str(job), str(out)])  # files already there
    assert done.stderr == (f"error: data: 2 problems:\n  - {out / 'train.json'}: exists: give a new or empty folder\n"
                           f"  - {out / 'test.json'}: exists: give a new or empty folder\n")
    assert S.read_samples(out / "train.json", "chat") == (ALPACA_AS_CHAT, [])


@pytest.mark.parametrize("command", [["convert"], ["validate"]])
def test_a_missing_parquet_file_is_one_line(tmp_path, command):
    tree = {"model": {"name_or_path": str(tmp_path)}, "output_dir": str(tmp_path / "out"),
            "data": {"train_file": str(tmp_path / "train.parquet"), "test_file": str(tmp_path / "train.parquet")}}
    job = write_yaml(tmp_path / "job.yaml", tree)
    done = run_cli([*command, str(job), *([str(tmp_path / "aitk")] if command == ["convert"] else [])])
    assert done.returncode == 2
    assert f"{tmp_path / 'train.parquet'}: no such file" in done.stderr
    assert not (tmp_path / "aitk").exists() and not (tmp_path / "out").exists()


def test_without_the_tokenizer_validate_says_the_formats_only(tmp_path):
    # a hub model not downloaded yet (a GPU sweep validated offline): nothing is rendered, nothing fetched
    pd.DataFrame(ALPACA_ROWS).to_parquet(tmp_path / "train.parquet")
    tree = {"model": {"name_or_path": "nobody/not-here"}, "output_dir": str(tmp_path / "out"),
            "data": {"train_file": str(tmp_path / "train.parquet"), "test_file": str(tmp_path / "train.parquet")}}
    job = write_yaml(tmp_path / "job.yaml", tree)
    done = run_cli(["validate", str(job)])
    assert done.returncode == 0
    assert done.stdout == (f"{job}: valid job config (3 train and 3 test samples)\n"  # one line for the one file
                           f"{tmp_path / 'train.parquet'}: alpaca (recognised from row 0: fields instruction, input, "
                           f"output, system, history)\n")
    assert done.stderr == ("note: answers cut away by the seqlens not counted: model.name_or_path 'nobody/not-here' "
                           "is not in the Hugging Face cache yet\n")
