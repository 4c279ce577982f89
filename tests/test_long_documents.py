"""Long documents, short answers: news items of hundreds of tokens, each labelled with one word,
at a seqlen far below the items' length. No row may hold zero labelled tokens (its loss would be
0/0 = NaN), and what the seqlen cut away is counted and named in one warning line."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import write_jsonl
from lora_sweep.job import data as D
from lora_sweep.config.job import ConfigError, DataSection
from lora_sweep.job.models import load_tokenizer

LABELS = ["sport", "politics", "science", "business"]


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return load_tokenizer(str(tiny_llama))


def news(tok, i: int, tokens: int, follow_up: int = 0) -> dict:
    """A news item -> one-line label sample of exactly `tokens` tokens as rendered (the item's
    body is padded with " the", one token each); `follow_up` > 0 adds a last user turn of that
    many filler tokens after the answer, so the sample ends in prompt tokens."""

    def sample(body: int) -> dict:
        messages = [{"role": "user", "content": f"Label this news item. Item {i}: markets and teams" + " the" * body},
                    {"role": "assistant", "content": LABELS[i % len(LABELS)]}]
        if follow_up:
            messages.append({"role": "user", "content": "and" + " the" * follow_up})
        return {"messages": messages}

    base = len(D.tokenize_sample(tok, sample(0)["messages"], tok.chat_template, False)[0])
    made = sample(tokens - base)
    assert len(D.tokenize_sample(tok, made["messages"], tok.chat_template, False)[0]) == tokens
    return made


def news_section(tmp_path, train: list[dict], test: list[dict], **kw) -> DataSection:
    folder = tmp_path / "news"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "train.json", train)
    write_jsonl(folder / "test.json", test)
    return DataSection(dataset=str(folder), cache_dir=str(tmp_path / "cache"), **kw)


def labelled_per_row(rows: D.Rows) -> list[int]:
    return [int((rows.row(i)[1] != D.IGNORE).sum()) for i in range(len(rows))]


STATS_KEYS = ["train_rows", "train_rows_without_labels", "train_answers_cut",
              "test_rows", "test_rows_without_labels", "test_answers_cut", "seqlen_to_keep_answers",
              "eval_set", "eval_samples"]


def counts(stats: dict) -> tuple:
    """Per side (rows kept, rows dropped without labels, answers cut), then seqlen_to_keep_answers."""
    assert sorted(stats) == sorted(STATS_KEYS)  # exactly these keys
    values = [stats[key] for key in STATS_KEYS]
    return tuple(values[0:3]), tuple(values[3:6]), values[6]


def test_packed_rows_without_labels_are_dropped_and_counted(tmp_path, tok):
    # 6 items of 512 tokens, then 2 of 64: at seqlen 128 each long item fills 4 rows, the first
    # 3 of them prompt only; the 2 short items share the last row.
    train = [news(tok, i, 512) for i in range(6)] + [news(tok, 6 + i, 64) for i in range(2)]
    # test: 2 long items, then one whose last user turn runs past its answer into a tail row
    # (keep_tail keeps a short last row for evaluation; this one holds no label)
    last = news(tok, 8, 200, follow_up=120)
    assert D.answer_span(D.tokenize_sample(tok, last["messages"], tok.chat_template, False)[1])[1] < 128
    data = news_section(tmp_path, train, [news(tok, 9, 512), news(tok, 10, 512), last],
                        train_seqlen=128, test_seqlen=128)
    out = D.prepare(data, 42, tok)
    assert out.train.lengths() == [128] * 7
    assert min(labelled_per_row(out.train)) > 0 and min(labelled_per_row(out.test)) > 0
    assert out.test.lengths() == [128, 128, 128]  # the 72-token tail, all prompt, is gone
    assert counts(out.stats) == ((7, 18, 6), (3, 7, 2), 512)
    assert D.answer_warning(out.stats, data) == (
        "18 of 25 packed train rows hold no answer token (dropped); 6 train samples have prompts that fill "
        "train_seqlen 128 (their answers lose the prompt's start); 7 of 10 packed test rows hold no answer "
        "token (dropped); 2 test samples have prompts that fill test_seqlen 128 (their answers lose the "
        "prompt's start); varied_seqlen: true with train_seqlen and test_seqlen 512 would keep every answer "
        "with its whole prompt"
    )


def test_every_packed_batch_has_a_finite_loss(tmp_path, tok, tiny_llama):
    """The trial that failed with "training loss is nan": batches of one packed row each."""
    data = news_section(tmp_path, [news(tok, i, 512) for i in range(3)], [news(tok, 3, 256)],
                        train_seqlen=128, test_seqlen=128)
    out = D.prepare(data, 42, tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    collate, dataset = D.Collator(tok.pad_token_id), D.RowDataset(out.train)
    with torch.no_grad():
        losses = [model(**collate([dataset[i]])).loss.item() for i in range(len(dataset))]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_varied_samples_whose_answer_is_cut_away_are_dropped(tmp_path, tok):
    # long items (512) alternate with short ones (64); one item of 130 tokens keeps part of its
    # answer at 128, so it is not cut away entirely
    train = [news(tok, i, 512 if i % 2 else 64) for i in range(8)] + [news(tok, 8, 130)]
    data = news_section(tmp_path, train, [news(tok, 9, 100), news(tok, 10, 300)],
                        varied_seqlen=True, train_seqlen=128, test_seqlen=512)
    out = D.prepare(data, 42, tok)
    assert out.train.lengths() == [64, 64, 64, 64, 128]
    assert min(labelled_per_row(out.train)) > 0
    assert out.test.lengths() == [100, 300]
    assert counts(out.stats) == ((5, 4, 4), (2, 0, 0), 512)
    assert D.answer_warning(out.stats, data) == (
        "4 of 9 train samples have answers that train_seqlen 128 cuts away (their rows were dropped); "
        "train_seqlen 512 would keep them"
    )


def test_varied_train_on_prompt_keeps_the_rows_but_still_warns(tmp_path, tok):
    data = news_section(tmp_path, [news(tok, 0, 300), news(tok, 1, 64)], [news(tok, 2, 64)],
                        varied_seqlen=True, train_on_prompt=True, train_seqlen=128, test_seqlen=128)
    out = D.prepare(data, 42, tok)
    assert out.train.lengths() == [128, 64]
    assert out.stats["train_answers_cut"] == 1 and out.stats["train_rows_without_labels"] == 0
    assert D.answer_warning(out.stats, data) == (
        "1 of 2 train samples have answers that train_seqlen 128 cuts away (their rows keep only prompt "
        "tokens); train_seqlen 300 would keep them"
    )


def test_no_warning_when_every_answer_fits(tmp_path, tok):
    data = news_section(tmp_path, [news(tok, i, 100) for i in range(4)], [news(tok, 4, 100)],
                        varied_seqlen=True, train_seqlen=128, test_seqlen=128)
    out = D.prepare(data, 42, tok)
    assert out.stats["train_rows"] == 4 and out.stats["seqlen_to_keep_answers"] == 100
    assert D.answer_warning(out.stats, data) is None


def test_a_side_left_without_any_label_is_refused_and_nothing_cached(tmp_path, tok):
    data = news_section(tmp_path, [news(tok, i, 400 + i) for i in range(3)], [news(tok, 3, 64)],
                        varied_seqlen=True, train_seqlen=128, test_seqlen=128)
    with pytest.raises(ConfigError) as err:
        D.prepare(data, 42, tok)
    assert str(err.value) == ("data: train data has no labelled tokens after cutting to 128 tokens: "
                              "raise data.train_seqlen (402 keeps every answer)")
    assert not (tmp_path / "cache").exists()


def test_stats_come_back_from_the_cache(tmp_path, tok):
    data = news_section(tmp_path, [news(tok, i, 256) for i in range(4)], [news(tok, 4, 256)],
                        train_seqlen=128, test_seqlen=128)
    first = D.prepare(data, 42, tok)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = D.prepare(data, 42, tok)
    assert again.stats == first.stats and again.details == first.details
    assert again.stats["train_rows_without_labels"] == 4


def test_collator_counts_real_and_batch_tokens():
    rows = D.Rows.of([([5, 6, 7, 8], [5, 6, 7, 8]), ([5, 6], [-100, 6]), ([9], [9])])
    dataset, collate = D.RowDataset(rows), D.Collator(pad_id=0)
    collate([dataset[0], dataset[1]])  # 6 real tokens in a 2 x 4 batch
    assert (collate.real_tokens, collate.batch_tokens) == (6, 8)
    collate([dataset[1], dataset[2]])  # 3 real in 2 x 2
    assert (collate.real_tokens, collate.batch_tokens) == (9, 12)


def test_row_lengths_serve_a_length_grouped_sampler():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    rows = D.Rows.of([([1] * n, [1] * n) for n in (5, 90, 7, 64, 3, 88)])
    dataset = D.RowDataset(rows)
    assert dataset.lengths == [5, 90, 7, 64, 3, 88]
    # what the Trainer builds for train_sampling_strategy="group_by_length" infers the same lengths
    assert LengthGroupedSampler(2, dataset=dataset).lengths == dataset.lengths
    assert sorted(LengthGroupedSampler(2, lengths=dataset.lengths)) == list(range(6))
