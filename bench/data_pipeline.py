"""Benchmark 4: the data pipeline: real (non-pad) token share of the rows, and the throughput of
the tokenized-cache build on the demo data.

Real-token share, for the demo data with `varied_seqlen: false` (packed, the target) and
`true` (the demo's setting, reported), two ways:
* rows: the job's own stat `real_token_share` (tokens of the rows over rows x longest row);
* batches: what training actually sees: the rows in a seeded random order, batched by
  `train_batch_size` and padded to each batch's longest row as the job's collator does.

Throughput: `lora_sweep.job.data.prepare` into an empty cache folder (read nothing from cache:
render with the chat template, locate the answers, tokenize, pack, save), median of
--repeats, vs the plain way to tokenize the same conversations (render each once with
`apply_chat_template`, one batched tokenizer call; no labels, no packing, no file), and the
load of the cached file. Tokens/s counts the samples' tokens (train + test).

    python bench/data_pipeline.py                    # SmolLM2's tokenizer, the demo data
    python bench/data_pipeline.py --seqlen 512
    python bench/data_pipeline.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import time
from typing import Any

import benchlib as B

TARGET = 0.98


def batch_share(lengths: list[int], batch: int, seed: int) -> float:
    """Real tokens over padded tokens when rows in a seeded random order are batched and padded per batch."""
    import torch

    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    real = padded = 0
    for start in range(0, len(order), batch):
        sizes = [lengths[i] for i in order[start:start + batch]]
        real += sum(sizes)
        padded += len(sizes) * max(sizes)
    return real / padded


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--seqlen", type=int, default=None, help="train/test seqlen (default: the demo's)")
    p.add_argument("--samples", type=int, default=None, help="train samples (default: the demo's, all 400)")
    p.add_argument("--repeats", type=int, default=3, help="cache builds timed (default: %(default)s)")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.repeats = args.samples or 40, 1

    from lora_sweep.job import data as D
    from lora_sweep.job import samples as S
    from lora_sweep.job.models import load_tokenizer

    B.quiet()
    overrides = [f"data.train_seqlen={args.seqlen}", f"data.test_seqlen={args.seqlen}"] if args.seqlen else []
    overrides += [f"data.train_nsamples={args.samples}"] if args.samples else []
    demo = B.load_demo(overrides)
    seed, batch = demo.training.seed, demo.data.train_batch_size
    samples = S.load_samples(demo.data)
    with B.workdir(args.workdir) as work:
        tokenizer = load_tokenizer(B.model_path(args, work))

        shares = []
        stats: dict[bool, dict[str, Any]] = {}
        for varied in (False, True):
            data = demo.data.model_copy(update={"varied_seqlen": varied})
            tokenized = D.tokenize(data, seed, tokenizer, *samples)
            stats[varied] = tokenized.details
            for side, rows in (("train", tokenized.train), ("test", tokenized.test)):
                s = tokenized.details[side]
                shares.append([f"{'varied' if varied else 'packed'} {side}", s["rows"], s["tokens"],
                               max(rows.lengths()), s["real_token_share"], batch_share(rows.lengths(), batch, seed),
                               s["kept_token_share"]])
        packed_batches = shares[0][5]

        build, load, plain = [], [], []
        data = demo.data
        for repeat in range(args.repeats):
            cached = data.model_copy(update={"cache_dir": str(work / f"cache-{repeat}")})
            began = time.perf_counter()
            D.prepare(cached, seed, tokenizer, samples)
            build.append(time.perf_counter() - began)
            began = time.perf_counter()
            D.prepare(cached, seed, tokenizer, samples)
            load.append(time.perf_counter() - began)
            began = time.perf_counter()
            template = D.chat_template(tokenizer)
            texts = [D.render(tokenizer, S.with_system_prompt(s["messages"], data.system_prompt), template, False)
                     for side, n in ((samples[0], data.train_nsamples), (samples[1], data.test_nsamples))
                     for s in S.select(side, n, seed)]
            plain_tokens = sum(map(len, tokenizer(texts, add_special_tokens=False).input_ids))
            plain.append(time.perf_counter() - began)

    ours_tokens = sum(stats[data.varied_seqlen][side]["sample_tokens"] for side in ("train", "test"))
    n_samples = sum(stats[data.varied_seqlen][side]["samples"] for side in ("train", "test"))
    build_s, load_s, plain_s = B.median(build), B.median(load), B.median(plain)
    ratio = (ours_tokens / build_s) / (plain_tokens / plain_s)
    print(f"tokenizer of {B.model_label(args)}, demo data ({n_samples} samples), seqlen "
          f"{data.train_seqlen}/{data.test_seqlen}, train_batch_size {batch}")
    print("real-token share: rows = the job's real_token_share (rows padded to the longest row); "
          "batches = rows shuffled, padded per batch of train_batch_size as training sees them")
    print(B.table(["rows", "count", "tokens", "longest", "share (rows)", "share (batches)", "kept of samples"], shares))
    print(f"\ntokenization of {n_samples} samples ({data.varied_seqlen and 'varied' or 'packed'} rows, "
          f"the demo setting), median of {args.repeats}:")
    print(B.table(["path", "seconds", "tokens", "tokens/s", "samples/s"], [
        ["ours: prepare(), empty cache", build_s, ours_tokens, ours_tokens / build_s, n_samples / build_s],
        ["ours: prepare(), from cache", load_s, ours_tokens, ours_tokens / load_s, n_samples / load_s],
        ["plain: render once + batch tokenize", plain_s, plain_tokens, plain_tokens / plain_s, n_samples / plain_s],
    ]))
    figures = (f"packed train share {B.num(shares[0][4], 4)} (batches {B.num(packed_batches, 4)}), kept "
               f"{B.num(shares[0][6], 4)}; varied train share rows {B.num(shares[2][4], 3)} batches "
               f"{B.num(shares[2][5], 3)}; cache build {B.num(ours_tokens / build_s)} tok/s, "
               f"cached load {B.num(load_s)} s, plain {B.num(plain_tokens / plain_s)} tok/s")
    setup = f"{B.model_label(args)} tokenizer, demo data, seqlen {data.train_seqlen}, {n_samples} samples"
    row = B.conclude("4 data pipeline", args, setup, figures, ratio, "ours/plain tokenize tok/s",
                     f"packed real-token share >= {TARGET:g} (batches)", packed_batches >= TARGET)
    return {"ratio": ratio, "packed_share": packed_batches, "varied_share": shares[2][5], "shares": shares,
            "build_s": build_s, "row": row}


if __name__ == "__main__":
    main()
