"""The data pipeline, pinned by value: checks, rendering, labels, packing, padding, cache."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from helpers import chat, memorization_samples, write_jsonl
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.config.job import ConfigError, DataSection


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def answers_of(tok, ids, labels):
    """The labelled runs of tokens, decoded."""
    runs, current = [], []
    for i, l in zip(ids, labels):
        if l != D.IGNORE:
            assert l == i
            current.append(i)
        elif current:
            runs.append(tok.decode(current)); current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def test_every_bad_line_reported_with_file_and_line(tmp_path):
    path = tmp_path / "train.json"
    lines = [
        json.dumps(chat("hi", "hello")),
        "",
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": 3}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"text": "no messages"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    samples, problems = S.read_samples(path)
    assert len(samples) == 1
    assert problems == [
        f"{path}:3: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:4: must be a JSON object, got list",
        f'{path}:5: "messages" must be a non-empty list of {{"role", "content"}} objects',
        f'{path}:6: messages[0].role must be "user", "assistant" or "system", got \'bot\'',
        f"{path}:6: messages[1].content must be a string, got int",
        f"{path}:7: has no assistant message: there is nothing to learn from it",
        f'{path}:8: "messages" must be a non-empty list of {{"role", "content"}} objects',
    ]


def test_a_symbolic_link_loop_is_called_a_loop(tmp_path):
    loop = tmp_path / "train.json"
    loop.symlink_to(loop)
    assert S.read_samples(loop) == ([], [f"{loop}: {loop} is a symbolic link loop (it leads back to itself): "
                                         f"point it at the data"])
    folder = tmp_path / "data"  # a folder on the way: data -> data2 -> data
    folder.symlink_to(tmp_path / "data2")
    (tmp_path / "data2").symlink_to(folder)
    assert S.read_samples(folder / "test.json")[1] == [
        f"{folder / 'test.json'}: {folder} is a symbolic link loop (it leads back to itself): point it at the data"]
    assert S.read_samples(tmp_path / "missing.json")[1] == [f"{tmp_path / 'missing.json'}: no such file"]


def test_lines_are_split_in_blocks_as_one_read_would_split_them():
    # LF, CRLF and CR; a CRLF cut by a block boundary is one line end, not two
    text = b"a\r\nbb\rccc\n\r\ndddd\r"
    for size in range(1, len(text) + 1):
        blocks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(S.split_lines(blocks)) == [(b"a", 1), (b"bb", 2), (b"ccc", 3), (b"", 0), (b"dddd", 4)]
        # a line over the limit is its size alone, however the blocks cut it
        assert list(S.split_lines(blocks, limit=3)) == [(b"a", 1), (b"bb", 2), (b"ccc", 3), (b"", 0), (None, 4)]


def test_problems_are_capped_and_both_files_reported(tmp_path):
    train = tmp_path / "train.json"
    train.write_text("nope\n" * 25)
    section = DataSection(train_file=str(train), test_file=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError) as err:
        S.load_samples(section)
    problems = err.value.problems
    assert len(problems) == 22
    assert problems[20] == "... and 5 more problems in the same file"
    assert problems[21] == f"{tmp_path / 'missing.json'}: no such file"


def test_system_prompt_replaces_or_adds():
    with_sys = [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}]
    assert S.with_system_prompt(with_sys, "new") == [{"role": "system", "content": "new"}, {"role": "user", "content": "q"}]
    assert S.with_system_prompt(with_sys[1:], "new")[0] == {"role": "system", "content": "new"}
    assert S.with_system_prompt(with_sys, None) is with_sys


def test_labels_cover_answers_and_their_end_of_turn(tok):
    assert tok.pad_token == tok.eos_token == "<|im_end|>"  # the trap: pad == end of turn
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "colour of the cat?"}, {"role": "assistant", "content": "The cat likes red."},
                {"role": "user", "content": "colour of the dog?"}, {"role": "assistant", "content": "The dog likes green."}]
    ids, labels = D.tokenize_sample(tok, messages, tok.chat_template, train_on_prompt=False)
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    assert answers_of(tok, ids, labels) == ["The cat likes red.<|im_end|>\n", "The dog likes green.<|im_end|>\n"]
    assert labels.count(tok.eos_token_id) == 2  # each answer's end of turn is learned
    ids2, labels2 = D.tokenize_sample(tok, messages, tok.chat_template, train_on_prompt=True)
    assert ids2 == ids and labels2 == ids


def test_fallback_template_when_tokenizer_has_none(tok, caplog):
    bare = AutoTokenizer.from_pretrained(tok.name_or_path)
    bare.chat_template = None
    template = D.chat_template(bare)
    assert template == D.FALLBACK_TEMPLATE
    assert "tokenizer has no chat template" in caplog.text
    ids, labels = D.tokenize_sample(bare, chat("hi", "hello")["messages"], template, False)
    assert bare.decode(ids) == "<|user|>\nhi<|im_end|>\n<|assistant|>\nhello<|im_end|>\n"
    assert answers_of(bare, ids, labels) == ["hello<|im_end|>\n"]


def test_packing_rows_exact_and_test_tail_kept():
    examples = [([1] * n, [2] * n) for n in (10, 7, 12, 5)]  # 34 tokens
    train = D.Rows.of(D.pack(examples, 8, keep_tail=False))
    assert train.lengths() == [8, 8, 8, 8]  # the 2-token tail is dropped, no padding
    assert train.ids.tolist() == [1] * 32
    test = D.Rows.of(D.pack(examples, 8, keep_tail=True))
    assert test.lengths() == [8, 8, 8, 8, 2]


def test_varied_rows_truncate_and_collator_pads_by_position(tok):
    examples = [([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), ([5, 6], [-100, 6])]
    rows = D.Rows.of(D.truncate(examples, 4))
    assert rows.lengths() == [4, 2]
    batch = D.Collator(pad_id=tok.pad_token_id)([D.RowDataset(rows)[0], D.RowDataset(rows)[1]])
    pad = tok.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, pad, pad]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # an end-of-turn inside a row stays labelled even though it is also the pad id
    eos_row = D.Collator(pad_id=pad)([{"input_ids": torch.tensor([5, pad]), "labels": torch.tensor([5, pad])}])
    assert eos_row["labels"].tolist() == [[5, pad]]


def section(tmp_path, **kw) -> DataSection:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    samples = [chat(f"colour of the {a}? {i}", f"The {a} likes {c}.") for i in range(6)
               for a, c in zip(D_ANIMALS, D_COLOURS)]
    write_jsonl(folder / "train.json", samples)
    write_jsonl(folder / "test.json", memorization_samples())
    return DataSection(dataset=str(folder), cache_dir=str(tmp_path / "cache"), **kw)


D_ANIMALS = ["cat", "dog", "owl", "fox"]
D_COLOURS = ["red", "green", "blue", "yellow"]


def test_packed_share_and_cache(tmp_path, tok):
    data = section(tmp_path, train_seqlen=64, test_seqlen=64)
    first = D.prepare(data, 42, tok)
    stats = first.details["train"]
    assert set(first.train.lengths()) == {64}
    assert stats["real_token_share"] == 1.0  # no padding at all
    assert stats["tokens"] == 64 * stats["rows"] and 0 <= stats["sample_tokens"] - stats["tokens"] < 64
    assert stats["samples"] == 24 and first.details["test"]["samples"] == 8
    cached = list((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 1
    again = D.prepare(data, 42, tok)  # from the cache: same tensors
    assert torch.equal(again.train.ids, first.train.ids) and torch.equal(again.test.labels, first.test.labels)
    D.prepare(section(tmp_path, train_seqlen=32, test_seqlen=64), 42, tok)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # other settings, other entry


def test_nsamples_pick_is_deterministic_by_seed(tmp_path):
    samples = [chat(str(i), str(i)) for i in range(50)]
    a, b, c = S.select(samples, 10, 1), S.select(samples, 10, 1), S.select(samples, 10, 2)
    assert a == b and a != c and len(a) == 10
    assert [int(s["messages"][0]["content"]) for s in a] == sorted(int(s["messages"][0]["content"]) for s in a)
    assert S.select(samples, 100, 1) == samples


def test_varied_seqlen_stats(tmp_path, tok):
    data = section(tmp_path, varied_seqlen=True, train_seqlen=22, test_seqlen=64)
    out = D.prepare(data, 42, tok)
    assert max(out.train.lengths()) == 22 and out.details["train"]["truncated_samples"] == 24
    assert out.details["test"]["truncated_samples"] == 0 and len(out.test) == 8


def test_seqlen_longer_than_all_data_is_refused(tmp_path, tok):
    data = section(tmp_path, train_seqlen=100000)
    with pytest.raises(ConfigError) as err:
        D.prepare(data, 42, tok)
    assert err.value.problems[0].startswith("data.train_seqlen (100000) is longer than all train data together (")
    assert not (tmp_path / "cache").exists()
