"""data.dataset's folder as train / test (/ validation) files: the AI Toolkit's train.json and test.json,
a DatasetDict saved with `datasets`' save_to_disk (dataset_dict.json, a folder per split), or a folder
of Parquet files (train-*.parquet, or the Hugging Face hub's data/train-00000-of-00001.parquet).

Splits are named as `datasets` names them when it loads a folder (datasets.data_files.SPLIT_KEYWORDS):
train is "train" or "training", test "test", "testing", "eval" or "evaluation", validation
"validation", "valid", "dev" or "val"; a Parquet file is a split's when a folder on its way is named
so, or its name has the word between non-word characters (-._ space digits). `datasets` itself is not
imported: this is its naming rule, not its reader.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
SEP = "-._ 0-9"  # datasets' NON_WORDS_CHARS: what may stand around a split's word in a file name
SAVED_DICT = "dataset_dict.json"  # what save_to_disk writes beside a DatasetDict's split folders


def split_of(name: str) -> str | None:
    """The split a split folder's or a file's name names ("train-00000-of-00001.parquet": train), or None."""
    for split, words in SPLIT_WORDS.items():
        if any(re.search(rf"(^|[{SEP}]){word}([{SEP}]|$)", name.lower()) for word in words):
            return split
    return None


def dataset_files(folder: str, need: list[str]) -> dict[str, str]:
    """{"train": path, "test": path[, "validation": path]} for data.dataset's folder: its train.json and
    test.json when it has either (or is not there: reading names what is missing); the split folders of
    a saved DatasetDict; or a path or pattern (`data/train-*.parquet`) per split of its Parquet files.
    ValueError, one line, for a split it lacks of those `need` names ("train", "test")."""
    root = Path(folder)
    chat = {side: str(root / f"{side}.json") for side in ("train", "test")}
    if not root.is_dir() or any(Path(path).exists() for path in chat.values()):
        return chat
    if (root / SAVED_DICT).is_file():
        names = json.loads((root / SAVED_DICT).read_text(encoding="utf-8")).get("splits", [])
        found = {split_of(name): str(root / name) for name in reversed(names) if split_of(name)}  # the first wins
        return complete(folder, need, found, f"holds a DatasetDict ({SAVED_DICT}, splits {', '.join(names)})")
    files = sorted(path for path in root.rglob("*.parquet") if path.is_file())
    if not files:
        return chat
    groups: dict[str, list[Path]] = {}
    for path in files:
        split = next(filter(None, map(split_of, path.relative_to(root).parts)), None)  # a folder's name first
        if split:
            groups.setdefault(split, []).append(path)
    found = {split: pattern(folder, split, shards) for split, shards in groups.items()}
    listed = ", ".join(str(p.relative_to(root)) for p in files[:3]) + (", ..." if len(files) > 3 else "")
    named = f" of splits {', '.join(found)}" if found else ", none named for a split"
    return complete(folder, need, found, f"holds Parquet files ({listed}){named}")


def complete(folder: str, need: list[str], found: dict[str, str], what: str) -> dict[str, str]:
    """`found` when it has every split `need` names, else the one-line ValueError that says which are missing."""
    missing = [side for side in need if side not in found]
    if missing:
        words = " or ".join(f'"{word}"' for side in missing for word in SPLIT_WORDS[side][:2])
        raise ValueError(f"data.dataset: {folder} {what}: no {' and no '.join(missing)} split (a split named {words}); "
                         f"give data.{missing[0]}_file")
    return found


def pattern(folder: str, split: str, shards: list[Path]) -> str:
    """One path for a split's Parquet files: the file itself, or a pattern that matches them all and no other."""
    if len(shards) == 1:
        return str(shards[0])
    parent = shards[0].parent
    for name in ("*.parquet", os.path.commonprefix([p.name for p in shards]) + "*.parquet"):
        if all(p.parent == parent for p in shards) and sorted(parent.glob(name)) == shards:
            return str(parent / name)
    raise ValueError(f"data.dataset: {folder}: the {split} split's Parquet files ({', '.join(p.name for p in shards)}) "
                     f"are not one folder's *.parquet or one name's shards: give data.{split}_file")
