"""A checkpoint -> (model, params): what eval, infer and the scripts load.

    model, params, info = model_loading.load_model(config, path)
    path = model_loading.default_checkpoint(workdir)   # workdir/checkpoints

`path` is a training step dir, a checkpoints dir or workdir (the newest
usable step) or a params-only dir (params_checkpoints.save_params_only: HF
imports, ELECTRA discriminator exports). The model's structural fields come
from the config saved with the checkpoint, so a checkpoint loads whatever
--config says about them; the params are restored straight into the mesh's
shardings.
Every failure is a CheckpointError naming the path and the steps that exist.
"""
import json
import os
from typing import Any, Dict, List, Tuple

from absl import logging

from t5x_lite import checkpoint_inspection
from t5x_lite import checkpoints
from t5x_lite import model_config
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite import partitioning
from t5x_lite import trainer



def default_checkpoint(workdir: str) -> str:
  """workdir/checkpoints (restore_params picks its newest usable step)."""
  return checkpoint_inspection.checkpoint_dir(workdir)


def available_steps_hint(path: str, message: str = '') -> str:
  """' Steps that exist in DIR: [...]' for the checkpoints dir around
  `path` (empty when `message` already lists them)."""
  if 'steps in ' in message or 'steps [' in message:
    return ''
  path = os.path.abspath(os.path.expanduser(path))
  candidates = [path, checkpoint_inspection.checkpoint_dir(path),
                os.path.dirname(path)]
  for directory in candidates:
    steps = sorted(checkpoint_inspection.step_dirs(directory))
    if steps:
      return f' Steps that exist in {directory}: {steps}.'
  return (' No checkpoint steps exist there; train first (python -m '
          't5x_lite.train --workdir=...) or pass --checkpoint=<step dir>.')


def resolve_checkpoint(path: str) -> Tuple[str, str, int]:
  """(kind 'state'|'params', directory, step) of what restore_params reads.

  Raises CheckpointError naming `path` and the steps that do exist.
  """
  try:
    kind, where = params_checkpoints.resolve_params_path(path).split(':', 1)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f'{e}{available_steps_hint(path, str(e))}') from e
  step = 0
  if kind == 'state' and os.path.basename(where).isdigit():
    step = int(os.path.basename(where))
  return kind, where, step


def stored_config(kind: str, where: str) -> Dict[str, Any]:
  """The config dict saved with a checkpoint ({} when there is none): a
  params-only dir's config.json; a step's 'config' item, else its workdir's
  config.json (WORKDIR/checkpoints/<step> -> WORKDIR/config.json)."""
  if kind == 'params':
    try:
      return params_checkpoints.read_params_only_config(where)
    except (OSError, ValueError):
      return {}
  for read in (lambda: checkpoint_inspection.read_json_item(where, 'config'),
               lambda: _read_json(os.path.join(
                   os.path.dirname(os.path.dirname(where)), 'config.json'))):
    try:
      saved = read()
    except (OSError, ValueError):
      continue
    if saved:
      return saved
  return {}


def _read_json(path: str) -> Dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def _copy_fields(group, stored: Dict[str, Any], keys, prefix: str
                 ) -> List[str]:
  changes = []
  for key in keys:
    if key not in stored or key not in group:
      continue
    new = stored[key]
    if isinstance(group[key], tuple):
      new = tuple(new)
    if new != group[key]:
      changes.append(f'{prefix}{key}: {group[key]!r} -> {new!r}')
      group[key] = new
  return changes


def apply_checkpoint_model(config, stored: Dict[str, Any]) -> List[str]:
  """Copies what decides the param tree from a checkpoint's saved config
  into `config` (in place): the structural config.model fields
  (model_config.STRUCTURAL_MODEL_KEYS; dtype, attention_impl, remat stay
  the user's) and the objective with its settings (an ELECTRA generator's
  width is part of the tree). Returns 'key: old -> new' changes."""
  if not isinstance(stored, dict):
    return []
  changes = []
  model = stored.get('model')
  if isinstance(model, dict):
    changes += _copy_fields(config.model, model,
                            model_config.STRUCTURAL_MODEL_KEYS, 'model.')
  objective = stored.get('objective')
  if isinstance(objective, dict):
    changes += _copy_fields(config.objective, {'name': objective.get('name')}
                            if objective.get('name') else {}, ('name',),
                            'objective.')
    for group, values in objective.items():
      if isinstance(values, dict) and group in config.objective:
        changes += _copy_fields(config.objective[group], values, values,
                                f'objective.{group}.')
  return changes


def check_task_vocabulary(config, where: str):
  """A checkpoint whose embedding (model.vocab_size, from its saved config)
  is smaller than config.task.name's vocabulary, an HF import with another
  vocabulary say, fails here in one line with both sizes (ConfigError),
  before anything compiles: out-of-range ids would be embedded silently."""
  name = config.task.name
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  if name and name in tasks.registered_names():  # else: reported elsewhere
    tasks.check_vocabulary(name, int(config.model.vocab_size),
                           what=f'checkpoint {where}')


def load_model(config, path: str, mesh=None):
  """(model, params, info) for the checkpoint at `path`.

  The model's structural fields come from the checkpoint's saved config when
  it has one (logged); params are restored straight into the mesh's
  shardings. info: {'checkpoint', 'kind', 'step', 'mesh', 'param_shardings'}.
  Raises CheckpointError (path and existing steps named) when nothing usable
  is there or the params do not fit config.model.
  """
  kind, where, step = resolve_checkpoint(path)
  for change in apply_checkpoint_model(config, stored_config(kind, where)):
    logging.info('config.model from the checkpoint: %s', change)
  check_task_vocabulary(config, where)
  model = objectives.build_model(config)
  mesh = mesh or partitioning.make_mesh(config.mesh)
  abstract, shardings = trainer.abstract_params(
      model, mesh, partitioning.logical_rules(config.mesh.rules),
      dict(config.task.feature_lengths))
  try:
    params = params_checkpoints.restore_params(path, abstract)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f'{e}{available_steps_hint(path, str(e))}') from e
  return model, params, {'checkpoint': where, 'kind': kind, 'step': step,
                         'mesh': mesh, 'param_shardings': shardings}
