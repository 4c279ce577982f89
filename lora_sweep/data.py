"""Chat data: read and check train.json / test.json (and a validation set), render with the
chat template, label the assistant's tokens, pack or truncate to the sequence length, cache on disk.

The set a job evaluates (eval loss, generation metric) is the validation set when one is
configured (data.validation_split holds out part of train.json, data.validation_file is a file of
its own), else test.json: see `load_samples`. With a validation set, test.json scores only what it
chose, once (`python -m lora_sweep.evaluate job.yaml --split test`).

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

import codecs
import csv
import errno
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from lora_sweep.config import ColumnsSection, ConfigError, DataFormat, DataSection, template_fields
from lora_sweep.models import cache_root

log = logging.getLogger(__name__)

IGNORE = -100  # label of a token the loss skips
CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}  # a message's role -> ours
MAX_PROBLEMS = 20  # per file; the rest are counted, not listed
CACHE_VERSION = 3  # bump when the tokenized format or the rendering changes
# The validation split's seed: fixed, not training.seed, so that every trial of a study holds out the
# same samples even when the search space varies training.seed.
VALIDATION_SEED = 0

# Used when a tokenizer has no chat template of its own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

Sample = dict[str, Any]
# token ids and their labels, and with bounded packing each token's position within its sample
Row = tuple[list[int], list[int]] | tuple[list[int], list[int], list[int]]
Split = Literal["eval", "test"]  # what a job evaluates (validation set if any, else test.json), or test.json


# ---------------------------------------------------------------- reading and checking


def check_sample(obj: Any) -> list[str]:
    """What is wrong with one parsed line (empty when it is a valid chat sample)."""
    if not isinstance(obj, dict):
        return [f"must be a JSON object, got {type(obj).__name__}"]
    messages, problems = turns_of(obj, "messages", "role", "content", CHAT_ROLES)
    if not problems and not any(m["role"] == "assistant" for m in messages):
        problems.append("has no assistant message: there is nothing to learn from it")
    return problems


def turns_of(obj: dict, key: str, role_key: str, text_key: str, roles: dict[str, str]
             ) -> tuple[list[dict], list[str]]:
    """The messages of a record's list of turns (a chat sample's "messages" of role and content, a
    ShareGPT record's "conversations" of from and value; `roles` maps a turn's role name to ours), and
    what is wrong with them."""
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        return [], [f'"{key}" must be a non-empty list of {{"{role_key}", "{text_key}"}} objects']
    *first, last = [f'"{name}"' for name in roles]
    messages, problems = [], []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            problems.append(f"{key}[{i}] must be an object with {role_key} and {text_key}")
            continue
        role, text = turn.get(role_key), turn.get(text_key)
        if role not in roles:
            problems.append(f"{key}[{i}].{role_key} must be {', '.join(first)} or {last}, got {role!r}")
        if not isinstance(text, str):
            problems.append(f"{key}[{i}].{text_key} must be a string, got {type(text).__name__}")
        messages.append({"role": roles.get(role), "content": text})
    return messages, problems


# Record formats other tools' users bring, each read into a chat sample: Alpaca (Axolotl's and
# LLaMA-Factory's `instruction`, `input`, `output`, optionally `system` and `history`) and ShareGPT
# (`conversations` of {from, value} turns, optionally a `system`). "auto" takes the format of the file's
# first record that has one's fields.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def recognise(obj: Any) -> str | None:
    """The format whose fields a record has ("chat", "sharegpt" or "alpaca"), or None."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def no_field(obj: dict, name: str) -> str:
    return f'no field "{name}" (fields: {", ".join(obj) or "none"})'


