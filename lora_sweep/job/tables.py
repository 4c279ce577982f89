"""Data files that are tables: Parquet files and datasets saved with `datasets`' save_to_disk, their
rows read as {column: value} records, a batch at a time, with pyarrow (samples.py checks them as it
checks JSON lines' records).

pyarrow, not pandas: pandas would turn a list column (ShareGPT's conversations) into numpy arrays and
an int column with a gap into floats; pyarrow's to_pylist gives the Python values a JSON record would
have (a missing value: None). Nor `datasets`: a saved dataset is a folder whose state.json lists its
*.arrow files ("_data_files"), each an Arrow IPC stream, which pyarrow reads. pyarrow is imported
only when such a file is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

BATCH = 1024  # rows turned into Python records at a time
SAVED_STATE = "state.json"  # what makes a folder a dataset saved with `datasets`' save_to_disk
SAVED_DICT = "dataset_dict.json"  # ... a DatasetDict: one such folder per split

Row = tuple[str, dict]  # ("row N", the record): N counted from 0, as ds[N] and df.iloc[N] count


class NotATable(ValueError):
    """A file or folder that pyarrow cannot read as the table it should be (one problem for all of it)."""


def rows(batches: Iterable[Any]) -> Iterator[Row]:
    """The rows of a stream of pyarrow record batches, counted from 0 across the batches."""
    number = 0
    for batch in batches:
        for record in batch.to_pylist():
            yield f"row {number}", record
            number += 1


def is_pattern(path: Path) -> bool:
    """Is `path` a pattern of Parquet shards (`data/train-*.parquet`), not a file's name?"""
    return path.suffix.lower() == ".parquet" and any(c in path.name for c in "*?[") and not path.exists()


def files_of(path: Path) -> list[Path]:
    """The files a data path stands for: a pattern's shards, a saved dataset's folder's files, or itself."""
    if is_pattern(path):
        return sorted(path.parent.glob(path.name))
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def parquet_rows(path: Path) -> Iterator[Row]:
    """The rows of a Parquet file (pandas' to_parquet, `datasets`' to_parquet, Spark's), or of a
    pattern's shards one after the other (counted across them, as `datasets` loads such data_files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = path

    def batches() -> Iterator[Any]:
        nonlocal shard
        for shard in files_of(path):
            yield from pq.ParquetFile(shard).iter_batches(batch_size=BATCH)

    try:
        yield from rows(batches())
    except pa.ArrowException as exc:
        raise NotATable(f"{shard.name + ': ' if shard != path else ''}not a Parquet file ({exc})") from None


def saved_rows(folder: Path) -> Iterator[Row]:
    """The rows of a dataset saved with `datasets`' Dataset.save_to_disk, shard after shard."""
    import pyarrow as pa

    try:
        state = json.loads((folder / SAVED_STATE).read_text(encoding="utf-8"))
        shards = [entry["filename"] for entry in state["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise NotATable(f"{SAVED_STATE} does not list the dataset's files as save_to_disk writes it ({exc!r})") from None

    def batches() -> Iterator[Any]:
        for name in shards:
            with pa.memory_map(str(folder / name)) as source:
                yield from pa.ipc.open_stream(source)

    try:
        yield from rows(batches())
    except pa.ArrowException as exc:
        raise NotATable(f"not a dataset saved by save_to_disk ({exc})") from None


def folder_problem(path: Path) -> str | None:
    """Why the folder `path` is not a data file (None: it is a dataset saved with save_to_disk)."""
    if (path / SAVED_STATE).is_file():
        return None
    if (path / SAVED_DICT).is_file():
        splits = json.loads((path / SAVED_DICT).read_text(encoding="utf-8")).get("splits", [])
        return (f"{path}: holds a DatasetDict ({SAVED_DICT}, splits {', '.join(splits)}): give one split's folder, "
                f"e.g. {path / (splits[0] if splits else 'train')}, or the whole as data.dataset")
    return f"{path}: is a directory, not a data file (data.dataset takes the folder holding train.json and test.json)"
