#!/bin/bash
# Question 5: every variant in a fresh process, 2 interleaved rounds; results/bench_rounds.jsonl
cd /tmp/variants; : > results/bench_rounds.jsonl
for round in 1 2; do
  for v in lora rslora dora gaussian pissa pissa_niter_4 olora eva corda lora_ga loraplus qlora_nf4 qlora_nf4_dora; do
    case $v in qlora*) PY=/tmp/variants/bnb-venv/bin/python;; *) PY=/work/main/.venv/bin/python;; esac
    out=$(timeout 300 $PY bench.py run $v 2>results/bench_$v.err | tail -1)
    echo "{\"round\": $round, \"r\": ${out:-null}}" >> results/bench_rounds.jsonl
  done
done
echo done
