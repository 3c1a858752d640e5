r"""Transformer-XL pretraining of a decoder-only model on contiguous streams.

    python -m t5x_lite.train --config=configs/pretrain_txl.py:tiny \
        --workdir=runs/txl
    python -m t5x_lite.eval --workdir=runs/txl    # ppl with / without memory

Task shakespeare_transformer_xl: the plays joined with EOS, cut into
train.batch_size streams; each step reads the next segment of every stream
(task.feature_lengths inputs + targets tokens) and every layer attends over its cached
inputs of the previous model.memory_length positions (no gradient) too. The
periodic eval reports eval/ppl_with_memory and eval/ppl_no_memory (memory
cleared at every segment) at the same segment length;
`--config.model.memory_length=0` trains the same model without memory.

The argument is the size: tiny | small | base (the `decoder_<size>` rows of
configs/models.py), default tiny.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# size -> (segment length, memory length, batch (streams), steps, peak lr)
RECIPES = {
    'tiny': (64, 64, 16, 400, 2e-3),  # minutes on a laptop CPU
    'small': (512, 512, 64, 100_000, 6e-4),
    'base': (512, 512, 128, 200_000, 3e-4),
}


def get_config(arg='tiny'):
  size = arg or 'tiny'
  if size not in RECIPES:
    raise ValueError(f'pretrain_txl argument {arg!r}: use one of '
                     f'{sorted(RECIPES)}.')
  segment, memory, batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'decoder_{size}')
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.model.memory_length = memory
  c.task.name = 'shakespeare_transformer_xl'
  # One sequence of inputs + targets tokens per row (the 'targets' layout):
  # the segment length.
  c.task.feature_lengths.inputs = segment // 2
  c.task.feature_lengths.targets = segment - segment // 2
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
  c.eval.every_steps = max(100, steps // 4)
  c.eval.num_batches = -1  # every segment of the validation streams, in order
  c.checkpoint.every_steps = max(200, steps // 2)
  c.decoding.method = 'greedy'
  return c
