"""Data and scorers a user gets wrong, through the real commands: `validate` names the problem in
one line, and `run` refuses with the same line before anything is written (no study folder, no
tokenized cache). Each case is a file written here byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import chat, memorization_samples, run_cli, study_tree, write_yaml
from lora_sweep.config.job import ConfigError


def lines(samples: list[dict]) -> str:
    return "".join(json.dumps(s) + "\n" for s in samples)


# Each case spoils the memorization set in `folder` (or the study `tree`) and returns the problems
# `validate` and `run` must both report.


def utf16_without_bom(folder: Path, tree: dict) -> list[str]:
    (folder / "train.json").write_bytes(lines(memorization_samples()).encode("utf-16-le"))
    return [f"{folder / 'train.json'}: UTF-16 without a byte-order mark: save as UTF-8"]


def one_long_line(folder: Path, tree: dict) -> list[str]:
    big = json.dumps(chat("x " * 1_000_000, "The cat likes red."))  # 2 MB on one line
    (folder / "train.json").write_text(lines(memorization_samples()) + big + "\n", encoding="utf-8")
    return [f"{folder / 'train.json'}:9: a sample of {len(big.encode()):,} bytes, longer than the limit of "
            f"1,048,576 (1 MiB): shorten or split it"]


def dataset_is_a_link_loop(folder: Path, tree: dict) -> list[str]:
    loop = folder.parent / "loop"
    loop.symlink_to(loop)  # data.dataset -> loop -> loop ...
    tree["data"]["dataset"] = str(loop)
    return [f"{loop / name}: {loop} is a symbolic link loop (it leads back to itself): point it at the data"
            for name in ("train.json", "test.json")]


def split_too_big(folder: Path, tree: dict) -> list[str]:
    tree["data"]["validation_split"] = 50
    return ["data.validation_split (50) must be below the number of train.json samples (8): at least one must be "
            "left to train on"]


CASES = {case.__name__: case for case in (utf16_without_bom, one_long_line, dataset_is_a_link_loop, split_too_big)}


@pytest.fixture
def study(tiny_llama, chat_data, tmp_path) -> tuple[Path, dict]:
    """The memorization set in tmp_path/data and a study tree on it, its cache in tmp_path/cache."""
    tree = study_tree(tiny_llama, chat_data, tmp_path / "studies")
    tree["data"]["cache_dir"] = str(tmp_path / "cache")
    return chat_data, tree


@pytest.mark.parametrize("case", CASES)
def test_validate_and_run_refuse_bad_data_in_the_same_words_writing_nothing(study, tmp_path, case):
    folder, tree = study
    problems = CASES[case](folder, tree)
    config = write_yaml(tmp_path / "study.yaml", tree)
    before = sorted(tmp_path.iterdir())
    validated = run_cli(["validate", str(config)], cwd=tmp_path)
    assert (validated.returncode, validated.stdout) == (2, "")
    assert validated.stderr == f"error: {ConfigError(problems, str(config))}\n"
    ran = run_cli(["run", str(config)], cwd=tmp_path)
    assert ran.returncode == 2
    assert ran.stderr.endswith(f"error: {ConfigError(problems, 'data')}\n")
    assert sorted(tmp_path.iterdir()) == before  # no studies/, no cache/


def test_a_long_line_is_refused_in_bounded_memory_before_it_is_parsed(tmp_path):
    path = tmp_path / "train.json"
    big = json.dumps(chat("x " * 5_000_000, "The cat likes red."))  # 10 MB on one line
    path.write_text(lines(memorization_samples()[:2]) + big + "\n" + lines(memorization_samples()[2:]),
                    encoding="utf-8")
    # measured in a child process: this one's allocations (the test's own 10 MB string) stay out
    code = ("import sys, tracemalloc; from lora_sweep.job import samples as S; tracemalloc.start(); "
            "samples, problems = S.read_samples(sys.argv[1]); "
            "print(len(samples), tracemalloc.get_traced_memory()[1]); print(*problems, sep='\\n')")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    head, *problems = done.stdout.splitlines()
    kept, peak = map(int, head.split())
    assert kept == 8  # every other line is read
    assert problems == [f"{path}:3: a sample of {len(big.encode()):,} bytes, longer than the limit of 1,048,576 "
                        f"(1 MiB): shorten or split it"]
    assert peak < 4 * 2**20  # bytes: a few blocks of the file, never the whole line (10 MB)


def test_a_scorer_that_raises_is_named_with_its_file(study, tmp_path, monkeypatch):
    _, tree = study
    scorer = tmp_path / "boom_scorer.py"
    scorer.write_text("def score(prediction, reference, sample):\n    raise KeyError('topic')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "boom_scorer", raising=False)
    tree["objective"] = {"metric": "python:boom_scorer:score", "baseline": False}
    config = write_yaml(tmp_path / "study.yaml", tree)
    problem = f"objective.metric: scorer python:boom_scorer:score raised KeyError: 'topic' ({scorer}, line 2)"
    validated = run_cli(["validate", str(config)], cwd=tmp_path)
    assert (validated.returncode, validated.stderr) == (2, f"error: {config}: {problem}\n")
    ran = run_cli(["run", str(config)], cwd=tmp_path)
    assert ran.returncode == 2 and ran.stderr.splitlines()[-1] == f"error: {problem}"
    assert not (tmp_path / "studies").exists() and not (tmp_path / "cache").exists()
