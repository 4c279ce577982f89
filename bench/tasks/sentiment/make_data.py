"""Bench 3's second task: a word's sentiment, in one of four words, from the VADER lexicon.

Source: the VADER sentiment lexicon (Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text", ICWSM 2014), `vader_lexicon.txt` inside the PyPI package
`vaderSentiment` 3.3.2, MIT licence (its LICENSE.txt, Copyright (c) 2016 C.J. Hutto). Each line
is a token, the mean of ten human ratings from -4 (extremely negative) to +4 (extremely positive),
their standard deviation and the ratings. Read offline from the package's wheel:

    pip download --no-deps vaderSentiment==3.3.2 -d /tmp/vader
    python bench/tasks/sentiment/make_data.py /tmp/vader/vaderSentiment-3.3.2-py2.py3-none-any.whl

Kept: lower-case alphabetic tokens (7,217 of 7,520: no emoticons). The answer is the mean rating's
class: "very negative" (<= -2), "negative" (< 0), "positive" (< 2), "very positive" (>= 2). The
words are shuffled with a fixed seed and split into train, validation and test, disjoint; each
sample is one chat turn pair (the system prompt is the study's). The same wheel always gives the
same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import zipfile
from pathlib import Path

LEXICON = "vaderSentiment/vader_lexicon.txt"
SPLITS = {"train": 480, "validation": 64, "test": 256}


def label(mean: float) -> str:
    """The class of a mean rating on VADER's -4..+4 scale."""
    if mean <= -2:
        return "very negative"
    if mean < 0:
        return "negative"
    return "positive" if mean < 2 else "very positive"


def words(wheel: Path) -> list[tuple[str, float]]:
    """(word, mean rating) of the lexicon's lower-case alphabetic entries, in file order."""
    with zipfile.ZipFile(wheel) as z:
        text = z.read(LEXICON).decode("utf-8")
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and re.fullmatch(r"[a-z]+", fields[0]):
            out.append((fields[0], float(fields[1])))
    return out


def write(wheel: Path, out: Path, seed: int = 0) -> dict[str, int]:
    entries = words(wheel)
    random.Random(seed).shuffle(entries)
    start, counts = 0, {}
    for split, n in SPLITS.items():
        rows = entries[start:start + n]
        start += n
        with open(out / f"{split}.json", "w", encoding="utf-8", newline="\n") as f:
            for word, mean in rows:
                f.write(json.dumps({"messages": [{"role": "user", "content": word},
                                                 {"role": "assistant", "content": label(mean)}]}) + "\n")
        counts[split] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path, help="vaderSentiment-3.3.2-py2.py3-none-any.whl")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"wrote {write(args.wheel, args.out, args.seed)} to {args.out}")


if __name__ == "__main__":
    main()
