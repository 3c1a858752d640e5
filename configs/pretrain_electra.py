r"""ELECTRA pretraining (replaced-token detection), any size.

    python -m t5x_lite.train --config=configs/pretrain_electra.py:tiny \
        --workdir=/tmp/electra_tiny

The argument picks the discriminator size: tiny | small | base | large (the
`encoder_<size>` rows of configs/models.py; `small` is ELECTRA-Small's dims).
objective.name='electra' selects t5x_lite/objectives/electra.py: a generator
objective.electra.generator_size_fraction (1/4) the discriminator's width
sharing its token embedding, trained by MLM on shakespeare_electra's 15%
selected positions; its Gumbel-max samples replace them, and the
discriminator learns to flag replaced tokens.
loss = MLM + objective.electra.disc_weight (50) x RTD.
Logged besides loss: disc_accuracy, disc_baseline_accuracy (all "original"),
replaced_rate, masked_replaced_rate, mlm_loss, disc_loss, accuracy (the
generator's MLM accuracy). Fine-tune the discriminator with
configs/finetune_classifier.py after `objectives.electra.export_discriminator`.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# size -> (sequence length, batch, steps, peak learning rate)
RECIPES = {
    # CPU-sized: ~50 min on 2 cores. 32-token rows (128 of them: the same
    # 4096 tokens a step as 32 x 128) get the discriminator past its
    # position-learning plateau by step ~1000; 128-token rows had not by
    # step 1500 (README, "Pretraining objectives, measured").
    'tiny': (32, 128, 5000, 2e-3),
    'small': (128, 128, 1_000_000, 5e-4),  # ELECTRA-Small
    'base': (512, 256, 766_000, 2e-4),  # ELECTRA-Base
    'large': (512, 2048, 400_000, 2e-4),
}


def get_config(size='tiny'):
  size = size or 'tiny'
  if size not in RECIPES:
    raise ValueError(f'pretrain_electra size {size!r}: use one of '
                     f'{", ".join(RECIPES)}.')
  length, batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'encoder_{size}')
  c.objective.name = 'electra'
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.objective.electra.generator_size_fraction = 0.25
  c.objective.electra.disc_weight = 50.0
  c.task.name = 'shakespeare_electra'
  c.task.feature_lengths.inputs = length
  c.task.feature_lengths.targets = length  # unused by masked_lm
  c.train.batch_size = batch
  c.train.num_steps = steps
  c.train.log_every_steps = 50
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = 'linear'
  c.optimizer.warmup_steps = min(10_000, steps // 10)
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.eval.every_steps = max(100, steps // 10)
  c.eval.num_batches = 8
  c.checkpoint.every_steps = max(500, steps // 10)
  return c
