"""Chat data: read and check train.json / test.json (and a validation set), render with the
chat template, label the assistant's tokens, pack or truncate to the sequence length, cache on disk.

The set a job evaluates (eval loss, generation metric) is the validation set when one is
configured (data.validation_split holds out part of train.json, data.validation_file is a file of
its own), else test.json: see `load_samples`. With a validation set, test.json scores only what it
chose, once (`python -m lora_sweep.job.evaluate job.yaml --split test`).

Packed rows (varied_seqlen false) are cut from samples laid end to end. data.packing: concat lets
a token attend to the samples before it in its row (the reference's behaviour); bounded stores each
token's position within its sample, the collator passes them as `position_ids` without an
attention mask, and transformers then masks attention to each sample (masking_utils'
find_packed_sequence_indices; sdpa, eager and flex attention). `check_bounded` refuses a model
that attends across samples anyway.

Labels are built here, not by a stock collator: when the pad token is the end-of-turn
token (common for chat models), a collator that masks padding by id would also mask
every end-of-turn, and the model would never learn to stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_sweep.config.job import ConfigError, DataSection
from lora_sweep.job import tables
from lora_sweep.job.models import cache_root

log = logging.getLogger(__name__)

from lora_sweep.job.samples import (
    Sample,
    Split,
    convert,
    eval_set,
    format_found,
    load_samples,
    read_files,
    select,
    with_system_prompt,
)

IGNORE = -100  # label of a token the loss skips
CACHE_VERSION = 3  # bump when the tokenized format or the rendering changes

# Used when a tokenizer has no chat template of its own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# token ids and their labels, and with bounded packing each token's position within its sample
Row = tuple[list[int], list[int]] | tuple[list[int], list[int], list[int]]


# ---------------------------------------------------------------- rendering and labels


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template, or our plain fallback (said once in the log)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    log.warning("tokenizer has no chat template; using lora_sweep's plain one: <|role|>\\ntext<eos>")
    return FALLBACK_TEMPLATE


def render(tokenizer: Any, messages: list[dict], template: str, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def segments(tokenizer: Any, messages: list[dict], template: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_answer) pieces.

    An answer runs from the end of the generation prompt before an assistant message to
    where the conversation with that message diverges from the whole conversation, so it
    includes the end-of-turn token the template puts after it.
    """
    full = render(tokenizer, messages, template, generation_prompt=False)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], template, generation_prompt=True) if i else ""
        last = i == len(messages) - 1  # then the conversation with it is the whole one: not rendered again
        after = full if last else render(tokenizer, messages[: i + 1], template, generation_prompt=False)
        if not full.startswith(before) or len(before) < pos:
            raise ValueError(
                "the chat template does not render conversations incrementally, so answers "
                "cannot be located; set data.train_on_prompt: true"
            )
        end = len(os.path.commonprefix([after, full]))
        pieces += [(full[pos : len(before)], False), (full[len(before) : end], True)]
        pos = end
    pieces.append((full[pos:], False))
    return [(text, answer) for text, answer in pieces if text]


def needs_bos(tokenizer: Any, text: str) -> bool:
    """True when the tokenizer adds a BOS by itself but the rendered template has none."""
    bos = tokenizer.bos_token
    if bos is None or text.startswith(bos):
        return False
    return tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]


