#!/usr/bin/env bash
# Every pretraining objective, trained from its own config on the shipped
# corpus through the train entrypoint; then a table of validation loss
# (first eval -> last eval), ELECTRA's discriminator numbers, and samples
# from the causal LM and the GLM model (scripts/sample_generations.py).
#
#   scripts/train_objectives.sh                 # STEPS=600 each, ~25 min on 2 CPU cores
#   STEPS=1500 ROOT=/tmp/obj scripts/train_objectives.sh   # 1500 steps each
#
# Rerunning resumes each run from its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-runs/objectives}
STEPS=${STEPS:-600}
EVAL_EVERY=${EVAL_EVERY:-100}
EXTRA=()  # WARMUP=n overrides each config's warmup (short smoke runs)
[[ -n ${WARMUP:-} ]] && EXTRA+=(--config.optimizer.warmup_steps="$WARMUP")
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# name -> config file[:arg]
RUNS=(
  "t5_span_corruption configs/local_tiny.py"
  "bert_mlm configs/pretrain_bert.py:tiny"
  "electra configs/pretrain_electra.py:tiny"
  "causal_lm configs/pretrain_lm.py:causal"
  "prefix_lm configs/pretrain_lm.py:prefix"
  "glm configs/pretrain_glm.py:tiny"
)

start=$(date +%s)
for run in "${RUNS[@]}"; do
  read -r name config <<<"$run"
  printf '\n==== %s: %s, %s steps (%s)\n' "$name" "$config" "$STEPS" "$(date +%H:%M:%S)"
  "$PY" -m t5x_lite.train --config="$config" --workdir="$ROOT/$name" \
      --config.train.num_steps="$STEPS" --config.eval.every_steps="$EVAL_EVERY" \
      --config.checkpoint.every_steps="$STEPS" ${EXTRA[@]+"${EXTRA[@]}"}
done

"$PY" - "$ROOT" "$STEPS" "$(( $(date +%s) - start ))" "${RUNS[@]}" <<'EOF'
import json, os, sys
root, steps, seconds, *runs = sys.argv[1:]
print(f'\nvalidation loss of each objective, {steps} steps from its config:')
print('| objective | config | val loss first eval -> last | change |')
print('|---|---|---|---|')
for name, config in (run.split() for run in runs):
  with open(os.path.join(root, name, 'metrics.jsonl')) as f:
    evals = [json.loads(l) for l in f if '"eval/loss"' in l]
  a, b = evals[0], evals[-1]
  print(f'| {name} | {config} | {a["eval/loss"]:.3f} (step {a["step"]}) -> '
        f'{b["eval/loss"]:.3f} (step {b["step"]}) | '
        f'{100 * (b["eval/loss"] / a["eval/loss"] - 1):+.0f}% |')
with open(os.path.join(root, 'electra', 'metrics.jsonl')) as f:
  e = [json.loads(l) for l in f if '"eval/disc_accuracy"' in l][-1]
print(f'\nELECTRA at step {e["step"]} (validation): discriminator accuracy '
      f'{e["eval/disc_accuracy"]:.4f} vs all-original baseline '
      f'{e["eval/disc_baseline_accuracy"]:.4f} '
      f'({100 * (e["eval/disc_accuracy"] - e["eval/disc_baseline_accuracy"]):+.2f} points); '
      f'replaced-token rate {e["eval/replaced_rate"]:.4f} of tokens, '
      f'{e["eval/masked_replaced_rate"]:.4f} of masked positions; '
      f'generator MLM loss {e["eval/mlm_loss"]:.3f}')
print(f'total {int(seconds) // 60}m{int(seconds) % 60:02d}s')
EOF

printf '\n==== samples (%s)\n' "$(date +%H:%M:%S)"
"$PY" scripts/sample_generations.py --causal_workdir="$ROOT/causal_lm" \
    --glm_workdir="$ROOT/glm" --out="$ROOT/samples.md"
