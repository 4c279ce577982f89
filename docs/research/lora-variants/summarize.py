"""Prints results/*.json of variants.py as one table (question 1 and 5)."""
import json, glob, variants
rows = []
base = json.load(open("results/lora.json"))
print("| variant | extra step | init no-op (max|dlogit|) | loss 1st -> 20th | falls | save | reload vs trained | merged vs trained | merged+reloaded vs trained | step s (x LoRA) | peak RSS MB (x LoRA) | build s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
def f(x):
    return f"{x:.1e}" if isinstance(x, float) else str(x)
for name in variants.VARIANTS:
    try: r = json.load(open(f"results/{name}.json"))
    except FileNotFoundError: continue
    if "error" in r:
        print(f"| {name} | ERROR {r['error'][:200]} |"); continue
    print("| " + " | ".join([name, "yes" if r.get("extra_step") else "", f(r["init_noop_maxdiff"]), f"{r['loss_first']} -> {r['loss_last']}", str(r["loss_falls"]), str(r["saved"]),
        r.get("loaded") or f(r.get("loaded_vs_ft_maxdiff")), r.get("merged") or f(r.get("merged_vs_ft_maxdiff")), f(r.get("merged_reloaded_vs_ft_maxdiff")),
        f"{r['step_s']:.4f} ({r['step_s']/base['step_s']:.2f})", f"{r['peak_rss_mb']} ({r['peak_rss_mb']/base['peak_rss_mb']:.2f})", str(r["build_s"])]) + " |")
