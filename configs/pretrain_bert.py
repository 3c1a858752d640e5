r"""BERT-style masked-LM pretraining of an encoder-only model, any size.

    python -m t5x_lite.train --config=configs/pretrain_bert.py:tiny \
        --workdir=/tmp/bert_tiny

The argument picks the encoder size: tiny | small | base | large (the
`encoder_<size>` rows of configs/models.py). The task is shakespeare_mlm on
the shipped corpus (`make data`): 15% of the tokens selected, 80% [MASK], 10%
random, 10% kept; the loss is the MLM cross entropy on the selected ones
(logits tied to the token embedding). Fine-tune the result for
classification with configs/finetune_classifier.py
(--config.checkpoint.restore_from=/tmp/bert_tiny).

`nsp` (tiny) or `<size>_nsp` trains BERT's full objective instead, MLM +
next-sentence prediction (objectives/nsp.py), on shakespeare_mlm_nsp pairs
`[CLS] A [SEP] B [SEP]` (tasks/sentence_pairs.py) with segment embeddings
(model.type_vocab_size=2):

    python -m t5x_lite.train --config=configs/pretrain_bert.py:nsp \
        --workdir=/tmp/bert_nsp

Its classifier needs the same segment table to restore it: add
--config.model.type_vocab_size=2 to the fine-tuning command.
"""
from t5x_lite.configs import default
from t5x_lite.configs import models

# size -> (sequence length, batch, steps, peak learning rate)
RECIPES = {
    'tiny': (128, 32, 1500, 2e-3),  # minutes on a laptop CPU
    'small': (128, 128, 100_000, 5e-4),
    'base': (512, 256, 1_000_000, 1e-4),  # BERT-base's recipe
    'large': (512, 256, 1_000_000, 1e-4),
}


def get_config(size='tiny'):
  size = size or 'tiny'
  nsp = size == 'nsp' or size.endswith('_nsp')
  if nsp:
    size = size[:-len('_nsp')] if size != 'nsp' else 'tiny'
  if size not in RECIPES:
    raise ValueError(f'pretrain_bert size {size!r}: use one of '
                     f'{", ".join(RECIPES)}, nsp or <size>_nsp.')
  length, batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'encoder_{size}')
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.task.name = 'shakespeare_mlm'
  c.task.feature_lengths.inputs = length
  c.task.feature_lengths.targets = length  # unused by masked_lm
  c.train.batch_size = batch
  c.train.num_steps = steps
  c.train.log_every_steps = 50
  c.optimizer.name = 'adamw'  # BERT/ELECTRA train with Adam
  c.optimizer.learning_rate = lr
  c.optimizer.schedule = 'linear'
  c.optimizer.warmup_steps = min(10_000, steps // 10)
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  c.eval.every_steps = max(100, steps // 10)
  c.eval.num_batches = 8
  c.checkpoint.every_steps = max(500, steps // 10)
  if nsp:
    c.task.name = 'shakespeare_mlm_nsp'  # one pair per row, never packed
    c.task.pack = False
    c.model.type_vocab_size = 2  # segment A / B embeddings
    # The whole validation split (1,784 pairs): its first batches, in corpus
    # order, are a few scenes of one play and gave NSP accuracies 10 points
    # off the split's.
    c.eval.num_batches = -1
  return c
