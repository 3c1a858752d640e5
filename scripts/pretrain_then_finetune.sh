#!/usr/bin/env bash
# Does pretraining help? Pretrain the tiny T5 (configs/local_tiny.py: span
# corruption on the shipped Shakespeare corpus), fine-tune it on `sentiment`,
# fine-tune the same model from scratch for the same number of steps, and
# compare held-out accuracy (seqio metrics of the decoded labels) on the
# sentiment test split. Prints a small table; each run's eval_results.json
# and TensorBoard events stay in its workdir.
#
#   scripts/pretrain_then_finetune.sh      # ~20 min on 2 idle CPU cores
#   # start from `make run`'s 500 steps (stage 1 trains them on to PRE_STEPS):
#   PRETRAINED=runs/local_tiny scripts/pretrain_then_finetune.sh
#   PRE_STEPS=3000 FT_STEPS=800 ROOT=/tmp/ptf scripts/pretrain_then_finetune.sh
#
# Rerunning resumes every finished or interrupted stage from its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-runs/pretrain_then_finetune}
# Three times local_tiny's 500 (what `make run` trains); the README's
# result is from this default.
PRE_STEPS=${PRE_STEPS:-1500}
FT_STEPS=${FT_STEPS:-400}       # the same for both fine-tuning runs
SPLIT=${SPLIT:-test}            # held out from training and from validation
PRETRAINED=${PRETRAINED:-$ROOT/pretrain}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

stage() { printf '\n==== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
start=$(date +%s)

stage "1/4 pretrain the tiny T5: $PRE_STEPS steps of span corruption -> $PRETRAINED"
"$PY" -m t5x_lite.train --config=configs/local_tiny.py --workdir="$PRETRAINED" \
    --config.train.num_steps="$PRE_STEPS" --config.eval.every_steps="$PRE_STEPS"

for init in pretrained scratch; do
  restore=""
  [[ $init == pretrained ]] && restore="$PRETRAINED/checkpoints"
  stage "$([[ $init == pretrained ]] && echo 2 || echo 3)/4 fine-tune on sentiment from $init: $FT_STEPS steps -> $ROOT/ft_$init"
  "$PY" -m t5x_lite.train --config=configs/finetune.py:tiny \
      --workdir="$ROOT/ft_$init" --config.train.num_steps="$FT_STEPS" \
      --config.eval.every_steps="$FT_STEPS" \
      --config.checkpoint.restore_from="$restore"
done

stage "4/4 held-out accuracy on sentiment/$SPLIT"
for init in pretrained scratch; do
  "$PY" -m t5x_lite.eval --config=configs/finetune.py:tiny \
      --workdir="$ROOT/ft_$init" --config.task.eval_split="$SPLIT"
done

"$PY" - "$ROOT" "$PRETRAINED" "$FT_STEPS" "$SPLIT" "$(( $(date +%s) - start ))" <<'EOF'
import json, os, sys
root, pretrained, steps, split, seconds = sys.argv[1:]
with open(os.path.join(pretrained, 'metrics.jsonl')) as f:
  pre = [json.loads(l) for l in f if '"eval/loss"' in l]
print(f'\npretraining: span-corruption validation loss {pre[0]["eval/loss"]:.3f}'
      f' (step {pre[0]["step"]}) -> {pre[-1]["eval/loss"]:.3f} (step {pre[-1]["step"]})')
print(f'\nsentiment/{split}, {steps} fine-tuning steps each:')
print(f'| init       | accuracy (%) | teacher-forced loss |')
print(f'|------------|--------------|---------------------|')
acc = {}
for init in ('pretrained', 'scratch'):
  with open(os.path.join(root, f'ft_{init}', 'eval_results.json')) as f:
    r = json.load(f)
  acc[init] = r['metrics']['sentiment']['accuracy']
  print(f'| {init:<10} | {acc[init]:12.2f} | {r["teacher_forced"]["loss"]:19.4f} |')
gain = acc['pretrained'] - acc['scratch']
print(f'\nfine-tuning from the pretrained checkpoint: {gain:+.2f} points '
      f'({"better" if gain > 0 else "not better"} than scratch); '
      f'total {int(seconds) // 60}m{int(seconds) % 60:02d}s')
EOF
