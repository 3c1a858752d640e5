r"""Fine-tune an encoder-only model for extractive spans (who said a quote).

    python -m t5x_lite.train --config=configs/finetune_span.py:tiny \
        --config.checkpoint.restore_from=/tmp/bert_tiny --workdir=/tmp/span

The argument picks the encoder size (tiny | small | base | large; it must
match the pretrained checkpoint). objective.name='span_extraction'
(t5x_lite/objectives/span_extraction.py): start and end logits per token,
cross entropy of each over the passage positions, prediction the best
start <= end within objective.span_extraction.max_answer_tokens. The task is
shakespeare_speaker_span (t5x_lite/tasks/speakers.py): [CLS] quote EOS
passage EOS, the answer the speaker name of the speech the quote is from.
eval/exact_match and eval/span_f1 are on the held-out plays. With
restore_from, span_head/ starts fresh and the rest is restored; without it
everything trains from scratch.
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
    raise ValueError(f'finetune_span size {size!r}: use one of '
                     f'{", ".join(RECIPES)}.')
  batch, steps, lr = RECIPES[size]
  c = default.get_config()
  models.apply_size(c, f'encoder_{size}')
  c.objective.name = 'span_extraction'
  c.objective.span_extraction.max_answer_tokens = 8  # names are <= 4 words
  c.model.vocab_size = 4224
  c.model.dropout_rate = 0.1
  c.task.name = 'shakespeare_speaker_span'
  c.task.feature_lengths.inputs = 160  # [CLS] quote EOS passage EOS
  c.task.feature_lengths.targets = 4  # unused by span extraction
  c.task.pack = False  # one question + passage per row
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