def string_fields(obj: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> list[str]:
    """What is wrong with a record's text fields: a required one missing, or any not a string."""
    problems = [no_field(obj, name) for name in required if name not in obj]
    for name in required + optional:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            problems.append(f'"{name}" must be a string, got {type(obj[name]).__name__}')
    return problems


def system_message(obj: dict) -> list[dict]:
    return [{"role": "system", "content": obj["system"]}] if obj.get("system") else []


def from_alpaca(obj: dict) -> tuple[Sample | None, list[str]]:
    """An Alpaca record as a chat sample: the instruction and its input (joined by a line end, as
    LLaMA-Factory joins them) are the user's turn, the output the answer; `history` ([[instruction,
    answer], ...]) comes first."""
    problems = string_fields(obj, ("instruction", "output"), ("input", "system"))
    history = obj.get("history") or []
    if not (isinstance(history, list) and all(isinstance(turn, list) and len(turn) == 2
                                              and all(isinstance(t, str) for t in turn) for turn in history)):
        problems.append('"history" must be a list of [instruction, answer] string pairs')
    if problems:
        return None, problems
    user = "\n".join(text for text in (obj["instruction"], obj.get("input")) if text)
    earlier = [{"role": role, "content": text} for turn in history for role, text in zip(("user", "assistant"), turn)]
    return {"messages": [*system_message(obj), *earlier, {"role": "user", "content": user},
                         {"role": "assistant", "content": obj["output"]}]}, []


def from_sharegpt(obj: dict) -> tuple[Sample | None, list[str]]:
    """A ShareGPT record as a chat sample: human, gpt and system turns are user, assistant and system."""
    messages, problems = turns_of(obj, "conversations", "from", "value", SHAREGPT_ROLES)
    problems = string_fields(obj, (), ("system",)) + problems
    return (None, problems) if problems else ({"messages": system_message(obj) + messages}, [])


def from_columns(obj: dict, columns: ColumnsSection) -> tuple[Sample | None, list[str]]:
    """A record of the user's own fields as a chat sample: data.columns' templates filled from it."""
    templates = [t for t in (columns.system, columns.prompt, columns.answer) if t is not None]
    names = list(dict.fromkeys(name for t in templates for name in template_fields(t)))
    problems = [no_field(obj, name) for name in names if name not in obj]
    problems += [f'field "{name}" is null' for name in names if name in obj and obj[name] is None]
    if problems:
        return None, problems
    system = [{"role": "system", "content": columns.system.format_map(obj)}] if columns.system is not None else []
    return {"messages": [*system, {"role": "user", "content": columns.prompt.format_map(obj)},
                         {"role": "assistant", "content": columns.answer.format_map(obj)}]}, []


def as_chat(obj: Any, fmt: str, columns: ColumnsSection | None = None) -> tuple[Sample | None, list[str]]:
    """One parsed record of format `fmt` ("chat", "alpaca", "sharegpt" or "columns", with `columns`)
    as a checked chat sample, or what is wrong with it."""
    if not isinstance(obj, dict):
        return None, [f"must be a JSON object, got {type(obj).__name__}"]
    if fmt == "columns":
        sample, problems = from_columns(obj, columns)
    else:
        sample, problems = {"chat": lambda o: (o, []), "alpaca": from_alpaca, "sharegpt": from_sharegpt}[fmt](obj)
    problems = problems or check_sample(sample)
    return (None, problems) if problems else (sample, [])


# Byte-order marks and the codec each announces; the UTF-32 LE mark starts with the UTF-16 LE
# one, so it is tried first. Notepad writes UTF-8 with a mark by default, UTF-16 as "Unicode".
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Bytes a line (one sample) may have. Far above any sample a seqlen keeps (a 128k-token context is about
# 0.5 MB of text), so a longer line is a mistake: refused before it is parsed, and read without being held
# (a 10 MB line cost `validate` 2 GB and 20 s to parse and tokenize).
MAX_SAMPLE_BYTES = 1 << 20
BLOCK = 1 << 18  # bytes read at a time
LINE_END = re.compile(rb"\r\n|\r|\n")


class Unreadable(ValueError):
    """A data file that cannot be read as text at all: one problem for the whole file, at `line` when
    it is known."""

    def __init__(self, problem: str, line: int | None = None):
        super().__init__(problem)
        self.line = line

    def where(self, path: Path) -> str:
        """The problem as `file: ...` or `file:line: ...`."""
        return f"{path}{'' if self.line is None else f':{self.line}'}: {self}"


def split_lines(blocks: Iterable[bytes], limit: int = MAX_SAMPLE_BYTES) -> Iterator[tuple[bytes | None, int]]:
    """The lines of a stream of blocks (ended by LF, CRLF or CR), without their ends, with their sizes in
    bytes: (line, size), or (None, size) for a line longer than `limit`, which is skipped, never held
    (at most `limit` and a block are)."""
    pending, skipped = bytearray(), 0  # the current line's start; bytes of it dropped for being too long
    for block in blocks:
        pending += block
        start = 0
        for end in LINE_END.finditer(pending):
            if end.end() == len(pending) and end.group() == b"\r":
                break  # a CR at the block's end may be the start of a CRLF
            size = skipped + end.start() - start
            yield (bytes(pending[start : end.start()]) if not skipped and size <= limit else None), size
            start, skipped = end.end(), 0
        del pending[:start]
        if len(pending) > limit + 1:  # too long: counted, not kept (but a CR held back, for a CRLF)
            keep = 1 if pending.endswith(b"\r") else 0
            skipped += len(pending) - keep
            del pending[: len(pending) - keep]
    if pending.endswith(b"\r"):
        del pending[-1:]  # the last line's end
    size = skipped + len(pending)
    if size:
        yield (bytes(pending) if not skipped and size <= limit else None), size


def looks_utf16(head: bytes) -> bool:
    """True when zero bytes sit at every other place of the file's start: UTF-16, where each ASCII
    character (all of JSON's syntax) has one; a UTF-8 data file holds none (a zero byte is not valid
    JSON). Chinese chat samples in UTF-16 still have zeros at about half the places; 1 in 8 is asked."""
    even, odd = head[0::2], head[1::2]
    zeros = sorted([even.count(0), odd.count(0)])
    return len(head) >= 4 and zeros[1] >= len(odd) // 8 and zeros[0] <= zeros[1] // 10


def utf8_blocks(file: BinaryIO) -> Iterator[bytes]:
    """The file's text as UTF-8, a block at a time: UTF-8 with or without a byte-order mark as it is,
    UTF-16/32 with one decoded (whole: such files are rare and small). Raises Unreadable for UTF-16
    without a mark, or text that is not what its mark says."""
    head = file.read(BLOCK)
    skipped, encoding = 0, "utf-8"
    for bom, name in BOMS:
        if head.startswith(bom):
            skipped, encoding = len(bom), name
            break
    if encoding == "utf-8":
        if not skipped and looks_utf16(head[:4096]):
            raise Unreadable("UTF-16 without a byte-order mark: save as UTF-8")
        yield head[skipped:]
        while block := file.read(BLOCK):
            yield block
        return
    raw = head[skipped:] + file.read()
    try:
        yield raw.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise Unreadable(f"not {encoding.upper()} ({exc.reason} at byte {skipped + exc.start})", line) from None


def decoded_lines(blocks: Iterable[bytes]) -> Iterator[tuple[int, str, str | None]]:
    """The lines of UTF-8 blocks as (line number, text, why it cannot be read or None); a line longer
    than MAX_SAMPLE_BYTES is a problem, not read."""
    for number, (line, size) in enumerate(split_lines(blocks), start=1):
        if line is None:
            yield number, "", (f"a sample of {size:,} bytes, longer than the limit of {MAX_SAMPLE_BYTES:,} "
                               f"(1 MiB): shorten or split it")
            continue
        try:
            yield number, line.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            column = len(line[: exc.start].decode("utf-8")) + 1  # in characters, as an editor counts
            yield number, "", f"not UTF-8 (byte 0x{line[exc.start]:02x} at column {column})"


def text_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """The file's lines as (line number, text, why it cannot be read or None), read a block at a time.

    UTF-8 with or without a byte-order mark, or UTF-16/32 with one; lines end in LF, CRLF or CR; a line
    longer than MAX_SAMPLE_BYTES is a problem, not read. Raises OSError when the file cannot be opened
    and Unreadable when it is not text of a known encoding.
    """
    with path.open("rb") as file:
        yield from decoded_lines(utf8_blocks(file))


Record = tuple[int, Any, str | None]  # (line, the parsed record, None) or (line, None, what is wrong)


def json_records(path: Path) -> Iterator[Record]:
    """The records of a JSON-lines file (blank lines skipped), or of a file holding one JSON array of
    them (LLaMA-Factory's and the Alpaca data's own form; read whole), each with the line it starts on."""
    with path.open("rb") as file:
        blocks = utf8_blocks(file)
        head = next(blocks, b"")
        if head.lstrip()[:1] == b"[":
            yield from array_records(head + b"".join(blocks))
            return
        for number, line, unreadable in decoded_lines(itertools.chain([head], blocks)):
            if unreadable:
                yield number, None, unreadable
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}  # by the file's suffix


def csv_records(path: Path) -> Iterator[Record]:
    """The rows of a CSV or TSV file with a header row as {header: cell} records, each with the line
    it starts on (a quoted cell may span lines). Python's csv module reads it: quoted cells, CRLF and
    a spreadsheet's byte-order mark (or UTF-16 with one) as Excel writes them; read whole."""
    with path.open("rb") as file:
        raw = b"".join(utf8_blocks(file))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield raw[: exc.start].count(b"\n") + 1, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start})"
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=CSV_DELIMITERS[path.suffix.lower()], strict=True)
    try:
        header = next(reader, None)
        start = reader.line_num + 1
        for row in reader:
            if len(row) != len(header) and any(cell.strip() for cell in row):
                yield start, None, f"has {len(row)} cells, the header row {len(header)} ({', '.join(header)})"
            elif row:
                yield start, dict(zip(header, row)), None
            start = reader.line_num + 1
    except csv.Error as exc:
        yield reader.line_num, None, f"not valid CSV ({exc})"


