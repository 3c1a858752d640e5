r"""GLM autoregressive blank infilling on a decoder-only model, any size.

    python -m t5x_lite.train --config=configs/pretrain_glm.py:tiny \
        --workdir=/tmp/glm_tiny

The argument picks the size: tiny | small | base | large (the
`decoder_<size>` rows of configs/models.py). shakespeare_glm (Du et al. 2022):
Poisson(3) spans covering 15% of the tokens become [MASK] in part A; part B
holds the spans in random order, each as [S] + tokens (targets: tokens +
EOS). Part A attends bidirectionally (decoder_causal_attention), part B
causally. GLM's 2D positions: decoder_positions (part B: its [MASK]'s
position) drive the relative position bias, which is bidirectional for GLM
models so part B tells left from right context; decoder_block_positions
(the index inside the span) index a learned embedding of
model.num_block_positions rows added to part-B tokens (stacks.Decoder).
Sample infillings with scripts/sample_generations.py.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# size -> (row length, batch, steps, peak learning rate)
RECIPES = {
    'tiny': (128, 32, 1500, 2e-3),  # minutes on a laptop CPU
    'small': (512, 128, 100_000, 6e-4),
    'base': (512, 256, 200_000, 3e-4),
    'large': (512, 512, 300_000, 2e-4),
}


def get_config(size='tiny'):
  size = size or 'tiny'
  if size not in RECIPES:
    raise ValueError(f'pretrain_glm size {size!r}: use one of '
                     f'{", ".join(RECIPES)}.')
  length, batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'decoder_{size}')
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.model.num_block_positions = 64  # spans longer than 63 share the last row
  c.task.name = 'shakespeare_glm'
  # The glm converter makes one row of inputs + targets tokens.
  c.task.feature_lengths.inputs = length // 2
  c.task.feature_lengths.targets = length - length // 2
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
