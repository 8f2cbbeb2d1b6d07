#!/usr/bin/env bash
# Issue 28 item 6: a token-model teacher on cifar10-5k. Trains vit_tiny_cifar (configs/cifar10_5k/vit_tiny.yaml) into
# runs/c10k/vit_tiny-s0, KD-trains resnet8 from it (resnet8_kd_from_vit.yaml) into OUT/resnet8_kd_from_vit-s0, then
# explains the student against the ViT teacher and the CE base of seed 0 of the verdict study (runs/c10k-v, built by
# `PARTS=self bench/cifar10_5k_verdicts.sh`) at the three stage maps: the ViT's are its patch tokens reshaped to 8×8.
# Precision as the recipes say (auto: bf16 on a CPU with native bf16, else fp32). Finished steps are skipped; an
# interrupted training resumes. Keep the records afterwards:
#   python bench/keep_records.py runs/c10k/vit_tiny-s0 OUT/resnet8_kd_from_vit-s0 OUT/explain/{settings.json,scores.csv,summary.md}
set -euo pipefail
O=${OUT:-runs/c10k-vit} T=runs/c10k/vit_tiny-s0 S=${OUT:-runs/c10k-vit}/resnet8_kd_from_vit-s0 BASE=${BASE:-runs/c10k-v/resnet8_ce-s0}
train() { [[ -e $2/summary.json ]] || distillscope --threads 1 train "$1" --out "$2" $([[ -e $2/last.safetensors ]] && echo --resume) --set run.progress=false; }
train configs/cifar10_5k/vit_tiny.yaml $T
train configs/cifar10_5k/resnet8_kd_from_vit.yaml $S
[[ -e $O/explain ]] || distillscope --threads 1 explain --student $S --teacher $T --base "$BASE" \
  --data cifar10:../shared/datasets/cifar10-5k/cifar-10-batches-py --layers stage:0 stage:1 stage:2 --limit 512 --out $O/explain
