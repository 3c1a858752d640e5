r"""Fine-tune an encoder-only model as a pooled classifier (sentiment).

    python -m t5x_lite.train --config=configs/finetune_classifier.py:tiny \
        --config.checkpoint.restore_from=/tmp/bert_tiny --workdir=/tmp/cls

The argument picks the encoder size (tiny | small | base | large; it must
match the pretrained checkpoint). objective.name='classification'
(t5x_lite/objectives/classification.py) selects
EncoderOnlyModel(head='pooled'): a tanh pooler over the first token ([CLS])
and model.num_classes logits, cross entropy on the `label` feature of
sentiment_classification (rotten 0 / fresh 1). eval/accuracy is the held-out
classification accuracy. restore_from takes a BERT workdir directly; for
ELECTRA export the discriminator first:
  python -c "from t5x_lite.objectives import electra; electra.export_discriminator(
      '/tmp/electra_tiny', '/tmp/electra_tiny_disc')"
and restore from /tmp/electra_tiny_disc. Without restore_from it trains from
scratch (the baseline).
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# size -> (batch, steps, peak learning rate)
RECIPES = {
    'tiny': (32, 600, 1e-3),
    'small': (32, 3000, 1e-4),
    'base': (32, 3000, 5e-5),
    'large': (32, 3000, 2e-5),
}


def encoder_config(size, recipes, file_name):
  """What the encoder fine-tuning configs share (this file's, finetune_tagger's
  and finetune_span's): the `encoder_<size>` model of the corpus vocabulary
  with dropout 0.1, one example per row, AdamW with linear decay after 10%
  warmup, eval on the whole validation split, one checkpoint at the end.
  `recipes`: size -> (batch, steps, peak learning rate)."""
  size = size or 'tiny'
  if size not in recipes:
    raise ValueError(f'{file_name} size {size!r}: use one of '
                     f'{", ".join(recipes)}.')
  batch, steps, lr = recipes[size]
  c = default.get_config()
  models.apply_size(c, f'encoder_{size}')
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.model.dropout_rate = 0.1
  c.task.feature_lengths.targets = 4  # unused by the encoder's heads
  c.task.pack = False  # one example per row (a head reads its own row)
  c.train.batch_size = batch
  c.train.num_steps = steps
  c.train.log_every_steps = 50
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = 'linear'
  c.optimizer.warmup_steps = steps // 10
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.eval.num_batches = -1  # the whole validation split
  c.checkpoint.every_steps = steps
  c.checkpoint.keep = 1
  return c


def get_config(size='tiny'):
  c = encoder_config(size, RECIPES, 'finetune_classifier')
  c.objective.name = 'classification'
  c.model.num_classes = 2
  c.task.name = 'sentiment_classification'
  c.task.feature_lengths.inputs = 64  # [CLS] + snippet + EOS
  c.eval.every_steps = max(100, c.train.num_steps // 4)
  return c
