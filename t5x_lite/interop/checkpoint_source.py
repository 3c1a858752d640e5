"""What an export reads from one of our checkpoints: model fields and params.

    source = checkpoint_source.read(path)

`path` is whatever eval and infer accept: a training step dir, a checkpoints
dir or a workdir (its newest usable step), or a params-only dir (an HF import,
a discriminator export). The model's fields come from the config saved with
the checkpoint (model_loading.stored_config), never from a command line, and
the params are restored as host numpy (params_checkpoints.restore_params).
When the run's objective keeps only part of what it trained (its registry
entry's `checkpoint_params`, e.g. a discriminator without its generator),
that part is what gets exported, and the rest is named in `dropped`.

Nothing here knows the Hugging Face side (interop/hf.py maps the params).
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np

from t5x_lite import checkpoint_inspection
from t5x_lite import checkpoints
from t5x_lite import config as config_lib
from t5x_lite import model_loading
from t5x_lite import network
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite.model_config import ConfigError, ModelConfig


class SourceError(ValueError):
  """The checkpoint is readable but cannot be exported as it is (no saved
  config, a tree that does not fit its config): a usage error."""


@dataclasses.dataclass
class Source:
  """A checkpoint's model, ready for a converter.

  fields: config.model of the checkpoint (plain dict, tuples for lists).
  params: the network's params (host numpy, the stored layer layout).
  where / kind / step: what model_loading.resolve_checkpoint resolved.
  dropped: [(name, param count)] of trained subtrees the objective does not
    keep (not part of the network in `fields`).
  """
  fields: Dict[str, Any]
  params: Dict[str, Any]
  where: str
  kind: str
  step: int
  dropped: List[Tuple[str, int]]


def num_params(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def _config_from(stored: Dict[str, Any], where: str
                 ) -> ml_collections.ConfigDict:
  """configs/default.py with the checkpoint's structural model fields and
  objective copied in (model_loading.apply_checkpoint_model)."""
  if not isinstance(stored.get('model'), dict):
    raise SourceError(
        f'{where} has no saved config with the model fields; export reads them '
        'from the checkpoint: point --checkpoint at a step dir, checkpoints '
        'dir or workdir written by t5x_lite.train, or a params-only dir with '
        'its config.json.')
  config = config_lib.default_config()
  model_loading.apply_checkpoint_model(config, stored)
  dropout = stored['model'].get('dropout_rate')
  if isinstance(dropout, (int, float)):  # not structural, but HF records it
    config.model.dropout_rate = float(dropout)
  return config


def _network_params(config, params) -> Tuple[Any, List[Tuple[str, int]]]:
  """(the params of config.model's network, [(dropped name, count)])."""
  try:
    objective = objectives.resolve(config)
  except ConfigError as e:
    raise SourceError(f'the checkpoint was trained with an objective this '
                      f'process does not know: {e}') from e
  if objective is None or objective.checkpoint_params is None:
    return params, []
  kept = objective.checkpoint_params(params)
  # A subtree of the trained params (the usual case): name its siblings.
  owner = [k for k, v in params.items() if v is kept]
  dropped = [(f'{k}/', num_params(v)) for k, v in sorted(params.items())
             if owner and k != owner[0]]
  if not owner and num_params(kept) != num_params(params):
    dropped = [('(training-only params)', num_params(params) -
                num_params(kept))]
  return kept, dropped


def read(path: str, check_fields: Optional[Callable[[Dict[str, Any]], Any]]
         = None) -> Source:
  """The model fields and network params of the checkpoint at `path`.

  check_fields: called with the fields before any params are read (a
    converter refuses a model it cannot write there, cheaply).
  Raises:
    checkpoints.CheckpointError: nothing usable at `path` (the message names
      the path and the steps that exist).
    SourceError: no saved model config, or params that do not fit it.
  """
  kind, where, step = model_loading.resolve_checkpoint(path)
  config = _config_from(model_loading.stored_config(kind, where), where)
  cfg = ModelConfig.from_config(config.model)
  fields = dataclasses.asdict(cfg)
  if check_fields is not None:
    check_fields(fields)
  params = params_checkpoints.restore_params(where)
  params, dropped = _network_params(config, dict(params))
  mismatch = checkpoint_inspection.describe_mismatch(params,
                                           network.abstract_params(cfg))
  if mismatch:
    raise SourceError(f'The params at {where} do not fit the model its saved '
                      f'config describes: {mismatch}.')
  return Source(fields=fields, params=params, where=where, kind=kind,
                step=step, dropped=dropped)
