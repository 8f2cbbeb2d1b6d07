#!/usr/bin/env bash
# Issue 10's cifar10-5k rows (docs/results.md): several teachers or none. Run from the repository root after
# bench/cifar10_5k_sweep.sh has trained the teachers runs/c10k/wrn_40_2-s0..s2 and the resnet8_kd rows.
# Every step resumes when re-run (sweeps, chains and synthesize all continue where they stopped).
#   1. multi-teacher: 3-teacher average (mtkd), AEKD, SFKD + AEKD (logits: one teacher cache each); ensemble top-1 in each summary
#   2. teacher-assistant chain wrn_40_2 -> wrn_16_2 -> resnet8 per seed (compare with resnet8_kd: wrn_40_2 -> resnet8);
#      FSS/RS per stage of each chain student against teacher seed 0 (as bench/cifar10_5k_explain.sh scores KD)
#   3. data-free: N synthetic images from teacher seed 0 per mode (noise, DeepDream, DeepInversion); KD students on
#      each, SFKD + KD on DeepInversion; every student scored on the real test set (runs/c10k-df/real_test.jsonl)
#   4. AEKD-F and SFKD + AEKD-F (features of all three teachers, live; not among issue 10's rows)
# PARTS picks the parts by name (default: mt chain df aekd_f), e.g. PARTS=df needs only teacher seed 0.
# N and STEPS (Adam steps per synthetic batch) size the synthetic sets: N=1024 STEPS=200 by default; MODES picks the
# synthetic sets (default: noise deepdream deepinversion; SFKD + KD runs when deepinversion is among them).
# WORKERS sets parallel runs (default 2), THREADS torch threads per run (chains: THREADS or 2); PRECISION pins
# run.precision (e.g. fp32, as docs/results.md's rows, on a CPU where `auto` picks bf16).
set -euo pipefail
shopt -s nullglob
C=configs/cifar10_5k R=runs/c10k D=cifar10:../shared/datasets/cifar10-5k/cifar-10-batches-py
N=${N:-1024} STEPS=${STEPS:-200} SEEDS=0,1,2
prec=(${PRECISION:+--set run.precision=$PRECISION})
par=(--workers ${WORKERS:-2} ${THREADS:+--threads $THREADS} "${prec[@]}")
ds=(distillscope ${THREADS:+--threads $THREADS})  # synthesize, explain and eval beside the runs

part() { [[ " ${PARTS:-mt chain df aekd_f} " == *" $1 "* ]]; }

if part mt; then
  distillscope sweep $C/resnet8_mtkd.yaml $C/resnet8_aekd.yaml $C/resnet8_sfkd_aekd.yaml \
    --seeds $SEEDS --set run.keep_every=3 "${par[@]}" --out runs/c10k-mt
fi

if part chain; then
  distillscope chain $C/wrn_16_2_kd.yaml $C/resnet8_kd.yaml --seeds $SEEDS --set run.threads=${THREADS:-2} --set run.keep_every=3 \
    "${prec[@]}" --out runs/c10k-ta  # runs/c10k-ta/s{seed}/{0-assistant,1-student}
  # paper 002's TA analysis: FSS/RS per stage of each chain student against teacher seed 0, its CE base beside
  for s in ${SEEDS//,/ }; do
    out=runs/c10k-explain/ta-scores-s$s
    [ -f $out/summary.md ] || { rm -rf $out; "${ds[@]}" explain --student runs/c10k-ta/s$s/1-* --teacher $R/wrn_40_2-s0 \
      --base $R/resnet8_ce-s$s --only cam --layers stage:0 stage:1 stage:2 --labels text --out $out; }
  done
fi

if part df; then
  O=runs/c10k-df modes=" ${MODES:-noise deepdream deepinversion} "
  for mode in $modes; do
    "${ds[@]}" synthesize $R/wrn_40_2-s0 --mode $mode --n $N --steps $STEPS --size 32 --seed 0 --out $O/$mode
    extra=(); [ $mode = noise ] && extra=(--set method.ce_weight=0)  # noise images carry no class: KD alone
    distillscope sweep $C/resnet8_kd.yaml --seeds $SEEDS --set data.spec=folder:$O/$mode "${extra[@]}" "${par[@]}" --out $O/kd-$mode
  done
  [[ $modes == *" deepinversion "* ]] &&
    distillscope sweep $C/resnet8_sfkd_kd.yaml --seeds $SEEDS --set data.spec=folder:$O/deepinversion "${par[@]}" --out $O/sfkd-deepinversion
  for run in $O/*/resnet8_*-s?; do  # the best-validation (synthetic validation split) and the last checkpoint
    grep -qs "\"$run\"" $O/real_test.jsonl || echo "{\"run\": \"$run\", \"best\": $("${ds[@]}" eval $run/best.safetensors --data $D --json),"\
      "\"last\": $("${ds[@]}" eval $run/last.safetensors --data $D --json)}" >> $O/real_test.jsonl
  done
fi

if part aekd_f; then
  # the feature variants last: AEKD-F taps each teacher's middle stage (too large for the cache), so all three
  # teachers run every step, about 3x the cost of a cached AEKD run
  distillscope sweep $C/resnet8_aekd_f.yaml $C/resnet8_sfkd_aekd_f.yaml --seeds $SEEDS --set run.keep_every=3 "${par[@]}" --out runs/c10k-mt
fi
