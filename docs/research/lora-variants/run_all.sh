#!/bin/bash
# Question 1: every variant in its own process; results in results/NAME.json, logs in results/NAME.log
cd /tmp/variants; mkdir -p results
PY=/work/main/.venv/bin/python
for v in $(${PY} -c "import variants; print(' '.join(variants.VARIANTS))"); do
  ${PY} variants.py "$v" --json results/$v.json > results/$v.log 2>&1
  echo "$v rc=$?"
done
