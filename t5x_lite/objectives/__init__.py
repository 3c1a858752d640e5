"""Objectives: one module each, registered by name (registry.py).

  span_corruption  prefix_lm  causal_lm  mlm  electra  glm  (pretraining)
  mlm_nsp (nsp.py)  transformer_xl  contrastive  mlm_contrastive
                                                           (pretraining)
  text_to_text  classification                           (fine-tuning)
  token_classification  span_extraction                  (fine-tuning heads)

The core looks objectives up here and never names one:

  objectives.get(name) -> Objective        the registry entry
  objectives.resolve(config) -> Objective  config.objective.name's, or None
                                           (the arch's own model)
  objectives.build_model(config)           the model a run trains
  objectives.flops_per_step(config)        its training FLOPs (MFU)
  objectives.config_group()                configs/default.py's `objective`
  objectives.for_features(keys)            the objective of a seqio task
                                           registered without one

A user's objective is a module that calls `objectives.register(Objective(
...))`, imported before its task is registered (README "Add an objective").
"""
from typing import Any, Dict, Optional, Sequence

import ml_collections

from t5x_lite import models
from t5x_lite.model_config import ModelConfig, options_dict
from t5x_lite.objectives import registry  # pylint: disable=unused-import
# The registry's API, re-exported: objectives.register(objectives.Objective(...)).
from t5x_lite.objectives.registry import Objective  # pylint: disable=unused-import
from t5x_lite.objectives.registry import all_objectives
from t5x_lite.objectives.registry import get
from t5x_lite.objectives.registry import names  # pylint: disable=unused-import
from t5x_lite.objectives.registry import register  # pylint: disable=unused-import

# The built-ins register themselves on import.
# pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from t5x_lite.objectives import causal_lm
from t5x_lite.objectives import classification
from t5x_lite.objectives import contrastive
from t5x_lite.objectives import electra
from t5x_lite.objectives import glm
from t5x_lite.objectives import mlm
from t5x_lite.objectives import nsp
from t5x_lite.objectives import prefix_lm
from t5x_lite.objectives import span_corruption
from t5x_lite.objectives import span_extraction
from t5x_lite.objectives import text_to_text
from t5x_lite.objectives import token_classification
from t5x_lite.objectives import transformer_xl
# pylint: enable=g-import-not-at-top,unused-import,wrong-import-position

# What `tasks.register_text_to_text` tasks learn.
SUPERVISED = text_to_text.OBJECTIVE.name


def config_group() -> ml_collections.ConfigDict:
  """configs/default.py's `objective` group: `name` ('' = the task's) and
  one sub-group of settings per objective that has any."""
  group = {'name': ''}
  for obj in all_objectives():
    if obj.options is not None:
      group[obj.name] = options_dict(obj.options)
  return ml_collections.ConfigDict(group)


def renamed_keys() -> Dict[str, str]:
  """{old config key: new key} over every objective."""
  out = {}
  for obj in all_objectives():
    out.update(obj.renamed_keys)
  return out


def for_features(feature_keys: Sequence[str]) -> Objective:
  """The objective of a seqio task registered without one: supervised
  text-to-text when it has inputs, else causal LM over its targets."""
  return get(SUPERVISED if 'inputs' in feature_keys
             else causal_lm.OBJECTIVE.name)


def resolve(config) -> Optional[Objective]:
  """config.objective.name's Objective; None when it is '' (the arch's own
  model: loop, eval and infer fill the name in from the task first)."""
  name = config.objective.name
  return get(name) if name else None


def build_model(config, **model_kwargs) -> models.BaseModel:
  """The model config.objective.name trains, on config.model, with the loss
  settings of config.train (z_loss, label_smoothing,
  loss_normalizing_factor)."""
  cfg = ModelConfig.from_config(config.model)
  t = config.train
  kwargs: Dict[str, Any] = dict(
      z_loss=t.z_loss, label_smoothing=t.label_smoothing,
      loss_normalizing_factor=t.loss_normalizing_factor)
  kwargs.update(model_kwargs)
  obj = resolve(config)
  if obj is not None and obj.make_model is not None:
    return obj.make_model(cfg, obj.options_from(config.objective), **kwargs)
  return models.arch_model(cfg, **kwargs)


def flops_per_step(config, batch_size: int = 0) -> float:
  """Training FLOPs of one step on `batch_size` rows (train.batch_size by
  default) at the task's feature lengths."""
  return build_model(config).flops_per_step(
      config.task.feature_lengths, batch_size or int(config.train.batch_size))
