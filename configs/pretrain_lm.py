r"""GPT-style causal LM or prefix LM pretraining of a decoder-only model.

    python -m t5x_lite.train --config=configs/pretrain_lm.py:causal \
        --workdir=/tmp/lm_causal
    python -m t5x_lite.train --config=configs/pretrain_lm.py:prefix-small \
        --workdir=/tmp/lm_prefix

The argument is `<objective>[-<size>]`: objective causal (shakespeare_causal_lm:
every token predicted, left to right) or prefix (shakespeare_prefix_lm: a
random split, the prefix attended bidirectionally through
decoder_causal_attention, loss on the continuation only); size tiny | small
| base | large (the `decoder_<size>` rows of configs/models.py), default tiny.
The row length is inputs + targets.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

TASKS = {'causal': 'shakespeare_causal_lm', 'prefix': 'shakespeare_prefix_lm'}
# size -> (inputs, targets, batch, steps, peak learning rate)
RECIPES = {
    'tiny': (64, 64, 32, 1500, 2e-3),  # minutes on a laptop CPU
    'small': (512, 512, 128, 100_000, 6e-4),  # GPT-2-small-like
    'base': (1024, 1024, 256, 200_000, 3e-4),
    'large': (1024, 1024, 512, 300_000, 2e-4),
}


def get_config(arg='causal'):
  objective, _, size = (arg or 'causal').partition('-')
  size = size or 'tiny'
  if objective not in TASKS or size not in RECIPES:
    raise ValueError(f'pretrain_lm argument {arg!r}: use <objective>[-<size>] '
                     f'with objective in {sorted(TASKS)} and size in '
                     f'{sorted(RECIPES)}, e.g. causal or prefix-small.')
  inputs, targets, batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'decoder_{size}')
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.task.name = TASKS[objective]
  # causal: one row of inputs + targets tokens; prefix: a split chunk.
  c.task.feature_lengths.inputs = inputs
  c.task.feature_lengths.targets = targets
  c.train.batch_size = batch
  c.train.num_steps = steps
  c.train.log_every_steps = 50
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = min(2000, steps // 10)
  c.optimizer.end_learning_rate_fraction = 0.1
  c.optimizer.weight_decay = 0.1
  c.optimizer.b2 = 0.95
  c.optimizer.grad_clip_norm = 1.0
  c.eval.every_steps = max(100, steps // 10)
  c.eval.num_batches = 8
  c.checkpoint.every_steps = max(500, steps // 10)
  c.decoding.method = 'sample'
  c.decoding.top_k = 40
  c.decoding.temperature = 0.8
  return c
