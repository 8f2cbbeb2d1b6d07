#!/usr/bin/env bash
# Issue 26 item 6: RS of the KD student against its base on the built-in `shapes` task with one-hot labels and with
# the text embeddings of the class names (paper 002 scores relevance against label embeddings). Trains the demo's
# teacher / CE / KD students (seed 0) into OUT/demo unless there, then one `explain` per label kind into OUT/<kind>.
set -euo pipefail
O=${OUT:-runs/shapes-rs}
[[ -e $O/demo ]] || distillscope --threads 1 demo --out $O/demo --no-report
for labels in onehot text; do
  [[ -e $O/$labels ]] || distillscope --threads 1 explain --student $O/demo/kd_student --teacher $O/demo/teacher \
    --base $O/demo/ce_student --layers stage:0 stage:1 stage:2 --labels $labels --only cam --out $O/$labels "$@"
done
