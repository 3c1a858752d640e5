r"""Back translation on translate_en_de: the three models of the recipe.

    # the whole recipe, every stage below, resumable (README: "Back
    # translation"; 58 min on 2 CPU cores shared with other jobs):
    python scripts/back_translate.py --workdir=runs/back_translation

    # or stage by stage, as the script runs them:
    # 1. the reverse model, German -> English, on the parallel half
    python -m t5x_lite.train --config=configs/back_translation.py:reverse \
        --workdir=runs/back_translation/reverse
    python -m t5x_lite.eval --workdir=runs/back_translation/reverse \
        --config.task.eval_split=test
    # 2. its English for the monolingual German (beam search, batched):
    #    scripts/back_translate.py writes synthetic.tsv and a task module
    #    back_translated_tasks.py calling back_translation.register_synthetic
    # 3. English -> German on the real pairs only, and on real + synthetic
    python -m t5x_lite.train --config=configs/back_translation.py:forward_real \
        --workdir=runs/back_translation/forward_real
    PYTHONPATH=runs/back_translation python -m t5x_lite.train \
        --config=configs/back_translation.py:forward_mixed \
        --task_module=back_translated_tasks \
        --workdir=runs/back_translation/forward_mixed
    python -m t5x_lite.eval --workdir=runs/back_translation/forward_real \
        --config.task.name=translate_en_de --config.task.eval_split=test
    # (forward_mixed's saved config names the task module: eval it with
    # PYTHONPATH=runs/back_translation, the same flags)

The argument is the stage, optionally with a size: `reverse`,
`forward_real`, `forward_mixed` (tasks in t5x_lite/tasks/back_translation.py),
e.g. `forward_real,small`. The three share everything but the task, so the
real-only and the mixed run differ only in their data: same model, steps,
batch, optimizer and seed (train.seed). Sizes: `tiny` (default: the 2+2-layer,
d_model 128 model of configs/local_tiny.py) or a configs/models.py T5.1.1
row (small, base, ...), all on the corpus vocabulary (4224 logits).
"""
from t5x_lite.configs import default
from t5x_lite.configs import local_tiny
from t5x_lite.configs import models

# stage -> the task it trains (tasks/back_translation.py)
STAGES = {
    'reverse': 'translate_de_en_parallel',
    'forward_real': 'translate_en_de_parallel',
    # registered by register_synthetic (the script's task module)
    'forward_mixed': 'translate_en_de_back_translated',
}
# 95% of the pairs' sentences (prefix included) fit in 40 pieces.
LENGTH = 40


def get_config(arg='reverse'):
  stage, _, size = (arg or 'reverse').partition(',')
  size = size or 'tiny'
  if stage not in STAGES:
    raise ValueError(f'back_translation stage {stage!r}: use one of '
                     f'{", ".join(STAGES)} (optionally ",SIZE").')
  c = default.get_config()
  if size == 'tiny':
    c.model = local_tiny.get_config().model
  else:
    models.apply_size(c, size)
    c.model.dtype = 'bfloat16'
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128

  c.task.name = STAGES[stage]
  c.task.feature_lengths.inputs = LENGTH
  c.task.feature_lengths.targets = LENGTH

  c.train.batch_size = 32  # packed rows: about two pairs each
  c.train.num_steps = 400
  c.train.log_every_steps = 50
  c.train.seed = 0
  # local_tiny's Adafactor recipe: the rate stays flat at 3e-2 over a run
  # shorter than the warmup, which suited the tiny model there.
  c.optimizer.name = 'adafactor'
  c.optimizer.learning_rate = 3e-2
  c.optimizer.schedule = 'rsqrt'
  c.optimizer.warmup_steps = 1000

  c.mesh.data = -1
  # Teacher-forced validation loss at the start and the end; BLEU comes
  # from `t5x_lite.eval` on the test split.
  c.eval.every_steps = c.train.num_steps
  c.eval.num_batches = 4
  c.eval.num_decode_examples = 4
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 2
  c.decoding.method = 'greedy'
  c.decoding.max_decode_length = LENGTH
  return c
