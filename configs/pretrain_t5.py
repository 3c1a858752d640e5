"""T5.1.1 span-corruption pretraining (the paper's recipe), any size.

    python -m t5x_lite.train --config=configs/pretrain_t5.py:base \
        --config.task.name=c4_v220_span_corruption --workdir=/tmp/t5_base

Sizes: tiny, small, base, large, xl, xxl (configs/models.py).
"""
from t5x_lite.configs import default
from t5x_lite.configs import models


def get_config(size='base'):
  c = default.get_config()
  models.apply_size(c, size or 'base')
  c.model.vocab_size = 32128
  c.model.dtype = 'bfloat16'
  c.model.remat_policy = 'save_dots_no_batch' if size not in ('tiny',) else 'none'
  c.task.name = 'c4_v220_span_corruption'
  c.task.feature_lengths.inputs = 512
  c.task.feature_lengths.targets = 114
  c.train.batch_size = 128
  c.train.num_steps = 524288
  c.optimizer.name = 'adafactor'
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = 'rsqrt'
  c.optimizer.warmup_steps = 10000
  c.checkpoint.every_steps = 5000
  c.eval.every_steps = 5000
  return c
