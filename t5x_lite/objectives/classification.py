"""Pooled classification (BERT's fine-tuning head): one label per example.

A tanh pooler over the first token ([CLS]) and a dense layer to
model.num_classes logits; cross entropy against the task's int `label`.
Never packed (one example per row). The task's own steps map a text label
to its id (tasks/builtin.py's sentiment_classification).
"""
from t5x_lite import models
from t5x_lite.objectives import registry


def _preprocessors(prep):
  return [prep.prepend_cls_and_append_eos]


def _make_model(cfg, options, **kwargs):
  del options
  return models.arch_model(cfg, head='pooled', **kwargs)


OBJECTIVE = registry.register(registry.Objective(
    name='classification',
    layout='pooled_label',
    archs=('encoder_only',),
    summary='pooled [CLS] classifier (fine-tuning an encoder)',
    preprocessors=_preprocessors,
    make_model=_make_model,
    recipe='configs/finetune_classifier.py:tiny',
))