SPACE = re.compile(r"\s*")


def array_records(raw: bytes) -> Iterator[Record]:
    """The items of one JSON array, each with the line it starts on; a syntax error ends the array."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        yield line, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start})"
        return
    decoder, line, seen = json.JSONDecoder(), 1, 0
    pos = SPACE.match(text).end() + 1  # past the "["
    pos = SPACE.match(text, pos).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            line, seen = line + text.count("\n", seen, pos), pos
            try:
                item, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield exc.lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                return
            yield line, item, None
            pos = SPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = SPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                yield where(text, pos), None, f"not valid JSON (expected , or ] at column {column(text, pos)})"
                return
    if text[pos:].strip():
        yield where(text, pos), None, "not valid JSON (more after the array's closing ])"


def where(text: str, pos: int) -> int:
    """The line `pos` is on (1-based)."""
    return text.count("\n", 0, pos) + 1


def column(text: str, pos: int) -> int:
    """The column `pos` is at (1-based, in characters)."""
    return pos - text.rfind("\n", 0, pos)


def link_loop(path: Path) -> Path | None:
    """The symbolic link on the way to `path` that leads back to itself (the first one), or None."""
    for part in [*reversed(path.parents), path]:
        try:
            part.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return part
    return None


def read_samples(path: str | Path, fmt: DataFormat = "auto", columns: ColumnsSection | None = None
                 ) -> tuple[list[Sample], list[str]]:
    """Parse a file of records in format `fmt` (JSON lines, a JSON array, CSV or TSV); return them as
    chat samples and every problem as `file:line: ...`. With "auto", `columns` when given, else the
    first record with a known format's fields decides (chat when none has)."""
    path = Path(path)
    loop = link_loop(path)
    if loop is not None:
        return [], [f"{path}: {loop} is a symbolic link loop (it leads back to itself): point it at the data"]
    if path.is_dir():
        return [], [f"{path}: is a directory, not a data file (data.dataset takes the folder holding "
                    f"train.json and test.json)"]
    if not path.is_file():
        return [], [f"{path}: no such file"]
    samples, problems = [], []
    try:
        if fmt == "auto" and columns is not None:
            fmt = "columns"
        for number, obj, unreadable in (csv_records if path.suffix.lower() in CSV_DELIMITERS else json_records)(path):
            if unreadable:
                problems.append(f"{path}:{number}: {unreadable}")
                continue
            if fmt == "auto":
                fmt = recognise(obj) or "auto"
            sample, found = as_chat(obj, "chat" if fmt == "auto" else fmt, columns)
            problems += [f"{path}:{number}: {p}" for p in found]
            samples += [sample] if sample else []
    except OSError as exc:
        return [], [f"{path}: cannot be read ({exc.strerror})"]
    except Unreadable as exc:
        return [], [exc.where(path)]
    if not samples and not problems:
        problems.append(f"{path}: has no samples")
    return samples, problems


