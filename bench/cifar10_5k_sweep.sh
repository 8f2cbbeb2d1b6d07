#!/usr/bin/env bash
# Every single-teacher cifar10-5k results row (docs/results.md) in one resumable sweep, teachers first; run from the
# repository root. Extra arguments go to `distillscope sweep` (e.g. --dry-run). Re-run to resume; Ctrl-C checkpoints.
C=configs/cifar10_5k
T=(resnet8_kd resnet8_sfkd_kd resnet8_kd_nocache resnet8_dkd resnet8_dist resnet8_mlkd resnet8_kd_ls resnet8_dkd_ls resnet8_mlkd_ls resnet8_mlkd_strong
   resnet8_fitnet resnet8_at resnet8_sp resnet8_cc resnet8_vid resnet8_rkd resnet8_pkt resnet8_crd resnet8_simkd resnet8_reviewkd resnet8_ofd)
SD=(resnet8_cskd resnet8_pskd resnet8_ols resnet8_cd resnet8_cd_soft resnet8_cd_diag resnet8_cd_shuffled resnet8_cd_test)
sets=()
for r in "${T[@]}"; do sets+=(--set "$r:teacher.checkpoint=runs/c10k/wrn_40_2-s{seed}"); done
order=($C/wrn_40_2.yaml $C/resnet8_ce.yaml $C/resnet8_kd.yaml $C/resnet8_sfkd_kd.yaml $C/resnet8_kd_nocache.yaml)
order+=($(for r in "${SD[@]}"; do echo $C/$r.yaml; done))
order+=($(for r in "${T[@]:3}"; do echo $C/$r.yaml; done))
exec distillscope sweep "${order[@]}" --seeds 0,1,2 "${sets[@]}" --set run.keep_every=3 --workers 2 --out runs/c10k "$@"
