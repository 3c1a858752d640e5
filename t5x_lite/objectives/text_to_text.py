"""Supervised text-to-text: inputs -> targets, teacher-forced cross entropy.

What every fine-tuning task of `tasks.register_text_to_text` learns (T5's
format: a prefix names the task, "sentiment: ..." -> "fresh"). On a
decoder-only model the inputs are a bidirectional prefix (seqio's PrefixLM
converter).
"""
from t5x_lite.objectives import registry


def _preprocessors(prep):
  return [prep.append_eos_after_trim]


OBJECTIVE = registry.register(registry.Objective(
    name='text_to_text',
    layout='inputs_targets',
    archs=('encoder_decoder', 'decoder_only'),
    summary='supervised inputs -> targets (fine-tuning, T5 format)',
    preprocessors=_preprocessors,
    recipe='configs/finetune.py:tiny',
))