def capped(problems: list[str], cap: int = MAX_PROBLEMS) -> list[str]:
    if len(problems) <= cap:
        return problems
    return problems[:cap] + [f"... and {len(problems) - cap} more problems in the same file"]


def eval_set(data: DataSection, split: Split = "eval") -> str:
    """The name of the set `load_samples(data, split)` evaluates: "validation" or "test"."""
    return "validation" if split == "eval" and data.has_validation else "test"


def read_files(data: DataSection) -> tuple[list[Sample], list[Sample], list[Sample] | None, list[str]]:
    """The samples of train.json, test.json and data.validation_file (None without one), each file
    read and checked, and every problem of them all, data.validation_split's too: what `validate`
    reports and what `load_samples` refuses."""
    train, train_problems = read_samples(data.train_file, data.format, data.columns)
    test, test_problems = read_samples(data.test_file, data.format, data.columns)
    problems = capped(train_problems) + capped(test_problems)
    validation = None
    if data.validation_file is not None:
        validation, validation_problems = read_samples(data.validation_file, data.format, data.columns)
        problems += [f"data.validation_file: {p}" for p in capped(validation_problems)]
    if not problems and data.validation_split is not None:
        problems += filter(None, [hold_out(train, data.validation_split, Path(data.train_file).name)[2]])
    return train, test, validation, problems


