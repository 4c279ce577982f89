"""Benchmark 9: `validate` of a train.json holding one very long line, against the same file without it.

train.json is the demo's samples repeated to 1,512 lines (the size of the AI Toolkit's sample file
issue 21 names) and test.json the demo's; the long arm adds one sample of --long-mb MB (10) in the
middle. Each arm is `python -m lora_sweep validate sweeps/demo.yaml data.dataset=...` in a child
process, as a user runs it, --repeats times alternating which goes first; timed is its wall time,
and its peak memory (the child's own ru_maxrss) is read too. The clean arm tokenizes every sample to
count the answers the seqlens cut away; the long arm stops at the data problem. Also timed: reading
and checking the clean files alone (`lora_sweep.job.data.read_files`, in this process).

    python bench/big_inputs.py
    python bench/big_inputs.py --long-mb 50 --repeats 5
    python bench/big_inputs.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as B

SAMPLES = 1512
TARGET = 1.0
# the child prints its own peak resident memory (kB on Linux) after the command
CHILD = ("import resource, sys; from lora_sweep import cli\n"
         "try:\n    code = cli.main(sys.argv[1:])\n"
         "finally:\n    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)\n")


def write_data(folder: Path, long_mb: float | None) -> Path:
    """The demo's samples repeated to SAMPLES lines (and one of `long_mb` MB in the middle) in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = (B.DEMO_DATA / "train.json").read_text(encoding="utf-8").splitlines()
    lines = (lines * (SAMPLES // len(lines) + 1))[:SAMPLES]
    if long_mb:
        user = "x " * int(long_mb * 1e6 / 2)
        lines.insert(SAMPLES // 2, json.dumps({"messages": [{"role": "user", "content": user},
                                                            {"role": "assistant", "content": "{}"}]}))
    (folder / "train.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "test.json").write_bytes((B.DEMO_DATA / "test.json").read_bytes())
    return folder


def validate(folder: Path, overrides: list[str]) -> tuple[float, float, int]:
    """Seconds, peak memory in MB and exit code of `validate` on the demo config with `folder` as data."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "validate", str(B.DEMO_YAML), *B.demo_overrides(),
                           f"data.dataset={folder}", *overrides], capture_output=True, text=True, cwd=B.REPO)
    seconds = time.perf_counter() - began
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("maxrss "))
    return seconds, peak / 1024, done.returncode


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--long-mb", type=float, default=10.0, help="size of the long line (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each arm (default: %(default)s)")
    args = p.parse_args(argv)
    if args.smoke:
        args.long_mb, args.repeats = min(args.long_mb, 2.0), 1

    from lora_sweep.job import samples as S

    demo = B.load_demo()
    with B.workdir(args.workdir) as work:
        overrides = B.model_overrides(args.smoke, B.demo_model(args, work))
        arms = {"clean": write_data(work / "clean", None), "long": write_data(work / "long", args.long_mb)}
        runs: dict[str, list[tuple[float, float, int]]] = {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            for arm in (list(arms) if repeat % 2 == 0 else list(arms)[::-1]):
                runs[arm].append(validate(arms[arm], overrides))
        section = demo.data.model_copy(update={"train_file": str(arms["clean"] / "train.json"),
                                               "test_file": str(arms["clean"] / "test.json")})
        began = time.perf_counter()
        train, test, _, problems = S.read_files(section)
        read_s = time.perf_counter() - began
    assert not problems and len(train) == SAMPLES, problems
    codes = {arm: {code for _, _, code in r} for arm, r in runs.items()}
    assert codes == {"clean": {0}, "long": {2}}, codes  # valid; refused on the long line
    seconds = {arm: B.median([s for s, _, _ in r]) for arm, r in runs.items()}
    memory = {arm: max(m for _, m, _ in r) for arm, r in runs.items()}
    ratio = seconds["long"] / seconds["clean"]
    print(f"validate of the demo config, {SAMPLES} train samples, {B.model_label(args)}, median of {args.repeats}:")
    print(B.table(["train.json", "seconds", "peak MB", "exit"], [
        [f"{SAMPLES} samples", seconds["clean"], memory["clean"], 0],
        [f"... and one line of {args.long_mb:g} MB", seconds["long"], memory["long"], 2],
    ]))
    print(f"\nread and check the clean files alone: {B.num(read_s)} s ({len(train) + len(test)} samples)")
    figures = (f"validate {B.num(seconds['clean'])} s / {B.num(memory['clean'])} MB clean, "
               f"{B.num(seconds['long'])} s / {B.num(memory['long'])} MB with a {args.long_mb:g} MB line (refused); "
               f"read+check alone {B.num(read_s)} s")
    setup = f"{B.model_label(args)} tokenizer, demo samples x {SAMPLES}, one {args.long_mb:g} MB line"
    row = B.conclude("9 big inputs", args, setup, figures, ratio, "validate s with the long line / without",
                     f"<= {TARGET:g}: a long line costs no more than a clean file", ratio <= TARGET)
    return {"ratio": ratio, "seconds": seconds, "memory": memory, "read_s": read_s, "row": row}


if __name__ == "__main__":
    main()
