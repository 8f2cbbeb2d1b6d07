#!/usr/bin/env bash
# Every single-teacher cifar10-5k results row (docs/results.md); run from the repository root. Every student seed
# learns from the same teacher, wrn_40_2 seed 0 (the recipes' teacher.checkpoint), trained first; then its teacher cache is filled for all 162 views
# of every training image (`cache build`, about 83 min on both cores here), so every logit method and seed after it
# runs at the cost of a CE run. Teacher seeds 1 and 2 train last (the multi-teacher rows and the teacher's own
# mean ± std use them). The teacher cache also keeps the teacher features a method taps up to CACHE_GIB (default 30)
# GiB per cache: the embedding of CC, RKD, PKT and CRD (0.2 GiB), FitNet's middle stage (25.6 GiB), the last stage SP
# and SimKD share (12.8 GiB); AT, VID, ReviewKD and OFD tap more and run the teacher. Have about 40 GiB free disk, or set
# CACHE_GIB=4. PRECISION pins run.precision for the teacher, the cache and every run (e.g. fp32, as docs/results.md's
# rows, on a CPU where `auto` picks bf16). Extra arguments go to both sweeps (e.g. --dry-run). Re-run to resume; Ctrl-C checkpoints.
set -euo pipefail
C=configs/cifar10_5k
T=(resnet8_kd resnet8_sfkd_kd resnet8_kd_nocache resnet8_dkd resnet8_dist resnet8_mlkd resnet8_kd_ls resnet8_dkd_ls resnet8_mlkd_strong
   resnet8_fitnet resnet8_at resnet8_sp resnet8_cc resnet8_vid resnet8_rkd resnet8_pkt resnet8_crd resnet8_simkd resnet8_reviewkd resnet8_ofd)
SD=(resnet8_cskd resnet8_pskd resnet8_ols resnet8_cd resnet8_cd_soft resnet8_cd_diag resnet8_cd_shuffled resnet8_cd_test)
order=($C/resnet8_ce.yaml $C/resnet8_kd.yaml $C/resnet8_sfkd_kd.yaml $C/resnet8_kd_nocache.yaml)
order+=($(for r in "${SD[@]}"; do echo $C/$r.yaml; done))
order+=($(for r in "${T[@]:3}"; do echo $C/$r.yaml; done) $C/wrn_40_2.yaml)
prec=(${PRECISION:+--set run.precision=$PRECISION})
distillscope sweep $C/wrn_40_2.yaml --seeds 0 --set run.keep_every=3 "${prec[@]}" --workers 2 --out runs/c10k "$@"
[[ " $* " == *" --dry-run "* ]] || distillscope cache build --config $C/resnet8_kd.yaml "${prec[@]}"
distillscope sweep "${order[@]}" --seeds 0,1,2 --set run.keep_every=3 "${prec[@]}" --set run.teacher_cache_max_gib=${CACHE_GIB:-30} --workers 2 --out runs/c10k "$@"
