"""The user's data as samples: train.json / test.json (and a validation set) read in bounded memory
in any accepted format (chat, Alpaca, ShareGPT, columns with templates; JSON lines, a JSON array,
CSV/TSV, and through tables.py Parquet and `datasets`' save_to_disk folders), checked with every
problem at once as `file:line: ...` (`file:row N: ...` in a table), sampled and held out; and
written back as the AI Toolkit's chat files (`convert`). Tokenizing them is data.py's."""

from __future__ import annotations

import codecs
import csv
import errno
import io
import itertools
import json
import logging
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from lora_sweep.config.job import ColumnsSection, ConfigError, DataFormat, DataSection, template_fields
from lora_sweep.job import tables

log = logging.getLogger(__name__)

CHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}  # a message's role -> ours
MAX_PROBLEMS = 20  # per file; the rest are counted, not listed
# The validation split's seed: fixed, not training.seed, so that every trial of a study holds out the
# same samples even when the search space varies training.seed.
VALIDATION_SEED = 0

Sample = dict[str, Any]
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
    problems = [no_field(obj, name) if name not in obj else f'field "{name}" is null'
                for name in required if obj.get(name) is None]  # a table's column holds null where a row has none
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


# Where a record is: the line a text file's record starts on, or a table's "row N" (Parquet, a saved
# dataset; counted from 0, as `datasets`' ds[N] and pandas' df.iloc[N] count), for `file:line: ...`.
Where = int | str
Record = tuple[Where, Any, str | None]  # (where, the parsed record, None) or (where, None, what is wrong)


def at(where: Where) -> str:
    """`where` in words: "line 3" or "row 2"."""
    return f"line {where}" if isinstance(where, int) else where


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


def table_records(rows: Iterator[tuple[str, dict]]) -> Iterator[Record]:
    """A table's rows (tables.py: Parquet, a saved dataset) as records; a file pyarrow cannot read
    as such a table is Unreadable."""
    try:
        for where, record in rows:
            yield where, record, None
    except tables.NotATable as exc:
        raise Unreadable(str(exc)) from None


def records(path: Path) -> Iterator[Record]:
    """The records of a data file of any accepted type, by its suffix; a folder is a saved dataset."""
    if path.is_dir():
        return table_records(tables.saved_rows(path))
    suffix = path.suffix.lower()
    if suffix in CSV_DELIMITERS:
        return csv_records(path)
    return table_records(tables.parquet_rows(path)) if suffix == ".parquet" else json_records(path)


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
    """Parse a file of records in format `fmt` (JSON lines, a JSON array, CSV, TSV, Parquet, or a
    folder saved with `datasets`' save_to_disk); return them as chat samples and every problem as
    `file:line: ...` (`file:row N: ...` in a table). With "auto", `columns` when given, else the first
    record with a known format's fields decides (chat when none has)."""
    path = Path(path)
    loop = link_loop(path)
    if loop is not None:
        return [], [f"{path}: {loop} is a symbolic link loop (it leads back to itself): point it at the data"]
    if path.is_dir() and (problem := tables.folder_problem(path)):
        return [], [problem]
    if tables.is_pattern(path) and not tables.files_of(path):
        return [], [f"{path}: no file matches"]
    if not path.is_dir() and not path.is_file() and not tables.is_pattern(path):
        return [], [f"{path}: no such file"]
    samples, problems = [], []
    try:
        if fmt == "auto" and columns is not None:
            fmt = "columns"
        for where, obj, unreadable in records(path):
            if unreadable:
                problems.append(f"{path}:{where}: {unreadable}")
                continue
            if fmt == "auto":
                fmt = recognise(obj) or "auto"
            sample, found = as_chat(obj, "chat" if fmt == "auto" else fmt, columns)
            problems += [f"{path}:{where}: {p}" for p in found]
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



# ---------------------------------------------------------------- converting to the AI Toolkit's chat files


def convert(data: DataSection, out: str | Path) -> list[tuple[Path, list[Sample]]]:
    """Write `data`'s files, in whatever format and file type they are, as chat JSON lines (the AI
    Toolkit's train.json and test.json, and validation.json for a data.validation_file) in the folder
    `out`, and return each path with its samples. The records are written as they are read (no system
    prompt added; a table's other columns kept, a value JSON has no type for, such as a date, as its
    text); bad data or a file already there: ConfigError, and nothing is written."""
    train, test, validation, problems = read_files(data)
    out = Path(out)
    files = {"train.json": train, "test.json": test, **({"validation.json": validation} if validation else {})}
    problems += [f"{out / name}: exists: give a new or empty folder" for name in files if (out / name).exists()]
    if problems:
        raise ConfigError(problems, "data")
    out.mkdir(parents=True, exist_ok=True)
    for name, samples in files.items():
        (out / name).write_text("".join(json.dumps(s, ensure_ascii=False, default=str) + "\n"
                                          for s in samples), encoding="utf-8")
    return [(out / name, samples) for name, samples in files.items()]


def format_found(path: str | Path, fmt: DataFormat, columns: ColumnsSection | None) -> tuple[str, str]:
    """The format `read_samples` reads `path` in, and why (a file that cannot be read: chat)."""
    if fmt != "auto":
        return fmt, "data.format"
    if columns is not None:
        return "columns", "data.columns is given"
    try:
        for where, obj, problem in records(Path(path)):
            found = None if problem else recognise(obj)
            if found:
                return found, f"recognised from {at(where)}: fields {', '.join(obj)}"
    except (OSError, Unreadable):
        pass
    return "chat", "no record has another format's fields"
