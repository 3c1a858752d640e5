"""Evaluation: a checkpoint -> task metrics, teacher-forced loss, samples.

    results = evaluation.evaluate(config, workdir)             # eval.py
    model, params, info = evaluation.load_model(config, path)  # also infer.py

`evaluate` restores the params (the newest usable step of
workdir/checkpoints, or an explicit checkpoint: a step dir, a checkpoints dir
or an HF-imported params-only dir), then on config.task.eval_split:

  1. the teacher-forced loss/accuracy over eval.num_batches batches (the same
     numbers the training loop logs as eval/*);
  2. `seqio.Evaluator` over config.task.name (a task or every task of a
     mixture) with the tasks' own metric fns (accuracy, BLEU, ROUGE, ...),
     fed by a predict_fn (decoding.predict_batch with config.decoding) and a
     score_fn (model.score_batch). Tasks without metric fns (pretraining
     objectives such as span corruption) just have no metrics;
  3. a few decoded samples (input / target / prediction), printed and logged.

Results go to workdir/eval_results.json and TensorBoard (run "eval": event
files and a metrics.jsonl under workdir/eval/). seqio (hence TensorFlow) lives in
t5x_lite/tasks/evaluator.py, imported when an evaluation runs.
"""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import checkpoints
from t5x_lite import decoding
from t5x_lite import metrics as metrics_lib
from t5x_lite import models
from t5x_lite import partitioning
from t5x_lite import trainer

RESULTS_FILE = 'eval_results.json'
TENSORBOARD_SUBDIR = 'eval'
# config.model fields that decide the param tree: taken from the checkpoint's
# own saved config when it has one, so a checkpoint loads whatever
# --config says about them (dtype, attention_impl, remat stay the user's).
STRUCTURAL_MODEL_KEYS = (
    'arch', 'vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
    'num_encoder_layers', 'num_decoder_layers', 'mlp_activations',
    'logits_via_embedding', 'relative_attention_num_buckets',
    'relative_attention_max_distance', 'layer_norm_epsilon', 'scan_layers',
    'num_classes', 'generator_size_fraction', 'generator_layers_fraction',
    'num_block_positions', 'objective')


# ---- checkpoints -------------------------------------------------------------------


def _available_steps_hint(path: str, message: str = '') -> str:
  """' Steps that exist in DIR: [...]' for the checkpoints dir around
  `path` (empty when `message` already lists them)."""
  if 'steps in ' in message or 'steps [' in message:
    return ''
  path = os.path.abspath(os.path.expanduser(path))
  candidates = [path, checkpoints.checkpoint_dir(path), os.path.dirname(path)]
  for directory in candidates:
    steps = sorted(checkpoints.step_dirs(directory))
    if steps:
      return f' Steps that exist in {directory}: {steps}.'
  return (' No checkpoint steps exist there; train first (python -m '
          't5x_lite.train --workdir=...) or pass --checkpoint=<step dir>.')


def resolve_checkpoint(path: str) -> Tuple[str, str, int]:
  """(kind 'state'|'params', directory, step) of what restore_params reads.

  Raises CheckpointError naming `path` and the steps that do exist.
  """
  try:
    kind, where = checkpoints.resolve_params_path(path).split(':', 1)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f'{e}{_available_steps_hint(path, str(e))}') from e
  step = 0
  if kind == 'state' and os.path.basename(where).isdigit():
    step = int(os.path.basename(where))
  return kind, where, step


def _stored_config(kind: str, where: str) -> Dict[str, Any]:
  """The config dict saved with a checkpoint ({} when there is none)."""
  try:
    if kind == 'state':
      return checkpoints.read_json_item(where, 'config') or {}
    with open(os.path.join(where, 'config.json')) as f:  # interop/hf.py layout
      return json.load(f)
  except (OSError, ValueError):
    return {}


def apply_checkpoint_model(config, stored: Dict[str, Any]) -> List[str]:
  """Copies the structural config.model fields of a checkpoint's saved
  config into `config` (in place); returns 'key: old -> new' changes."""
  model = stored.get('model') if isinstance(stored, dict) else None
  if not isinstance(model, dict):
    return []
  changes = []
  for key in STRUCTURAL_MODEL_KEYS:
    if key not in model or key not in config.model:
      continue
    new = model[key]
    if isinstance(config.model[key], tuple):
      new = tuple(new)
    if new != config.model[key]:
      changes.append(f'{key}: {config.model[key]!r} -> {new!r}')
      config.model[key] = new
  return changes


