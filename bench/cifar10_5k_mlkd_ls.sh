#!/usr/bin/env bash
# MLKD + logit standardisation on cifar10-5k (issue 6): the class level's weight chosen on validation (never test; ties:
# the smallest) from 1, 0.1, 0.01 on seed 0, then seeds 0, 1, 2 at it. Sun et al.'s CIFAR-100 weights fail on 10
# classes (docs/results.md). Run from the repository root after runs/c10k/wrn_40_2-s0 is trained; re-run to resume.
# WORKERS sets parallel runs (default 2), THREADS torch threads per run; extra arguments go to both sweeps (e.g. --dry-run).
set -euo pipefail
C=configs/cifar10_5k O=runs/c10k-mlkdls r=resnet8_mlkd_ls
opts=(--set run.keep_every=3 --workers ${WORKERS:-2} ${THREADS:+--threads $THREADS} --out $O "$@")
distillscope sweep $C/$r.yaml --seeds 0 --grid "method.level_weights.class=1,0.1,0.01" "${opts[@]}"
[[ " $* " == *" --dry-run "* ]] && exit 0
chosen=$(python bench/chosen_on_val.py $O $r)
echo "$r: class weight $chosen chosen on validation (seed 0)"
distillscope sweep $C/$r.yaml --seeds 0,1,2 --grid "method.level_weights.class=$chosen" "${opts[@]}"
