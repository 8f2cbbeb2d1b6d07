#!/usr/bin/env bash
# Issue 26 item 6: what FSS's batch size and estimator do to its trend with depth (paper 002 has FSS rising with depth;
# the paper's text gives no batch size, the authors' code scores batches of 4; the paper defines the U-centred estimator).
# Needs the verdict study's KD and CE students of seed 0 and teacher B (bench/cifar10_5k_verdicts.sh). Writes
# OUT/b<batch>-<estimator>/ (one `explain` each); re-run to do the missing ones. LIMIT test images (default 512).
set -euo pipefail
O=${OUT:-runs/c10k-fss} data=cifar10:../shared/datasets/cifar10-5k/cifar-10-batches-py
for setting in 4:unbiased 64:unbiased 4:biased 64:biased; do
  batch=${setting%%:*} estimator=${setting##*:} dir=$O/b$batch-$estimator
  [[ -e $dir ]] || distillscope --threads 1 explain --student runs/c10k-vt/resnet8_kd-s0 --teacher runs/c10k/wrn_40_2-s0 \
    --base runs/c10k-v/resnet8_ce-s0 --data $data --layers stage:0 stage:1 stage:2 --batch-size $batch --estimator $estimator \
    --limit ${LIMIT:-512} --labels onehot --only cam --out $dir "$@"
done