def _abstract_params(model, config, mesh):
  """Param ShapeDtypeStructs carrying the NamedShardings of `mesh`."""
  rules = partitioning.logical_rules(config)
  boxed = model.abstract_params(
      model.input_shapes(config.task.feature_lengths, 1))
  abstract = partitioning.unbox(boxed)
  shardings = partitioning.specs_to_shardings(
      partitioning.params_specs(boxed, mesh, rules), mesh, abstract)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, shardings), shardings


def load_model(config, path: str, mesh=None):
  """(model, params, info) for the checkpoint at `path`.

  The model's structural fields come from the checkpoint's saved config when
  it has one (logged); params are restored straight into the mesh's
  shardings. info: {'checkpoint', 'kind', 'step', 'mesh', 'param_shardings'}.
  Raises CheckpointError (path and existing steps named) when nothing usable
  is there or the params do not fit config.model.
  """
  kind, where, step = resolve_checkpoint(path)
  for change in apply_checkpoint_model(config, _stored_config(kind, where)):
    logging.info('config.model from the checkpoint: %s', change)
  model = models.from_config(config)
  mesh = mesh or partitioning.make_mesh(config.mesh)
  abstract, shardings = _abstract_params(model, config, mesh)
  try:
    params = checkpoints.restore_params(path, abstract)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(
        f'{e}{_available_steps_hint(path, str(e))}') from e
  return model, params, {'checkpoint': where, 'kind': kind, 'step': step,
                         'mesh': mesh, 'param_shardings': shardings}


def default_checkpoint(workdir: str) -> str:
  """workdir/checkpoints (restore_params picks its newest usable step)."""
  return checkpoints.checkpoint_dir(workdir)


# ---- batches -------------------------------------------------------------------------


