#!/usr/bin/env bash
# The seed study behind docs/results.md's "Verdicts on the seeds' claims" (issue 26, item 4): enough seeds on
# cifar10-5k that the paired difference of each claim has a minimum detectable effect near 1 point.
# Run from the repository root; re-run to resume (Ctrl-C checkpoints). Every run is fp32 with one thread, so rows
# from different sittings and CPUs share precision; every teacher run distils from teacher B
# (bench/teachers/c10k-wrn_40_2-s0, restored to runs/c10k/wrn_40_2-s0 if absent) through its teacher cache.
#   PARTS="self kd sfkd itensor"  which parts (default all):
#     self: CE, CD, CS-KD, seeds SEEDS (no teacher)
#     kd:   KD and DKD from teacher B, seeds SEEDS
#     sfkd: SFKD-KD and SFKD-DKD, grid logits_fill {0, -inf} x K (KS) on GRID_SEEDS, then SEEDS at the
#           point with the best mean validation top-1 over GRID_SEEDS (bench/chosen_on_val.py; never test)
#     itensor: teachers wrn_40_2 seeds 1, 2 (teacher B is seed 0), then the Interaction Tensor of 5 CE / 5 KD students /
#           3 teachers and of 5 CD students against the 5 CE students, at stage:-1, stage:-2 and (saturated) embedding
#           (needs the self and kd parts' seeds 0-4); written to OUT-interaction/<layer>[-cd]
#   SEEDS (default 0-9), GRID_SEEDS (default 0,1), KS (the SFKD K grid, default 0.5,0.6,0.7,0.8,0.9), WORKERS (default 1), OUT (default runs/c10k-v)
# Extra arguments go to every sweep (e.g. --dry-run). Keep the records afterwards: python bench/keep_records.py OUT bench/records/c10k-v
set -euo pipefail
C=configs/cifar10_5k O=${OUT:-runs/c10k-v} SEEDS=${SEEDS:-0-9} GRID_SEEDS=${GRID_SEEDS:-0,1} KS=${KS:-0.5,0.6,0.7,0.8,0.9}
teacher() { [[ -e runs/c10k/wrn_40_2-s0 ]] || { mkdir -p runs/c10k && cp -r bench/teachers/c10k-wrn_40_2-s0 runs/c10k/wrn_40_2-s0; }; }
run=(--set run.precision=fp32 --set run.keep_every=3 --workers "${WORKERS:-1}" --threads 1 --out "$O")
for part in ${PARTS:-self kd sfkd itensor}; do
  case $part in
    self) distillscope sweep $C/resnet8_{ce,cd,cskd}.yaml --seeds "$SEEDS" "${run[@]}" "$@" ;;
    kd) teacher; distillscope sweep $C/resnet8_{kd,dkd}.yaml --seeds "$SEEDS" "${run[@]}" "$@" ;;
    sfkd)
      teacher
      for m in kd dkd; do
        r=resnet8_sfkd_$m
        distillscope sweep $C/$r.yaml --seeds "$GRID_SEEDS" --grid "method.mask.logits_fill=0,-inf" \
          --grid "method.mask.logits=$KS" "${run[@]}" "$@"
        [[ " $* " == *" --dry-run "* ]] && continue
        point=$(python bench/chosen_on_val.py "$O" "$r" --seeds "$GRID_SEEDS" --point)
        echo "$r: $point chosen on validation (seeds $GRID_SEEDS)"
        grid=(); for kv in $point; do grid+=(--grid "$kv"); done
        distillscope sweep $C/$r.yaml --seeds "$SEEDS" "${grid[@]}" "${run[@]}" "$@"
      done ;;
    itensor)
      teacher
      distillscope sweep $C/wrn_40_2.yaml --seeds 1,2 --set run.precision=fp32 --set run.keep_every=3 --workers "${WORKERS:-1}" \
        --threads 1 --out runs/c10k "$@"
      [[ " $* " == *" --dry-run "* ]] && continue
      T=${OUT_KD:-runs/c10k-vt}
      runs() { local IFS=,; echo "$*"; }
      ce=$(runs $O/resnet8_ce-s{0..4}) cd=$(runs $O/resnet8_cd-s{0..4}) kd=$(runs $T/resnet8_kd-s{0..4})
      data=cifar10:../shared/datasets/cifar10-5k/cifar-10-batches-py
      for layer in stage:-1 stage:-2 embedding; do
        dir=$O-interaction/${layer//:/}
        [[ -e $dir ]] || distillscope --threads 1 interaction --group ce=$ce --group kd=$kd \
          --group teacher=$(runs runs/c10k/wrn_40_2-s{0..2}) --layer $layer --data $data --out $dir
        [[ -e $dir-cd ]] || distillscope --threads 1 interaction --group ce=$ce --group cd=$cd --layer $layer --data $data --out $dir-cd
      done ;;
    *) echo "unknown part '$part'; choose from: self kd sfkd itensor" >&2; exit 2 ;;
  esac
done
