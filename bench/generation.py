"""Benchmark 5: batched greedy generation for the evaluation metric vs one sample at a time.

`lora_sweep.job.evaluate.generate` answers the demo's test conversations (the prompts the
`json_fields` metric scores: the inference system prompt, the test samples the study picks)
with batch_size --batch and with batch_size 1, same model, same max_new_tokens, alternating
which goes first; one untimed call warms the model up. Timed: wall time of each `generate`
call. The outputs are compared answer by answer; where they differ, the first differing
token is located and the base (unpadded) model's margin between its two best logits there is
printed: left padding changes the float32 arithmetic a little, and greedy decoding flips where
two tokens are nearly tied.

    python bench/generation.py                       # SmolLM2, 16 test prompts, 40 new tokens
    python bench/generation.py --adapter studies/demo/trials/3/adapter    # a tuned model answers JSON
    python bench/generation.py --smoke --results /tmp/r.md
"""

from __future__ import annotations

import time
from typing import Any

import benchlib as B

TARGET = 3.0


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def margin_at(model: Any, tokenizer: Any, conversation: list[dict], prefix: str) -> tuple[float, str, str]:
    """The gap between the two best next-token logits after `prompt + prefix` (no padding), and those tokens."""
    import torch

    from lora_sweep.job import data as D

    text = D.render(tokenizer, conversation, D.chat_template(tokenizer), generation_prompt=True) + prefix
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids.to(next(model.parameters()).device)).logits[0, -1].float()
    top = torch.topk(logits, 2)
    return (float(top.values[0] - top.values[1]), tokenizer.decode([int(top.indices[0])]),
            tokenizer.decode([int(top.indices[1])]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = B.parser(__doc__)
    p.add_argument("--batch", type=int, default=8, help="batch size of the batched side (default: %(default)s)")
    p.add_argument("--samples", type=int, default=16, help="test prompts (default: the demo's test_nsamples, 16)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="default: the demo's, %(default)s")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per side, alternating (default: %(default)s)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder to generate with (default: the base model)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.max_new_tokens, args.repeats = 8, 6, 1

    import torch
    from transformers import AutoModelForCausalLM

    from lora_sweep.job import samples as S
    from lora_sweep.job.evaluate import generate, generation_system_prompt, prompts
    from lora_sweep.job.models import load_tokenizer, pick_dtype

    B.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = B.load_demo([f"data.test_nsamples={args.samples}"])
    _, test = S.load_samples(demo.data)
    conversations = [q.messages for q in prompts(demo.data, demo.training.seed, test,
                                                 generation_system_prompt(demo.data))]
    with B.workdir(args.workdir) as work:
        path = B.model_path(args, work)
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype("auto"))
        if torch.cuda.is_available():
            model.to("cuda")
        if args.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, args.adapter)
        model.eval()
        generate(model, tokenizer, conversations[:2], min(4, args.max_new_tokens), 2)  # warm-up, untimed

        seconds: dict[int, list[float]] = {args.batch: [], 1: []}
        answers: dict[int, list[str]] = {}
        for repeat in range(args.repeats):
            for bs in ([args.batch, 1] if repeat % 2 == 0 else [1, args.batch]):
                began = time.perf_counter()
                answers[bs] = generate(model, tokenizer, conversations, args.max_new_tokens, bs)
                seconds[bs].append(time.perf_counter() - began)

        differ = [i for i, (a, b) in enumerate(zip(answers[args.batch], answers[1])) if a != b]
        details = []
        for i in differ[:5]:
            single, batched = answers[1][i], answers[args.batch][i]
            at = first_difference(single, batched)
            gap, best, second = margin_at(model, tokenizer, conversations[i], single[:at])
            details.append(f"  prompt {i}: first difference at character {at}: batch 1 {single[at:at + 20]!r} vs "
                           f"batch {args.batch} {batched[at:at + 20]!r}; unpadded top-2 logits there "
                           f"{best!r} / {second!r}, margin {gap:.4f}")

    batched_s, single_s = B.median(seconds[args.batch]), B.median(seconds[1])
    ratio = single_s / batched_s
    threads = torch.get_num_threads() if not torch.cuda.is_available() else "-"
    print(f"model {B.model_label(args)}{' + adapter' if args.adapter else ''}, {len(conversations)} demo test "
          f"prompts, max_new_tokens {args.max_new_tokens}, greedy, {args.repeats} timed call(s) per side, "
          f"torch threads {threads}; wall time of generate() per call")
    print(B.table(["batch size", "seconds (median)", "calls", "prompts/s", "mean answer chars"],
                  [[bs, B.median(seconds[bs]), len(seconds[bs]), len(conversations) / B.median(seconds[bs]),
                    sum(map(len, answers[bs])) / len(conversations)] for bs in (args.batch, 1)]))
    print(f"outputs: {len(conversations) - len(differ)} of {len(conversations)} identical between batch "
          f"{args.batch} and batch 1" + (f"; {len(differ)} differ:" if differ else ""))
    for line in details:
        print(line)
    if len(differ) > len(details):
        print(f"  ... and {len(differ) - len(details)} more")
    figures = (f"batch {args.batch} {B.num(batched_s)} s, batch 1 {B.num(single_s)} s for {len(conversations)} "
               f"prompts x {args.max_new_tokens} new tokens; {len(differ)}/{len(conversations)} answers differ")
    setup = (f"{B.model_label(args)}{' + adapter' if args.adapter else ''}, {len(conversations)} prompts, "
             f"max_new_tokens {args.max_new_tokens}, threads {threads}")
    row = B.conclude("5 generation", args, setup, figures, ratio, f"batch 1 s / batch {args.batch} s",
                     f"ratio >= {TARGET:g} at batch 8", ratio >= TARGET if args.batch == 8 else None)
    return {"ratio": ratio, "differ": differ, "answers": answers, "seconds": seconds, "row": row}


if __name__ == "__main__":
    main()
