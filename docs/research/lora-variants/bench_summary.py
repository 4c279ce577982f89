"""Question 5: results/bench_rounds.jsonl -> a table of ratios vs plain LoRA (min over rounds of each
round's fastest step; peak RSS of the process; peak RSS during training over the RSS before it)."""
import json
rows = {}
for line in open("results/bench_rounds.jsonl"):
    r = json.loads(line)["r"]
    if r:
        rows.setdefault(r["variant"], []).append(r)
base = rows["lora"]
b_step = min(x["step_s_min"] for x in base); b_rss = min(x["peak_rss_mb"] for x in base)
b_tr = min(x["train_peak_over_start_mb"] for x in base)
print("| variant | step s (min of rounds) | x LoRA | step s medians per round | init s | peak RSS MB | x LoRA | training peak over start MB | x LoRA | trainable params |")
print("|---|---|---|---|---|---|---|---|---|---|")
for v, rs in rows.items():
    s = min(x["step_s_min"] for x in rs); rss = min(x["peak_rss_mb"] for x in rs); tr = min(x["train_peak_over_start_mb"] for x in rs)
    med = ", ".join(f"{x['step_s_median']:.3f}" for x in rs)
    init = ", ".join(str(x["init_s"]) for x in rs)
    print(f"| {v} | {s:.3f} | {s/b_step:.2f} | {med} | {init} | {rss:.0f} | {rss/b_rss:.2f} | {tr:.0f} | {tr/b_tr:.2f} | {rs[0]['trainable']} |")