def tokenize_sample(
    tokenizer: Any, messages: list[dict], template: str, train_on_prompt: bool
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation: answers labelled, the rest IGNORE."""
    ids: list[int] = []
    labels: list[int] = []
    pieces = segments(tokenizer, messages, template)
    if pieces and needs_bos(tokenizer, pieces[0][0]):
        ids.append(tokenizer.bos_token_id)
        labels.append(tokenizer.bos_token_id if train_on_prompt else IGNORE)
    for text, answer in pieces:
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        labels += piece if (answer or train_on_prompt) else [IGNORE] * len(piece)
    return ids, labels


# ---------------------------------------------------------------- rows


@dataclass
class Rows:
    """Token rows stored flat: row i is ids[offsets[i]:offsets[i+1]]. `positions` (bounded packing
    only, else None) holds each token's position within its sample, stored the same way."""

    ids: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    positions: torch.Tensor | None = None

    @classmethod
    def of(cls, rows: list[Row]) -> Rows:
        lengths = torch.tensor([0] + [len(r[0]) for r in rows], dtype=torch.int64)
        bounded = bool(rows) and len(rows[0]) == 3
        return cls(
            ids=torch.tensor([t for r in rows for t in r[0]], dtype=torch.int64),
            labels=torch.tensor([t for r in rows for t in r[1]], dtype=torch.int64),
            offsets=torch.cumsum(lengths, 0),
            positions=torch.tensor([t for r in rows for t in r[2]], dtype=torch.int64) if bounded else None,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.offsets[i].item(), self.offsets[i + 1].item()
        return self.ids[a:b], self.labels[a:b]

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def row_positions(self, i: int) -> torch.Tensor | None:
        if self.positions is None:
            return None
        return self.positions[self.offsets[i].item() : self.offsets[i + 1].item()]


def pack(examples: list[Row], seqlen: int, keep_tail: bool, bounded: bool = False) -> list[Row]:
    """Concatenate examples end to end and cut rows of exactly `seqlen` tokens.

    The tail shorter than a row is dropped for training (no padding at all) and kept as a
    shorter row for testing (`keep_tail`), so evaluation sees every test token. `bounded` adds
    each token's position within its sample, restarting at 0 where a sample (or the part of one
    that a row cut off) begins.
    """
    ids = [t for e in examples for t in e[0]]
    labels = [t for e in examples for t in e[1]]
    starts = [i == 0 for e in examples for i in range(len(e[0]))]  # True where a sample begins
    rows: list[Row] = []
    for a in range(0, len(ids), seqlen):
        row = (ids[a : a + seqlen], labels[a : a + seqlen])
        rows.append((*row, restarted(starts[a : a + seqlen])) if bounded else row)
    if rows and len(rows[-1][0]) < seqlen and not keep_tail:
        rows.pop()
    return rows


def restarted(starts: list[bool]) -> list[int]:
    """Position ids that count from 0 at the row's start and again at each True of `starts`."""
    positions: list[int] = []
    for j, start in enumerate(starts):
        positions.append(0 if start or j == 0 else positions[-1] + 1)
    return positions


def truncate(examples: list[Row], seqlen: int) -> list[Row]:
    """Each example alone, cut to `seqlen` tokens (padded per batch by the collator)."""
    return [(e[0][:seqlen], e[1][:seqlen]) for e in examples]


def labelled(rows: list[Row]) -> tuple[Rows, int]:
    """The rows holding at least one labelled token, and how many did not.

    A batch of rows without a label has a loss of 0/0 (NaN) in training and evaluation,
    and such a row teaches nothing anyway: it is dropped.
    """
    kept = [r for r in rows if any(label != IGNORE for label in r[1])]
    return Rows.of(kept), len(rows) - len(kept)


def answer_span(labels: list[int]) -> tuple[int, int]:
    """Index of the first answer token and one past the last (len, 0 when there is none)."""
    marked = [i for i, label in enumerate(labels) if label != IGNORE]
    return (marked[0], marked[-1] + 1) if marked else (len(labels), 0)


class RowDataset(torch.utils.data.Dataset):
    """Rows as {"input_ids", "labels"} items (and "position_ids" for bounded packing); `lengths`
    (tokens per row) serve a length-grouped sampler (transformers' LengthGroupedSampler takes them
    as `lengths=`)."""

    def __init__(self, rows: Rows):
        self.rows = rows
        self.lengths = rows.lengths()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, labels = self.rows.row(i)
        positions = self.rows.row_positions(i)
        item = {"input_ids": ids, "labels": labels}
        return item if positions is None else {**item, "position_ids": positions}


@dataclass
class Collator:
    """Pads a batch to its longest row; padding is masked from attention and loss by position.

    Rows with position ids (bounded packing) get them, and no attention mask: transformers finds
    the samples from where the positions restart only when no mask is given. Their padding is one
    more such sample (positions from 0, labels IGNORE): it comes after the row's tokens, so no
    token attends to it.

    `real_tokens` and `batch_tokens` count, over every batch collated so far in this process,
    the row tokens and the tokens of the padded batches: their ratio is the real-token share.
    """

    pad_id: int
    real_tokens: int = 0
    batch_tokens: int = 0

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in batch)
        self.real_tokens += sum(len(item["input_ids"]) for item in batch)
        self.batch_tokens += width * len(batch)
        bounded = "position_ids" in batch[0]
        if all(len(item["input_ids"]) == width for item in batch):  # packed rows: nothing to pad
            ids = torch.stack([item["input_ids"] for item in batch])
            out = {"input_ids": ids, "labels": torch.stack([item["labels"] for item in batch])}
            if bounded:
                return {**out, "position_ids": torch.stack([item["position_ids"] for item in batch])}
            return {**out, "attention_mask": torch.ones_like(ids)}
        out = {
            "input_ids": torch.full((len(batch), width), self.pad_id, dtype=torch.int64),
            "labels": torch.full((len(batch), width), IGNORE, dtype=torch.int64),
        }
        out["position_ids" if bounded else "attention_mask"] = torch.zeros((len(batch), width), dtype=torch.int64)
        for i, item in enumerate(batch):
            n = len(item["input_ids"])
            out["input_ids"][i, :n] = item["input_ids"]
            out["labels"][i, :n] = item["labels"]
            if bounded:
                out["position_ids"][i, :n] = item["position_ids"]
                out["position_ids"][i, n:] = torch.arange(width - n)
            else:
                out["attention_mask"][i, :n] = 1
        return out


# ---------------------------------------------------------------- the whole pipeline, cached


@dataclass
class Tokenized:
    """Both sides' rows, and what became of the samples. `test` holds the rows of the evaluated
    set: the validation set's when there is one (stats["eval_set"] says which).

    `stats` (flat, for the job's start event and `answer_warning`): eval_set ("validation" or
    "test") and eval_samples (samples of it evaluated), train_rows / test_rows
    (rows kept), *_rows_without_labels (rows dropped for holding no labelled token),
    *_answers_cut (samples whose first answer token lies at or past the seqlen: cut away in
    varied rows, trained without the start of their prompt in packed rows) and
    seqlen_to_keep_answers (tokens: the smallest seqlen at which truncating each sample
    alone keeps every answer whole). `details` holds per side the token counts and shares.
    """

    train: Rows
    test: Rows
    stats: dict[str, int | float | str]
    details: dict[str, dict[str, int | float]]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
    return hashlib.sha256((vocab + json.dumps(extra)).encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """The data file's sha256; a folder's (a dataset saved with save_to_disk): of its files' names and digests."""
    path = Path(path)
    if path.is_dir() or tables.is_pattern(path):  # and Parquet shards: of the files the pattern matches
        files = [(str(p.relative_to(path)) if path.is_dir() else p.name, p) for p in tables.files_of(path)]
        return hashlib.sha256(json.dumps([[name, file_digest(p)] for name, p in files]).encode()).hexdigest()
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()  # read in blocks, not whole


def cache_path(data: DataSection, seed: int, tokenizer: Any, split: Split = "eval") -> Path:
    """Where the tokenized data of these files, tokenizer and settings is cached."""
    settings = data.model_dump(
        include={"format", "columns", "system_prompt", "varied_seqlen", "train_on_prompt", "train_nsamples",
                 "test_nsamples", "train_seqlen", "test_seqlen", "validation_split", "packing"}
    )
    validation = file_digest(data.validation_file) if data.validation_file is not None else None
    key = json.dumps(
        [CACHE_VERSION, file_digest(data.train_file), file_digest(data.test_file), validation,
         eval_set(data, split), tokenizer_fingerprint(tokenizer), settings, seed],
        sort_keys=True,
    )
    folder = Path(data.cache_dir) if data.cache_dir else cache_root() / "tokenized"
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def tokenize(data: DataSection, seed: int, tokenizer: Any, train: list[Sample], test: list[Sample],
             evaluated: str = "test") -> Tokenized:
    """Render, label and pack (or truncate) both sides; drop the rows without a label. `test` are
    the samples of the evaluated set, named `evaluated` ("validation" or "test")."""
    template = chat_template(tokenizer)
    sides = {}
    stats: dict[str, int | float | str] = {"eval_set": evaluated}
    details: dict[str, dict[str, int | float]] = {}
    for side, samples, n, seqlen in (
        ("train", train, data.train_nsamples, data.train_seqlen),
        ("test", test, data.test_nsamples, data.test_seqlen),
    ):
        picked = select(samples, n, seed)
        examples, spans = [], []
        for sample in picked:
            messages = with_system_prompt(sample["messages"], data.system_prompt)
            ids, answers = tokenize_sample(tokenizer, messages, template, train_on_prompt=False)
            examples.append((ids, ids if data.train_on_prompt else answers))  # prompt labels == its ids
            spans.append(answer_span(answers))
        keep = max(end for _, end in spans)
        if data.varied_seqlen:
            rows = truncate(examples, seqlen)
        else:
            rows = pack(examples, seqlen, keep_tail=side == "test", bounded=data.packing == "bounded")
        sample_tokens = sum(len(e[0]) for e in examples)
        if not rows:
            raise ConfigError(
                [f"data.{side}_seqlen ({seqlen}) is longer than all {side} data together ({sample_tokens} tokens): "
                 f"lower it or add samples"], "data")
        kept, dropped = labelled(rows)
        if not len(kept):
            raise ConfigError([f"{evaluated if side == 'test' else side} data has no labelled tokens after cutting "
                               f"to {seqlen} tokens: raise data.{side}_seqlen ({keep} keeps every answer)"], "data")
        stats[f"{side}_rows"] = len(kept)
        stats[f"{side}_rows_without_labels"] = dropped
        stats[f"{side}_answers_cut"] = sum(start >= seqlen for start, _ in spans)
        stats["seqlen_to_keep_answers"] = max(stats.get("seqlen_to_keep_answers", 0), keep)
        stored = sum(kept.lengths())
        padded = len(kept) * max(kept.lengths())  # tokens a batch of the longest rows would hold
        details[side] = {
            "samples": len(picked),
            "sample_tokens": sample_tokens,
            "rows": len(kept),
            "tokens": stored,
            "labelled_tokens": int((kept.labels != IGNORE).sum()),
            "truncated_samples": sum(len(e[0]) > seqlen for e in examples) if data.varied_seqlen else 0,
            # real (non-pad) tokens over the tokens of rows padded to the longest one
            "real_token_share": stored / padded,
            # tokens that made it into rows over the tokens of the samples (packing drops a tail,
            # and rows without a label are dropped)
            "kept_token_share": stored / sample_tokens,
        }
        sides[side] = kept
    stats["eval_samples"] = details["test"]["samples"]
    return Tokenized(sides["train"], sides["test"], stats, details)


def answer_warning(stats: dict[str, int | float], data: DataSection) -> str | None:
    """The one line to warn with when the seqlen cuts answers away or rows lost every label
    (None when neither happened); `stats` is Tokenized.stats of `data`."""
    parts, names = [], []
    for side in ("train", "test"):
        seqlen, rows = getattr(data, f"{side}_seqlen"), stats[f"{side}_rows"]
        cut, dropped = stats[f"{side}_answers_cut"], stats[f"{side}_rows_without_labels"]
        found = []
        if data.varied_seqlen and cut:
            fate = "their rows were dropped" if dropped else "their rows keep only prompt tokens"
            found.append(f"{cut} of {rows + dropped} {side} samples have answers that {side}_seqlen {seqlen} "
                         f"cuts away ({fate})")
        if not data.varied_seqlen and dropped:
            found.append(f"{dropped} of {rows + dropped} packed {side} rows hold no answer token (dropped)")
        if not data.varied_seqlen and cut:
            found.append(f"{cut} {side} samples have prompts that fill {side}_seqlen {seqlen} "
                         f"(their answers lose the prompt's start)")
        parts += found
        names += [f"{side}_seqlen"] if found else []
    if not parts:
        return None
    keep = f"{' and '.join(names)} {stats['seqlen_to_keep_answers']}"
    if data.varied_seqlen:
        return f"{'; '.join(parts)}; {keep} would keep them"
    return f"{'; '.join(parts)}; varied_seqlen: true with {keep} would keep every answer with its whole prompt"


def prepare(
    data: DataSection, seed: int, tokenizer: Any, samples: tuple[list[Sample], list[Sample]] | None = None,
    split: Split = "eval",
) -> Tokenized:
    """Tokenized data for a job, from the cache when these files and settings were seen before.

    `samples` are the already checked samples `load_samples(data, split)` returns, read again when
    not given.
    """
    path = cache_path(data, seed, tokenizer, split)
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        log.info("tokenized data from cache %s", path)
        return Tokenized(Rows(**blob["train"]), Rows(**blob["test"]), json.loads(blob["stats"]),
                         json.loads(blob["details"]))
    train, test = samples or load_samples(data, split)
    tokenized = tokenize(data, seed, tokenizer, train, test, eval_set(data, split))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(
        {"train": vars(tokenized.train), "test": vars(tokenized.test), "stats": json.dumps(tokenized.stats),
         "details": json.dumps(tokenized.details)},
        tmp,
    )
    os.replace(tmp, path)  # atomic: trials reading the cache never see half a file
    log.info("tokenized data cached in %s", path)
    return tokenized


# ---------------------------------------------------------------- bounded packing, model side

# Two packed rows in the probe batch: flash attention honours restarting positions only in a batch of
# one row (transformers' _is_packed_sequence), and training batches hold more.
PROBE_FIRST, PROBE_SECOND = [3, 4, 5, 6, 7], [8, 9, 10, 11]


@torch.no_grad()
def cross_sample_drift(model: Any) -> tuple[float, float]:
    """How far a sample's logits move when another sample precedes it in a packed row, against the
    sample run alone (largest absolute difference): with positions restarting at it (bounded) and
    with plain positions (concat, which does attend across)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    first, second = [t % vocab for t in PROBE_FIRST], [t % vocab for t in PROBE_SECOND]
    ids = torch.tensor([first + second] * 2, device=device)
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))] * 2, device=device)
    was_training = model.training
    model.eval()  # no dropout in the comparison
    try:
        # use_cache=False: with a cache, transformers does not look for packed samples at all
        alone = model(input_ids=ids[:, len(first):], use_cache=False).logits.float()
        bounded = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, len(first):].float()
        concat = model(input_ids=ids, use_cache=False).logits[:, len(first):].float()
    finally:
        model.train(was_training)
    return (bounded - alone).abs().max().item(), (concat - alone).abs().max().item()


def check_bounded(model: Any) -> None:
    """Refuse a model that lets a bounded-packed sample attend to the samples before it in its row
    (an attention implementation that ignores restarting position ids, a model that builds its own
    masks): it would train on what data.packing: bounded promises to keep apart. Costs three
    forward passes of 9 tokens."""
    bounded, concat = cross_sample_drift(model)
    if bounded <= 0.1 * concat:  # rounding in bf16 moves logits too, by far less than attention across does
        return
    config = getattr(model, "config", None)
    kind = f"{getattr(config, 'model_type', '?')}, attention {getattr(config, '_attn_implementation', '?')}"
    raise ConfigError([
        f"data.packing: bounded keeps attention inside each sample only for models whose masks transformers "
        f"builds from restarting position ids (sdpa, eager or flex_attention attention), but in this model "
        f"({kind}) a packed sample attends to the one before it (its logits move by {bounded:.3g}, by {concat:.3g} "
        f"with concat); use data.packing: concat or data.varied_seqlen: true"
    ])


def check_packing(data: DataSection, model: Any) -> None:
    """check_bounded when `data` packs rows with packing: bounded; nothing otherwise."""
    if not data.varied_seqlen and data.packing == "bounded":
        check_bounded(model)


def shown(tokenizer: Any, data: DataSection, sample: Sample) -> str:
    """A sample as the model sees it in training (chat template, data.system_prompt), the tokens the
    loss is on between [[ and ]]."""
    messages = with_system_prompt(sample["messages"], data.system_prompt)
    pieces = segments(tokenizer, messages, chat_template(tokenizer))
    return "".join(f"[[{text}]]" if answer or data.train_on_prompt else text for text, answer in pieces)


def formats(data: DataSection) -> dict[str, tuple[str, str]]:
    """Each of `data`'s files and the format it is read in, and why (`format_found`)."""
    return {path: format_found(path, data.format, data.columns)
            for path in (data.train_file, data.test_file, data.validation_file) if path is not None}


def described(data: DataSection, found: dict[str, tuple[str, str]], tokenizer: Any | None, sample: Sample) -> str:
    """What `show` and `validate` print: each file's format and why
    (`found`, from `formats`), and `sample` (the first training one) as the model sees it; without a
    tokenizer, the formats only."""
    lines = [f"{path}: {fmt} ({why})" for path, (fmt, why) in found.items()]
    if tokenizer is not None:
        lines += ["the first training sample as the model sees it; the loss is on what [[ ]] marks:",
                  shown(tokenizer, data, sample)]
    return "\n".join(lines)


def show(config: Any) -> str:
    """What `python -m lora_sweep.job.data show` prints: each file's format and why, and the first
    training sample as the model sees it (needs the model's tokenizer, not its weights)."""
    from lora_sweep.job.models import find_model, load_tokenizer

    train, _, _, problems = read_files(config.data)
    if problems:
        raise ConfigError(problems, "data")
    tokenizer = load_tokenizer(find_model(config.model.name_or_path), config.model.trust_remote_code)
    return described(config.data, formats(config.data), tokenizer, train[0])


def load_config(path: str, overrides: list[str]) -> Any:
    """A study YAML (StudyConfig) or a job YAML (JobConfig), whichever `path` holds, with `overrides`."""
    from lora_sweep.config.files import load_job, read_yaml
    from lora_sweep.config.study import is_study, load_study

    return (load_study if is_study(read_yaml(path)) else load_job)(path, overrides)


def converted(config: Any, out: str) -> str:
    """`convert` `config`'s data into the folder `out`; what the command prints: each file written
    and its samples. ConfigError (nothing written) on bad data or files already there."""
    return "\n".join(f"{path}: {len(samples)} chat samples" for path, samples in convert(config.data, out))


def main(argv: list[str] | None = None) -> int:
    """`python -m lora_sweep.job.data show CONFIG` and `... convert CONFIG OUT` (also `python -m
    lora_sweep convert`), with overrides."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="lora_sweep.job.data", description="Look at a job's or study's data as it "
                                     "is read, or write it as the AI Toolkit's chat JSON lines.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("show", "print each file's format and why, and the first sample as the model sees it"),
                       ("convert", "write the data, from any data.format, as chat train.json and test.json in OUT")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("config", help="study or job YAML")
        if name == "convert":
            command.add_argument("out", help="the folder to write train.json and test.json in (new or without them)")
        command.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.format=alpaca")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        print(show(config) if args.command == "show" else converted(config, args.out))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
