#!/usr/bin/env bash
# Every run behind docs/results.md: wrn_40_2 teacher, resnet8 CE and resnet8 KD students, seeds 0-2, on the
# real CIFAR-10 subset. Two one-thread workers share a 2-core machine. Re-running it skips finished runs and
# resumes interrupted ones, so it can be spread over several sittings. Prints the table at the end.
set -u
cd "$(dirname "$0")/.."
export DS=${DS:-.venv/bin/distillscope} RUNS=${RUNS:-runs/c10k} WORKERS=${WORKERS:-2}
mkdir -p "$RUNS/logs"

run() {  # run OUT CONFIG [--set k=v ...]: one row of the table for one seed
  local out=$1 config=$2; shift 2
  [ -f "$out/summary.json" ] && return 0
  local extra=(--set run.threads=1 --set run.progress=false)
  if [ -f "$out/last.safetensors" ]; then
    "$DS" train --resume --out "$out" "${extra[@]}"
  else
    "$DS" train "$config" "$@" "${extra[@]}" --out "$out"
  fi >> "$RUNS/logs/$(basename "$out").log" 2>&1
}
wait_for() { while [ ! -f "$1/summary.json" ]; do sleep 20; done; }
export -f run wait_for

{
  for s in 0 1 2; do echo "run $RUNS/wrn_40_2-s$s configs/cifar10_5k/wrn_40_2.yaml --set seed=$s"; done
  for s in 0 1 2; do echo "run $RUNS/resnet8_ce-s$s configs/cifar10_5k/resnet8_ce.yaml --set seed=$s"; done
  for s in 0 1 2; do
    echo "wait_for $RUNS/wrn_40_2-s$s && run $RUNS/resnet8_kd-s$s configs/cifar10_5k/resnet8_kd.yaml --set seed=$s --set teacher.checkpoint=$RUNS/wrn_40_2-s$s"
  done
} | xargs -P "$WORKERS" -I{} bash -c "{}"

"$DS" table "$RUNS"/wrn_40_2-s? "$RUNS"/resnet8_ce-s? "$RUNS"/resnet8_kd-s?
