"""Data files as Windows saves them: Notepad's UTF-8 with a byte-order mark, CRLF line ends,
UTF-16 ("Unicode", little and big endian), bytes that are not UTF-8 (a file saved as "ANSI"),
and a folder given where a file belongs. Each file is written here, byte for byte."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from helpers import chat, job_tree, run_cli, write_yaml
from lora_sweep.job import data as D
from lora_sweep.job import samples as S
from lora_sweep.config.job import ConfigError, DataSection

# Accents and an emoji (a surrogate pair in UTF-16): what a codec mix-up would garble.
SAMPLES = [chat("Café prices in Zürich?", "Up 3 % ☕"), chat("Best film of 1999?", "The Matrix 🎬"),
           chat("hi", "hello", system="Answer briefly.")]


def lines(samples: list[dict]) -> list[str]:
    return [json.dumps(s, ensure_ascii=False) for s in samples]


def write(path: Path, text: str, encoding: str, bom: bytes = b"") -> Path:
    path.write_bytes(bom + text.encode(encoding))
    return path


def test_notepad_utf8_with_bom_and_crlf_reads_as_plain_utf8(tmp_path):
    path = write(tmp_path / "train.json", "\r\n".join(lines(SAMPLES)) + "\r\n", "utf-8", codecs.BOM_UTF8)
    assert path.read_bytes()[:5] == b'\xef\xbb\xbf{"'
    samples, problems = S.read_samples(path)
    assert problems == []
    assert samples == SAMPLES


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE)])
def test_notepad_unicode_utf16_with_bom_is_read(tmp_path, encoding, bom):
    path = write(tmp_path / "train.json", "\r\n".join(lines(SAMPLES)) + "\r\n", encoding, bom)
    samples, problems = S.read_samples(path)
    assert problems == []
    assert samples == SAMPLES


def test_utf16_problems_keep_their_line_numbers(tmp_path):
    text = "\r\n".join([*lines(SAMPLES[:2]), "{not json", lines(SAMPLES[2:])[0]]) + "\r\n"
    path = write(tmp_path / "train.json", text, "utf-16-le", codecs.BOM_UTF16_LE)
    samples, problems = S.read_samples(path)
    assert samples == SAMPLES
    assert problems == [f"{path}:3: not valid JSON (Expecting property name enclosed in double quotes at column 2)"]


CHINESE = [chat("请把这段话翻译成英文，谢谢你的帮助，我们明天见面再谈这个问题吧" * 3, "好的")] * 20


@pytest.mark.parametrize("samples", [SAMPLES, CHINESE], ids=["latin", "chinese"])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_one_line_for_the_file(tmp_path, encoding, samples):
    # what a program that writes "UTF-16" without a mark saves: a zero byte beside each ASCII character
    path = write(tmp_path / "train.json", "\r\n".join(lines(samples)) + "\r\n", encoding)
    assert path.read_bytes()[:4] in (b'{\x00"\x00', b'\x00{\x00"')
    assert S.read_samples(path) == ([], [f"{path}: UTF-16 without a byte-order mark: save as UTF-8"])


def test_utf16_without_bom_in_a_compare_file_is_one_line(tmp_path):
    from lora_sweep.config.job import CompareSection
    from lora_sweep.job.evaluate import read_compare

    path = write(tmp_path / "compare.jsonl", '{"query": "hi"}\n{"query": "and?"}\n', "utf-16-le")
    with pytest.raises(ConfigError) as err:
        read_compare(CompareSection(file=str(path)), DataSection(train_file="t", test_file="t"))
    assert str(err.value) == f"compare.file: {path}: UTF-16 without a byte-order mark: save as UTF-8"


def test_cut_off_utf16_is_one_clear_line(tmp_path):
    path = tmp_path / "train.json"
    good = codecs.BOM_UTF16_LE + "\r\n".join(lines(SAMPLES)).encode("utf-16-le")
    path.write_bytes(good + b"{")  # an odd number of bytes: the file was cut mid-character
    samples, problems = S.read_samples(path)
    assert samples == []
    assert problems == [f"{path}:3: not UTF-16-LE (truncated data at byte {len(good)})"]


def test_bytes_that_are_not_utf8_are_listed_with_the_other_problems(tmp_path):
    good = lines(SAMPLES)
    ansi = json.dumps(chat("Caf\u00e9 au lait?", "Yes"), ensure_ascii=False).encode("cp1252")  # Notepad's "ANSI"
    after_accent = json.dumps(chat("é then a stray byte", "x"), ensure_ascii=False).encode().replace(b" then", b"\x80then")
    path = tmp_path / "train.json"
    path.write_bytes(b"\r\n".join([good[0].encode(), ansi, b"{not json", after_accent, good[1].encode()]) + b"\r\n")
    samples, problems = S.read_samples(path)
    assert samples == SAMPLES[:2]  # the lines after a bad one are still read
    assert problems == [
        f"{path}:2: not UTF-8 (byte 0xe9 at column 47)",
        f"{path}:3: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        # columns count characters, as an editor shows them: the é before is one column (two bytes)
        f"{path}:4: not UTF-8 (byte 0x80 at column 45)",
    ]


def test_not_utf8_refuses_the_data_before_anything_is_written(tmp_path, tiny_llama):
    from lora_sweep.job.models import load_tokenizer

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.json").write_bytes(lines(SAMPLES)[0].encode() + b"\n" + b'{"messages": "\xff"}\n')
    write(folder / "test.json", "\n".join(lines(SAMPLES)), "utf-8")
    section = DataSection(dataset=str(folder), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as err:
        D.prepare(section, 42, load_tokenizer(str(tiny_llama)))
    assert str(err.value) == f"data: {folder / 'train.json'}:2: not UTF-8 (byte 0xff at column 15)"
    assert not (tmp_path / "cache").exists()


def test_validate_says_not_utf8_in_one_line_without_traceback(tmp_path, tiny_llama):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.json").write_bytes(b'{"messages": "caf\xe9"}\r\n')
    write(folder / "test.json", "\n".join(lines(SAMPLES)), "utf-8", codecs.BOM_UTF8)
    job = write_yaml(tmp_path / "job.yaml", job_tree(tiny_llama, folder, tmp_path / "out"))
    done = run_cli(["validate", str(job)])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {job}: {folder / 'train.json'}:1: not UTF-8 (byte 0xe9 at column 18)\n"


def test_a_directory_given_as_data_file_is_called_a_directory(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    section = DataSection(train_file=str(folder), test_file=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError) as err:
        S.load_samples(section)
    assert err.value.problems == [
        f"{folder}: is a directory, not a data file (data.dataset takes the folder holding train.json and test.json)",
        f"{tmp_path / 'missing.json'}: no such file",
    ]
