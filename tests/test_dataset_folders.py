"""data.dataset as users of `datasets` keep their data: a DatasetDict saved with save_to_disk and a folder
of Parquet files (shards named for their split, the Hugging Face hub's data/train-00000-of-00001.parquet),
written by the real library, their splits found as `datasets` names them; a missing split is one line,
and nothing is written. And such data travels to Ray nodes that do not see it, packed and placed."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from helpers import job_tree, run_cli, write_yaml
from lora_sweep.config.job import ConfigError, DataSection
from lora_sweep.config.files import validate_job
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.launch import ray_tasks
from test_formats import ALPACA_AS_CHAT, SHAREGPT_AS_CHAT
from test_formats_more import ALPACA_ROWS, SHAREGPT_ROWS


def hub_layout(folder, train_shards: int = 2):
    """The layout of a dataset pushed to the hub (or `huggingface-cli download`ed): data/<split>-NNNNN-of-NNNNN.parquet."""
    (folder / "data").mkdir(parents=True)
    rows = datasets.Dataset.from_list(ALPACA_ROWS)
    for i in range(train_shards):
        rows.shard(train_shards, i, contiguous=True).to_parquet(
            str(folder / f"data/train-{i:05d}-of-{train_shards:05d}.parquet"))
    datasets.Dataset.from_list(SHAREGPT_ROWS).to_parquet(str(folder / "data/test-00000-of-00001.parquet"))
    return folder


def test_a_saved_datasetdict_gives_its_splits(tmp_path):
    folder = tmp_path / "my_data"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA_ROWS),
                          "validation": datasets.Dataset.from_list(ALPACA_ROWS[:2]),
                          "test": datasets.Dataset.from_list(SHAREGPT_ROWS)}).save_to_disk(str(folder))
    data = DataSection(dataset=str(folder))
    assert (data.train_file, data.test_file, data.validation_file) == (
        str(folder / "train"), str(folder / "test"), str(folder / "validation"))  # validation chooses, test scores
    train, test, validation, problems = S.read_files(data)
    assert (train, test, validation, problems) == (ALPACA_AS_CHAT, SHAREGPT_AS_CHAT, ALPACA_AS_CHAT[:2], [])
    # a validation_split of the user's own keeps the validation split out; a file given wins over its split
    data = DataSection(dataset=str(folder), validation_split=1, test_file=str(folder / "validation"))
    assert (data.train_file, data.test_file, data.validation_file) == (
        str(folder / "train"), str(folder / "validation"), None)


def test_a_folder_of_parquet_files_gives_its_splits(tmp_path):
    hub = hub_layout(tmp_path / "hub")
    data = DataSection(dataset=str(hub))
    assert (data.train_file, data.test_file, data.validation_file) == (
        str(hub / "data/train-0000*.parquet"), str(hub / "data/test-00000-of-00001.parquet"), None)
    assert S.read_files(data) == (ALPACA_AS_CHAT, SHAREGPT_AS_CHAT, None, [])  # rows on across the shards
    assert S.format_found(data.train_file, "auto", None) == (
        "alpaca", "recognised from row 0: fields instruction, input, output, system, history")
    before = D.file_digest(data.train_file)  # the cache follows the shards' contents
    datasets.Dataset.from_list(ALPACA_ROWS[:1]).to_parquet(str(hub / "data/train-00001-of-00002.parquet"))
    assert D.file_digest(data.train_file) != before
    # a bad row is named by its place across the shards, as load_dataset("parquet", data_files=...)[2] is
    bad = tmp_path / "bad"
    (bad / "train").mkdir(parents=True)  # a folder per split: train/*.parquet
    for i, rows in enumerate([ALPACA_ROWS[:2], [{**ALPACA_ROWS[2], "output": None}]]):
        pd.DataFrame(rows).to_parquet(bad / f"train/part-{i}.parquet")
    pd.DataFrame(ALPACA_ROWS).to_parquet(bad / "test.parquet")
    data = DataSection(dataset=str(bad))
    assert (data.train_file, data.test_file) == (str(bad / "train/*.parquet"), str(bad / "test.parquet"))
    assert S.read_files(data)[3] == [f'{bad / "train/*.parquet"}:row 2: field "output" is null']
    assert S.read_samples(bad / "nope-*.parquet") == ([], [f"{bad / 'nope-*.parquet'}: no file matches"])


def test_a_missing_split_is_one_line_and_nothing_is_written(tmp_path):
    only_train = tmp_path / "only_train"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA_ROWS),
                          "validation": datasets.Dataset.from_list(ALPACA_ROWS)}).save_to_disk(str(only_train))
    tree = job_tree(tmp_path, only_train, tmp_path / "out")  # the model is not loaded
    with pytest.raises(ConfigError) as err:
        validate_job(tree)
    assert err.value.problems == [(
        f'data.dataset: {only_train} holds a DatasetDict (dataset_dict.json, splits train, validation): no test split '
        f'(a split named "test" or "testing"); give data.test_file')]
    job = write_yaml(tmp_path / "job.yaml", tree)
    done = run_cli(["convert", str(job), str(tmp_path / "aitk")])
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: {job}: {err.value.problems[0]}\n"
    assert not (tmp_path / "aitk").exists() and not (tmp_path / "out").exists()

    shards = tmp_path / "shards"  # Parquet files of no split's name: datasets would make them all train
    shards.mkdir()
    pd.DataFrame(ALPACA_ROWS).to_parquet(shards / "part-0.parquet")
    tree = job_tree(tmp_path, shards, tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        validate_job(tree)
    assert err.value.problems == [(
        f'data.dataset: {shards} holds Parquet files (part-0.parquet), none named for a split: no train and no test split '
        f'(a split named "train" or "training" or "test" or "testing"); give data.train_file')]
    tree["data"]["train_file"] = str(shards / "part-0.parquet")  # given: only the test split is asked for
    with pytest.raises(ConfigError) as err:
        validate_job(tree)
    assert err.value.problems[0].endswith('no test split (a split named "test" or "testing"); give data.test_file')


def test_a_saved_dataset_and_parquet_shards_travel_to_a_ray_node(tmp_path):
    """What shipped_files puts in Ray's object store for a node that does not see the data, and what
    local_job makes of it there: the same samples, from the node's own copy."""
    hub = hub_layout(tmp_path / "hub")
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(SHAREGPT_ROWS).save_to_disk(str(folder), num_shards=2)
    node = tmp_path / "node"
    for path in (str(hub / "data/train-0000*.parquet"), str(folder), str(hub / "data/test-00000-of-00001.parquet")):
        blob, name, packed = ray_tasks.packed_data(path)
        assert packed == (path != str(hub / "data/test-00000-of-00001.parquet"))  # a file travels as it is
        placed = ray_tasks.place_data(blob, name, packed, node / "data" / name.replace("*", "_"))
        assert placed.parent.parent == node / "data" and placed.name == name
        assert S.read_samples(placed) == S.read_samples(path) != ([], [])
        assert ray_tasks.place_data(blob, name, packed, placed.parent) == placed  # a second trial there: kept