def load_samples(data: DataSection, split: Split = "eval") -> tuple[list[Sample], list[Sample]]:
    """(train, evaluated) samples: train.json less the validation split, and the validation set when
    one is configured and `split` is "eval" (what every job evaluates), else test.json.

    Every file is read and checked either way; one ConfigError holds every problem of all of them.
    """
    train, test, validation, problems = read_files(data)
    if problems:
        raise ConfigError(problems, "data")
    if data.validation_split is not None:
        train, validation, _ = hold_out(train, data.validation_split, Path(data.train_file).name)
    return train, validation if eval_set(data, split) == "validation" else test


def hold_out(samples: list[Sample], split: float, name: str) -> tuple[list[Sample], list[Sample], str | None]:
    """(the rest, the held-out samples, None), both in file order: `split` is a share (< 1) or a count
    (>= 1), drawn with VALIDATION_SEED; or what is wrong with `split` as the third item."""
    n = int(split) if split >= 1 else round(split * len(samples))
    given = f"data.validation_split ({int(split) if split >= 1 else split})"
    if split >= 1 and n >= len(samples):
        return samples, [], (f"{given} must be below the number of {name} samples ({len(samples)}): at least one "
                             f"must be left to train on")
    if not 1 <= n < len(samples):
        return samples, [], (f"{given} holds out {n} of the {len(samples)} {name} samples: give a share that "
                             f"leaves at least one sample on each side, or a count")
    held = set(random.Random(VALIDATION_SEED).sample(range(len(samples)), n))
    return ([s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held],
            None)


