#!/bin/bash
# Question 2: conversion of PiSSA/OLoRA/CorDA/LoRA-GA adapters to plain LoRA against the original base
cd /tmp/variants; PY=/work/main/.venv/bin/python
for v in pissa pissa_niter_4 olora corda lora_ga dora_pissa dora_olora rslora_pissa lora; do
  $PY conversion.py $v > results/conv_$v.log 2>&1; echo "$v rc=$?"; done
for v in pissa olora pissa_niter_4 corda lora_ga; do
  $PY conversion.py $v --late > results/conv_${v}_late.log 2>&1; echo "$v late rc=$?"; done
