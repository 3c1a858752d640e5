r"""Fine-tune an encoder-only model as a token tagger (speaker names).

    python -m t5x_lite.train --config=configs/finetune_tagger.py:tiny \
        --config.checkpoint.restore_from=/tmp/bert_tiny --workdir=/tmp/tags

The argument picks the encoder size (tiny | small | base | large; it must
match the pretrained checkpoint, e.g. configs/pretrain_bert.py's).
objective.name='token_classification' (t5x_lite/objectives/
token_classification.py): a dense layer over every encoder output to
model.num_token_labels = 3 BIO logits, per-token cross entropy. The task is
shakespeare_speaker_tags (t5x_lite/tasks/speakers.py: passages of four
speeches, B/I on the speaker names). eval/token_f1 and eval/entity_f1 are on
the held-out plays. With restore_from, the encoder (and the MLM head) come
from the checkpoint and token_classifier/ starts fresh (the objective's
fresh_params, named in the log); without it everything trains from scratch.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# size -> (batch, steps, peak learning rate)
RECIPES = {
    'tiny': (32, 300, 1e-3),
    'small': (32, 3000, 1e-4),
    'base': (32, 3000, 5e-5),
    'large': (32, 3000, 2e-5),
}


def get_config(size='tiny'):
  size = size or 'tiny'
  if size not in RECIPES:
    raise ValueError(f'finetune_tagger size {size!r}: use one of '
                     f'{", ".join(RECIPES)}.')
  batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'encoder_{size}')
  c.objective.name = 'token_classification'
  c.model.num_token_labels = 3  # O, B, I
  c.model.vocab_size = 4224
  c.model.dropout_rate = 0.1
  c.task.name = 'shakespeare_speaker_tags'
  c.task.feature_lengths.inputs = 128  # four speeches of <= 16 words + EOS
  c.task.feature_lengths.targets = 4  # unused by tagging
  c.task.pack = False  # one passage per row
  c.train.batch_size = batch
  c.train.num_steps = steps
  c.train.log_every_steps = 50
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = 'linear'
  c.optimizer.warmup_steps = steps // 10
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.eval.every_steps = max(100, steps // 3)
  c.eval.num_batches = -1  # the whole validation split
  c.checkpoint.every_steps = steps
  c.checkpoint.keep = 1
  return c
