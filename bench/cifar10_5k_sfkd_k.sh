#!/usr/bin/env bash
# SFKD's K on cifar10-5k (issue 6, paper 003 §3.2): each SFKD recipe at K = 0.5..0.9 (FitNet: below) on seed 0, then seeds 0, 1, 2
# at the K with the best validation top-1 (never test; ties: the smallest K). Run from the repository root after
# bench/cifar10_5k_sweep.sh has trained runs/c10k/wrn_40_2-s0. Re-run to resume; seed 0 of the chosen K is reused.
# Arguments pick methods (default: all six, e.g. `bench/cifar10_5k_sfkd_k.sh kd dkd`); WORKERS sets parallel runs (default 2), THREADS torch threads per run.
# PRECISION pins run.precision (e.g. fp32, as docs/results.md's rows, on a CPU where `auto` picks bf16).
# CACHE_GIB (default 30): the largest teacher cache with tapped features (FitNet's middle stage: 25.6 GiB), as in bench/cifar10_5k_sweep.sh.
set -euo pipefail
# FitNet's grid is K = 0.1..0.5: its teacher map (wrn_40_2 stage:mid, after a ReLU) has 36-47% nonzero entries per
# sample, so every K >= 0.5 keeps all of them and is FitNet itself (checked bit for bit at K = 0.5).
C=configs/cifar10_5k O=runs/c10k-sfkd
declare -A KEY=([kd]=logits [dkd]=logits [mlkd]=logits [fitnet]=features [crd]=features [at]=attention)
declare -A GRID=([fitnet]=0.1,0.2,0.3,0.4,0.5)
run=(--set run.keep_every=3 --set run.teacher_cache_max_gib=${CACHE_GIB:-30} --workers ${WORKERS:-2} ${THREADS:+--threads $THREADS}
     ${PRECISION:+--set run.precision=$PRECISION} --out $O)
for m in ${@:-kd dkd mlkd fitnet at crd}; do
  r=resnet8_sfkd_$m axis="$r:method.mask.${KEY[$m]}" K=${GRID[$m]:-0.5,0.6,0.7,0.8,0.9}
  distillscope sweep $C/$r.yaml --seeds 0 --grid "$axis=$K" "${run[@]}"
  chosen=$(python bench/chosen_on_val.py $O $r)
  echo "$r: K = $chosen chosen on validation (seed 0)"
  distillscope sweep $C/$r.yaml --seeds 0,1,2 --grid "$axis=$chosen" "${run[@]}"
done
