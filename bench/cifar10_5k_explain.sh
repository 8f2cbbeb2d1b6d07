#!/usr/bin/env bash
# The explain-side results of docs/results.md (FSS/RS per layer, interaction tensor, information plane, the
# HTML report) on the runs of bench/cifar10_5k_sweep.sh; run from the repository root after that sweep.
# Each step writes a new folder under runs/c10k-explain and is skipped when that folder is complete.
set -euo pipefail
R=runs/c10k X=runs/c10k-cache O=runs/c10k-explain D=cifar10:../shared/datasets/cifar10-5k/cifar-10-batches-py
mkdir -p $O
seeds() { echo "$R/$1-s0,$R/$1-s1,$R/$1-s2"; }
five() { echo "$(seeds $1),$X/$1-s3,$X/$1-s4"; }  # seeds 3, 4 sit in runs/c10k-cache (KD: the teacher-cache table's runs)
scores() {  # scores() OUT STUDENT [--base RUN]: FSS/RS of STUDENT against teacher seed 0, per stage, clean and ROAD-LeRF
  local out=$1 student=$2; shift 2
  [ -f $O/$out/summary.md ] || { rm -rf $O/$out; distillscope explain --student $R/$student --teacher $R/wrn_40_2-s0 "$@" \
    --only cam --layers stage:0 stage:1 stage:2 --labels text --out $O/$out; }
}
for s in 0 1 2; do  # the KD student (its CE base the second reference), and the CE student against the same teacher
  scores scores-s$s resnet8_kd-s$s --base $R/resnet8_ce-s$s
  scores ce-scores-s$s resnet8_ce-s$s
done
for s in 1 2; do scores teacher-scores-s$s wrn_40_2-s$s; done  # another teacher seed: its RS, and FSS across teacher seeds
distillscope sweep configs/cifar10_5k/resnet8_ce.yaml --seeds 3,4 --set run.keep_every=3 --workers 2 --out $X  # 5 CE seeds
[ -f $O/interaction/interaction.json ] || { rm -rf $O/interaction; distillscope interaction --group ce=$(five resnet8_ce) \
  --group kd=$(five resnet8_kd) --group teacher=$(seeds wrn_40_2) --data $D --out $O/interaction; }
[ -f $O/infoplane/infoplane.json ] || { rm -rf $O/infoplane; distillscope infoplane $R/resnet8_ce-s0 $R/resnet8_kd-s0 \
  $R/resnet8_sfkd_kd-s0 --data $D --layers stage:2 embedding --checkpoints 3,9,15,21,30 --epochs 30 --out $O/infoplane; }
[ -f $O/report/report.html ] || { rm -rf $O/report; /usr/bin/time -v distillscope explain --group kd=$(seeds resnet8_kd) \
  --group base=$(seeds resnet8_ce) --group teacher=$(seeds wrn_40_2) --labels text --skip infoplane --out $O/report 2> $O/report-time.txt; }  # infoplane: the step above