def pad_rows(batch: Dict[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
  """Pads every [n, ...] feature with zero rows to [rows, ...] (one compile
  for the last, short batch)."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] < rows:
      pad = [(0, rows - v.shape[0])] + [(0, 0)] * (v.ndim - 1)
      v = np.pad(v, pad)
    out[k] = v
  return out


def trim_decode(tokens, eos_id: int) -> List[int]:
  """Token ids up to (not including) the first EOS, padding dropped."""
  out = []
  for t in np.asarray(tokens).tolist():
    if t == eos_id:
      break
    if t != 0:
      out.append(int(t))
  return out


def round_up(size: int, multiple: int) -> int:
  """`size` rounded up to a multiple (batch shards; padded rows are dropped)."""
  return -(-int(size) // multiple) * multiple


def eval_batch_size(config, num_shards: int = 1) -> int:
  size = int(config.eval.batch_size) or int(config.train.batch_size)
  return round_up(size, num_shards)


class Predictor:
  """Jitted decode / score over a model and its (sharded) params."""

  def __init__(self, model, params, config, mesh=None, param_shardings=None):
    self.model = model
    self.params = params
    self.config = config
    self.settings = decoding.DecodeSettings.from_config(config.decoding)
    self.mesh = mesh
    self.param_shardings = param_shardings
    self.sharded = mesh is not None and param_shardings is not None
    if self.sharded:
      rules = partitioning.logical_rules(config)
      self.batch_sharding = partitioning.batch_sharding(mesh, rules)
      self.num_shards = partitioning.num_batch_shards(mesh, rules)
      self._score = trainer.make_score_step(model, config, mesh,
                                            param_shardings,
                                            self.batch_sharding)
    else:
      self.batch_sharding, self.num_shards = None, 1
      self._score = jax.jit(model.score_batch)

  def put(self, batch):
    """Host numpy batch -> what the jitted steps take."""
    if self.sharded:
      return partitioning.shard_batch(batch, self.batch_sharding)
    return batch

  def predict(self, batch, rng=None, prefix_lm=None
              ) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens [batch, len], scores [batch]) as host numpy."""
    tokens, scores = decoding.predict_batch(self.model, self.params, batch,
                                            self.settings, rng,
                                            prefix_lm=prefix_lm)
    return np.asarray(tokens), np.asarray(scores)

  def score(self, batch) -> np.ndarray:
    """[batch] log-likelihood of the batch's targets (model.score_batch)."""
    return np.asarray(self._score(self.params, self.put(batch)))


# ---- teacher-forced loss ----------------------------------------------------------


def teacher_forced_metrics(predictor: Predictor, config) -> Dict[str, float]:
  """eval/{loss,accuracy,z_loss,num_tokens} over eval.num_batches batches of
  task.eval_split (-1: the whole split), as the training loop computes them,
  plus the objective's own metrics (ELECTRA: disc_accuracy,
  disc_baseline_accuracy, replaced_rate, ...)."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  num_batches = int(config.eval.num_batches)
  if num_batches == 0:
    return {}
  size = eval_batch_size(config, predictor.num_shards)
  ds = tasks.get_dataset(config, config.task.eval_split, batch_size=size,
                         shuffle=False, seed=int(config.train.seed),
                         num_epochs=1 if num_batches < 0 else None)
  if predictor.sharded:
    step_fn = trainer.make_eval_step(predictor.model, config, predictor.mesh,
                                     predictor.param_shardings,
                                     predictor.batch_sharding)
  else:
    step_fn = jax.jit(predictor.model.eval_fn)
  total, n = None, 0
  for batch in ds:
    sums = step_fn(predictor.params, predictor.put(batch))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    n += 1
    if 0 < num_batches <= n:
      break
  if total is None:
    logging.warning('No full batch of %d in split %r: no teacher-forced loss.',
                    size, config.task.eval_split)
    return {}
  m = models.finalize_metrics(total)
  return dict({k: float(v) for k, v in m.items()}, batches=n)


# ---- decoded samples -----------------------------------------------------------------


def _prompt_and_target(model, batch, i):
  """(input ids, target ids) of row i of a feature-converted batch."""
  if model.ARCH == 'encoder_decoder':
    return batch['encoder_input_tokens'][i], batch['decoder_target_tokens'][i]
  targets = batch['decoder_target_tokens'][i]
  causal = batch.get('decoder_causal_attention')
  if causal is None:
    return np.zeros((0,), np.int32), targets
  prompt = causal[i][1:] > 0  # input position j + 1 holds target j
  prompt = np.concatenate([prompt, [False]])
  return targets[prompt], targets[~prompt]


def decode_samples(predictor: Predictor, config, num: int
                   ) -> List[Dict[str, str]]:
  """`num` examples of task.eval_split: input / target / prediction text."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  if num <= 0 or predictor.model.ARCH == 'encoder_only':
    return []
  vocab = tasks.get_vocabulary(config.task.name)
  ds = tasks.get_tf_dataset(config, config.task.eval_split, batch_size=num,
                            shuffle=False, num_epochs=1, pack=False)
  batch = next(ds.as_numpy_iterator(), None)
  if batch is None:
    logging.warning('Split %r has fewer than %d examples: no samples.',
                    config.task.eval_split, num)
    return []
  tokens, scores = predictor.predict(pad_rows(batch, num))
  eos = predictor.settings.eos_id
  out = []
  for i in range(num):
    prompt, target = _prompt_and_target(predictor.model, batch, i)
    out.append({
        'input': vocab.decode(trim_decode(prompt, eos)),
        'target': vocab.decode(trim_decode(target, eos)),
        'prediction': vocab.decode(trim_decode(tokens[i], eos)),
        'score': float(scores[i]),
    })
  return out


def format_samples(samples: List[Dict[str, str]]) -> str:
  lines = []
  for i, s in enumerate(samples):
    lines += [f'[{i}] input:      {s["input"]}',
              f'    target:     {s["target"]}',
              f'    prediction: {s["prediction"]}']
  return '\n'.join(lines)


# ---- seqio.Evaluator ---------------------------------------------------------------


def task_metrics(predictor: Predictor, config, step: int
                 ) -> Dict[str, Dict[str, Any]]:
  """{task: {metric: value}} from seqio.Evaluator with the tasks' metric fns
  (t5x_lite/tasks/evaluator.py). Empty for pretraining tasks and for
  encoder-only models (they do not decode)."""
  from t5x_lite.tasks import evaluator  # pylint: disable=g-import-not-at-top
  if predictor.model.ARCH == 'encoder_only':
    return {}
  return evaluator.evaluate(
      config, step, eval_batch_size(config, predictor.num_shards),
      predict=lambda feats: predictor.predict(feats)[0],
      score=predictor.score)


# ---- the whole evaluation ----------------------------------------------------------


def _write_tensorboard(workdir: str, step: int, results: Dict[str, Any]):
  """Scalars and the samples to workdir/eval (a TensorBoard run)."""
  # clu's SummaryWriter when tensorboard is installed, else metrics.py's own
  # event writer; workdir/eval/ also gets a metrics.jsonl of these scalars.
  writer = metrics_lib.create_writer(os.path.join(workdir, TENSORBOARD_SUBDIR))
  scalars = {f'eval/{k}': v for k, v in results['teacher_forced'].items()}
  for task, metrics in results['metrics'].items():
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        scalars[f'{task}/{k}'] = v
  if scalars:
    writer.write_scalars(step, scalars)
  if results['samples']:
    writer.write_texts(step, {'samples': '\n\n'.join(
        f'**input:** {s["input"]}  \n**target:** {s["target"]}  \n'
        f'**prediction:** {s["prediction"]}' for s in results['samples'])})
  writer.flush()
  writer.close()


def evaluate(config, workdir: str, checkpoint: Optional[str] = None, *,
             write: bool = True, print_fn=print) -> Dict[str, Any]:
  """Evaluates a checkpoint on config.task.eval_split; see the module doc.

  Args:
    config: the run's ConfigDict (task, decoding, eval groups).
    workdir: results go here; its checkpoints dir is the default checkpoint.
    checkpoint: a step dir, checkpoints dir or params-only dir instead.
    write: write eval_results.json and TensorBoard events.
    print_fn: where the summary and the samples go (None: nowhere).
  Returns:
    {'step', 'checkpoint', 'task', 'split', 'teacher_forced': {...},
     'metrics': {task: {...}}, 'samples': [{input, target, prediction}]}.
  """
  workdir = os.path.abspath(workdir)
  path = checkpoint or default_checkpoint(workdir)
  model, params, info = load_model(config, path)
  predictor = Predictor(model, params, config, info['mesh'],
                        info['param_shardings'])
  step = info['step']
  logging.info('Evaluating %s (step %d) on %s/%s.', info['checkpoint'], step,
               config.task.name, config.task.eval_split)
  results = {
      'step': step,
      'checkpoint': info['checkpoint'],
      'task': config.task.name,
      'split': config.task.eval_split,
      'decoding': dict(config.decoding),
      'teacher_forced': teacher_forced_metrics(predictor, config),
      'metrics': task_metrics(predictor, config, step),
      'samples': decode_samples(predictor, config,
                                int(config.eval.num_decode_examples)),
  }
  if write and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
      json.dump(results, f, indent=1)
    _write_tensorboard(workdir, step, results)
  if print_fn is not None:
    print_fn(summary(results))
  return results


def summary(results: Dict[str, Any]) -> str:
  """A few readable lines: loss, each task's metrics, the samples."""
  lines = [f'eval of {results["checkpoint"]} (step {results["step"]}) on '
           f'{results["task"]}/{results["split"]}']
  tf = results['teacher_forced']
  if tf:
    lines.append(f'  teacher-forced loss {tf["loss"]:.4f}  token accuracy '
                 f'{tf["accuracy"]:.4f}  ({tf["batches"]} batches)')
    extra = sorted(set(tf) - {'loss', 'accuracy', 'z_loss', 'num_tokens',
                              'batches'})
    if extra:  # the objective's own metrics
      lines.append('  ' + '  '.join(f'{k} {tf[k]:.4f}' for k in extra))
  for task, metrics in results['metrics'].items():
    shown = ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                      for k, v in metrics.items())
    lines.append(f'  {task}: {shown}')
  if not results['metrics']:
    lines.append('  (no task metrics: the task defines no metric fns)')
  if results['samples']:
    lines.append(format_samples(results['samples']))
  return '\n'.join(lines)