def select(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """`n` samples picked by `seed`, in file order; all of them when there are fewer."""
    if n >= len(samples):
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Replace the conversation's system message by `system_prompt` (or add one)."""
    if system_prompt is None:
        return messages
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system_prompt}, *rest]


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
    with Path(path).open("rb") as file:
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


# ---------------------------------------------------------------- converting to the AI Toolkit's chat files


def convert(data: DataSection, out: str | Path) -> list[Path]:
    """Write `data`'s files, in whatever format and file type they are, as chat JSON lines (the AI
    Toolkit's train.json and test.json, and validation.json for a data.validation_file) in the folder
    `out`, and return their paths. The records are written as they are read (no system prompt added);
    bad data or a file already there: ConfigError, and nothing is written."""
    train, test, validation, problems = read_files(data)
    out = Path(out)
    files = {"train.json": train, "test.json": test, **({"validation.json": validation} if validation else {})}
    problems += [f"{out / name}: exists: give a new or empty folder" for name in files if (out / name).exists()]
    if problems:
        raise ConfigError(problems, "data")
    out.mkdir(parents=True, exist_ok=True)
    for name, samples in files.items():
        (out / name).write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    return [out / name for name in files]


def format_found(path: str | Path, fmt: DataFormat, columns: ColumnsSection | None) -> str:
    """The format `read_samples` reads `path` in, and why (a file that cannot be read: chat)."""
    if fmt != "auto":
        return f"{fmt} (data.format)"
    if columns is not None:
        return "columns (data.columns is given)"
    path = Path(path)
    try:
        for number, obj, problem in (csv_records if path.suffix.lower() in CSV_DELIMITERS else json_records)(path):
            found = None if problem else recognise(obj)
            if found:
                return f"{found} (recognised from line {number}: fields {', '.join(obj)})"
    except (OSError, Unreadable):
        pass
    return "chat (no record has another format's fields)"


def shown(tokenizer: Any, data: DataSection, sample: Sample) -> str:
    """A sample as the model sees it in training (chat template, data.system_prompt), the tokens the
    loss is on between [[ and ]]."""
    messages = with_system_prompt(sample["messages"], data.system_prompt)
    pieces = segments(tokenizer, messages, chat_template(tokenizer))
    return "".join(f"[[{text}]]" if answer or data.train_on_prompt else text for text, answer in pieces)


def show(config: Any) -> str:
    """What `python -m lora_sweep.data show` prints: each file's format and why, and the first
    training sample as the model sees it (needs the model's tokenizer, not its weights)."""
    from lora_sweep.models import find_model, load_tokenizer

    data = config.data
    train, _, _, problems = read_files(data)
    if problems:
        raise ConfigError(problems, "data")
    lines = [f"{path}: {format_found(path, data.format, data.columns)}"
             for path in (data.train_file, data.test_file, data.validation_file) if path is not None]
    tokenizer = load_tokenizer(find_model(config.model.name_or_path), config.model.trust_remote_code)
    return "\n".join([*lines, "the first training sample as the model sees it; the loss is on what [[ ]] marks:",
                      shown(tokenizer, data, train[0])])


def main(argv: list[str] | None = None) -> int:
    """`python -m lora_sweep.data show CONFIG` and `... convert CONFIG OUT`, with overrides."""
    import argparse
    import sys

    from lora_sweep.config import is_study, load_job, load_study, read_yaml

    parser = argparse.ArgumentParser(prog="lora_sweep.data", description="Look at a job's or study's data as it "
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
        config = (load_study if is_study(read_yaml(args.config)) else load_job)(args.config, args.overrides)
        if args.command == "show":
            print(show(config))
            return 0
        written = convert(config.data, args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"{path}: {sum(1 for _ in path.open(encoding='utf-8'))} chat samples" for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
