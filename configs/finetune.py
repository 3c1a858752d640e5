r"""Fine-tune a pretrained T5 on a text-to-text task (default: sentiment).

    # 1. pretrain the tiny model on the shipped corpus (what `make run` does)
    python -m t5x_lite.train --config=configs/local_tiny.py \
        --workdir=runs/local_tiny
    # 2. fine-tune from its params (fresh optimizer state, dropout 0.1,
    #    constant learning rate)
    python -m t5x_lite.train --config=configs/finetune.py:tiny \
        --config.checkpoint.restore_from=runs/local_tiny/checkpoints \
        --workdir=runs/ft_sentiment
    # 3. held-out accuracy (seqio metrics of the decoded labels)
    python -m t5x_lite.eval --config=configs/finetune.py:tiny \
        --workdir=runs/ft_sentiment --config.task.eval_split=test

restore_from takes a training step dir, a checkpoints dir (its newest step)
or a params-only dir from `python -m t5x_lite.interop.hf import`. Leave it
empty to train from scratch (the baseline). scripts/pretrain_then_finetune.sh
runs the whole comparison.

Sizes (the argument; it must match the checkpoint's dims):
  tiny   the model of configs/local_tiny.py (4224-entry corpus vocabulary),
         on `sentiment` ("sentiment: <review>" -> fresh | rotten).
  small, base, large, xl, xxl   T5.1.1 (vocab 32128), for HF-imported T5
         checkpoints, on glue_sst2_v2 (TFDS, T5's SentencePiece vocabulary).
"""
from t5x_lite.configs import default
from t5x_lite.configs import local_tiny
from t5x_lite.configs import models

# size -> (batch, steps, constant learning rate). T5 fine-tunes with
# Adafactor at a constant 1e-3; the tiny model, trained for minutes on CPU,
# takes a larger step.
RECIPES = {
    'tiny': (32, 400, 3e-3),
    'small': (128, 20000, 1e-3),
    'base': (128, 20000, 1e-3),
    'large': (128, 20000, 1e-3),
    'xl': (128, 20000, 1e-3),
    'xxl': (128, 20000, 1e-3),
}


def get_config(size='tiny'):
  size = size or 'tiny'
  if size not in RECIPES:
    raise ValueError(f'finetune size {size!r}: use one of '
                     f'{", ".join(RECIPES)}.')
  batch, steps, lr = RECIPES[size]
  c = default.get_config()
  if size == 'tiny':
    c.model = local_tiny.get_config().model
    c.task.name = 'sentiment'
    c.task.feature_lengths.inputs = 64  # "sentiment: " + a review + EOS
    c.task.feature_lengths.targets = 4  # fresh | rotten + EOS
  else:
    models.apply_size(c, size)
    c.model.vocab_size = 32128
    c.model.dtype = 'bfloat16'
    c.task.name = 'glue_sst2_v2'
    c.task.feature_lengths.inputs = 128
    c.task.feature_lengths.targets = 4
  c.model.dropout_rate = 0.1  # T5's fine-tuning dropout

  c.train.batch_size = batch
  c.train.num_steps = steps
  c.train.log_every_steps = 50
  # Fresh Adafactor state (params only come from restore_from), constant LR.
  c.optimizer.name = 'adafactor'
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0

  c.eval.every_steps = 200
  c.eval.num_batches = 8
  c.eval.batch_size = 64
  c.eval.num_decode_examples = 4
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 2
  c.decoding.method = 'greedy'
  c.decoding.max_decode_length = 4  # the labels are one or two pieces + EOS
  return c
