r"""SimCSE-style contrastive sentence embeddings for an encoder-only model.

    python -m t5x_lite.train --config=configs/pretrain_simcse.py:tiny \
        --workdir=/tmp/simcse_tiny
    python -m t5x_lite.train --config=configs/pretrain_simcse.py:mlm \
        --workdir=/tmp/simcse_mlm_tiny
    python scripts/retrieval_eval.py --checkpoint=/tmp/simcse_tiny

The argument picks the objective (t5x_lite/objectives/contrastive.py) on the
tiny encoder (`encoder_tiny` of configs/models.py):
  tiny  objective 'contrastive' on shakespeare_sentences: each corpus
        paragraph (one speech) on its own row, cut to 64 tokens, never
        packed; the row is encoded twice with different dropout masks
        (model.dropout_rate 0.1) and InfoNCE over the batch's other rows
        (cosine / objective.contrastive.temperature, 0.05) trains it.
  mlm   objective 'mlm_contrastive' on shakespeare_mlm_contrastive:
        pretrain_bert.py:tiny's MLM rows (unpacked) plus
        objective.mlm_contrastive.contrastive_weight (1) x the same InfoNCE
        on two dropout views of the unmasked rows.
Both take pretrain_bert.py:tiny's 4096 token slots a step (64 x 64 and
32 x 128) and its optimizer. Logged besides loss: contrastive_loss,
inbatch_accuracy (a row's other view is its nearest in the batch) and
view_cosine (< 1: the views differ); `mlm` adds mlm_loss.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# arg -> (objective, task, sequence length, batch)
RECIPES = {
    'tiny': ('contrastive', 'shakespeare_sentences', 64, 64),
    'mlm': ('mlm_contrastive', 'shakespeare_mlm_contrastive', 128, 32),
}
STEPS, LEARNING_RATE = 1500, 2e-3  # pretrain_bert.py:tiny's


def get_config(arg='tiny'):
  arg = arg or 'tiny'
  if arg not in RECIPES:
    raise ValueError(f'pretrain_simcse arg {arg!r}: use one of '
                     f'{", ".join(RECIPES)}.')
  objective, task, length, batch = RECIPES[arg]
  c = default.get_config()
  models.apply_size(c, 'encoder_tiny')
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.model.dropout_rate = 0.1  # the noise that makes the two views (SimCSE)
  c.objective.name = objective
  c.task.name = task
  c.task.pack = False  # one text per row: its embedding pools the whole row
  c.task.feature_lengths.inputs = length
  c.task.feature_lengths.targets = length  # unused: one sequence per row
  c.train.batch_size = batch
  c.train.num_steps = STEPS
  c.train.log_every_steps = 50
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = LEARNING_RATE
  c.optimizer.schedule = 'linear'
  c.optimizer.warmup_steps = STEPS // 10
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.eval.every_steps = STEPS // 10
  c.eval.num_batches = 8
  c.checkpoint.every_steps = 500
  return c
